//! llama.cpp tensor names → Hugging Face Llama checkpoint keys, and the undoing of the row
//! permutation llama.cpp's `convert_hf_to_gguf.py` applies to `attn_q`/`attn_k`.

/// How a tensor's rows must be rearranged on the way back to the Hugging Face layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Stored as in transformers.
    AsIs,
    /// `attn_q`: permuted with the query head count.
    QueryHeads,
    /// `attn_k`: permuted with the key/value head count.
    KvHeads,
}

/// `blk.N.SUFFIX` → `(N, SUFFIX)`: a decoder block's tensor in llama.cpp's naming, whatever the
/// architecture; `None` for any other name.
pub(crate) fn block(name: &str) -> Option<(usize, &str)> {
    let (layer, suffix) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((layer.parse().ok()?, suffix))
}

/// The Hugging Face key for llama.cpp tensor `name` (gguf-py `tensor_mapping.py`, MODEL_ARCH.LLAMA),
/// or `None` for a name we do not know.
pub fn hf_name(name: &str) -> Option<(String, Rows)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(key) = fixed {
        return Some((key.to_string(), Rows::AsIs));
    }
    let (layer, suffix) = block(name)?;
    let (module, rows) = match suffix {
        "attn_norm.weight" => ("input_layernorm.weight", Rows::AsIs),
        "attn_q.weight" => ("self_attn.q_proj.weight", Rows::QueryHeads),
        "attn_k.weight" => ("self_attn.k_proj.weight", Rows::KvHeads),
        "attn_v.weight" => ("self_attn.v_proj.weight", Rows::AsIs),
        "attn_output.weight" => ("self_attn.o_proj.weight", Rows::AsIs),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", Rows::AsIs),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", Rows::AsIs),
        "ffn_up.weight" => ("mlp.up_proj.weight", Rows::AsIs),
        "ffn_down.weight" => ("mlp.down_proj.weight", Rows::AsIs),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{module}"), rows))
}

/// Undoes llama.cpp's `permute(weights, n_head, n_head_kv)` (convert_hf_to_gguf.py), which turned
/// each head's rows from the "rotate half" order into interleaved pairs. The inverse, as
/// transformers' `_reverse_permute_weights`:
/// `w.reshape(heads, rows / heads / 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
///
/// w: [rows, cols] row-major -> [rows, cols]. `None` when `rows` is not a multiple of `2 * heads`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || rows % (2 * heads) != 0 || w.len() != rows.checked_mul(cols)? {
        return None;
    }
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output index (h, j, i) reads input index (h, i, j) of the [heads, half, 2] row grid.
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * half + i) * 2 + j;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("token_embd.weight", "model.embed_tokens.weight", Rows::AsIs)]
    #[case("output_norm.weight", "model.norm.weight", Rows::AsIs)]
    #[case("output.weight", "lm_head.weight", Rows::AsIs)]
    #[case(
        "blk.0.attn_norm.weight",
        "model.layers.0.input_layernorm.weight",
        Rows::AsIs
    )]
    #[case(
        "blk.12.attn_q.weight",
        "model.layers.12.self_attn.q_proj.weight",
        Rows::QueryHeads
    )]
    #[case(
        "blk.3.attn_k.weight",
        "model.layers.3.self_attn.k_proj.weight",
        Rows::KvHeads
    )]
    #[case(
        "blk.3.attn_v.weight",
        "model.layers.3.self_attn.v_proj.weight",
        Rows::AsIs
    )]
    #[case(
        "blk.3.attn_output.weight",
        "model.layers.3.self_attn.o_proj.weight",
        Rows::AsIs
    )]
    #[case(
        "blk.1.ffn_norm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        Rows::AsIs
    )]
    #[case(
        "blk.1.ffn_gate.weight",
        "model.layers.1.mlp.gate_proj.weight",
        Rows::AsIs
    )]
    #[case("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight", Rows::AsIs)]
    #[case(
        "blk.1.ffn_down.weight",
        "model.layers.1.mlp.down_proj.weight",
        Rows::AsIs
    )]
    fn llama_cpp_names_map_to_transformers_keys(
        #[case] gguf: &str,
        #[case] hf: &str,
        #[case] rows: Rows,
    ) {
        assert_eq!(hf_name(gguf), Some((hf.to_string(), rows)));
    }

    #[rstest::rstest]
    #[case("rope_freqs.weight")]
    #[case("blk.x.attn_q.weight")]
    #[case("blk.0.attn_qkv.weight")]
    fn unknown_names_are_not_guessed(#[case] gguf: &str) {
        assert_eq!(hf_name(gguf), None);
    }

    /// llama.cpp's forward permutation, written as in convert_hf_to_gguf.py:
    /// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = Vec::new();
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let src = (h * 2 + j) * half + i;
                    out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_permutation() {
        let (rows, cols, heads) = (12, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let back = unpermute_rows(&permute(&w, rows, cols, heads), rows, cols, heads).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn unpermuting_one_head_deinterleaves_even_and_odd_rows() {
        // Stored rows (one column) r0 r1 r2 r3 are pairs (r0, r1), (r2, r3): HF order is r0 r2 r1 r3.
        assert_eq!(
            unpermute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1).unwrap(),
            [0.0, 2.0, 1.0, 3.0]
        );
    }

    #[test]
    fn rows_not_divisible_by_twice_the_heads_are_rejected() {
        assert_eq!(unpermute_rows(&[0.0; 6], 6, 1, 2), None);
    }
}

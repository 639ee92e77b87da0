//! Which tensors a Llama GGUF holds, under which names, in which ggml type, and how their rows are
//! rearranged: the inverse of [`crate::gguf::names`], with the type rules of convert_hf_to_gguf.py
//! (`prepare_tensors`: 1-D tensors and norms stay F32) and, for the k-quant mix, llama.cpp's
//! `llama_tensor_get_type_impl` / `tensor_type_fallback` (src/llama-quant.cpp, as in the llama.cpp
//! that llama-cpp-python 0.3.36 builds; examples/check_gguf_q4_k_m_mix.py compares every tensor's
//! type and bytes with its `llama_model_quantize`).

use super::error::ExportError;
use super::metadata::Hparams;
use crate::gguf::dequant::GgmlType;
use crate::gguf::names::Rows;
use crate::gguf::{kquantize, quantize};

/// `--type`: the file's type, as llama.cpp's `LlamaFileType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4KM,
}

impl ExportType {
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k_m" => Self::Q4KM,
            _ => return Err(ExportError::UnsupportedType(s.to_string())),
        })
    }

    /// `general.file_type` (gguf-py `LlamaFileType`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::BF16 => 32,
        }
    }
}

/// ggml type ids (gguf-py `GGMLQuantizationType`).
pub fn type_id(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q8_0 => 8,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 12,
        GgmlType::Q5K => 13,
        GgmlType::Q6K => 14,
        GgmlType::Q8K => 15,
        GgmlType::BF16 => 30,
    }
}

/// One output tensor: its GGUF name, the Hugging Face tensor it comes from, ggml dims and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub gguf: String,
    pub hf: String,
    /// PyTorch shape `[rows, cols]` or `[n]`.
    pub shape: Vec<usize>,
    pub rows: Rows,
    pub ty: GgmlType,
    /// A tensor the converter makes rather than reads (Llama 3's `rope_freqs`).
    pub made: Option<Vec<f32>>,
}

impl Planned {
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }
    pub fn n_bytes(&self) -> u64 {
        let n: usize = self.shape.iter().product();
        self.ty.n_bytes(n as u64).unwrap_or(0)
    }
}

/// The GGUF name of a transformers Llama key (gguf-py tensor_mapping.py), with its row handling.
pub fn gguf_name(hf: &str) -> Option<(String, Rows)> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.into(), Rows::AsIs));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (name, rows) = match module {
        "input_layernorm.weight" => ("attn_norm.weight", Rows::AsIs),
        "self_attn.q_proj.weight" => ("attn_q.weight", Rows::QueryHeads),
        "self_attn.k_proj.weight" => ("attn_k.weight", Rows::KvHeads),
        "self_attn.v_proj.weight" => ("attn_v.weight", Rows::AsIs),
        "self_attn.o_proj.weight" => ("attn_output.weight", Rows::AsIs),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", Rows::AsIs),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", Rows::AsIs),
        "mlp.up_proj.weight" => ("ffn_up.weight", Rows::AsIs),
        "mlp.down_proj.weight" => ("ffn_down.weight", Rows::AsIs),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), rows))
}

/// llama-quant.cpp `use_more_bits`.
fn use_more_bits(i: u32, n: u32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quant.cpp `tensor_type_fallback`: a type whose blocks do not fit the rows is replaced.
fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    let fits = |t: GgmlType| cols % t.block().0 == 0;
    if fits(ty) {
        return ty;
    }
    // llama.cpp also maps Q5_K to Q5_1, a type we do not write; no `--type` here picks Q5_K.
    let next = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if fits(next) {
        next
    } else {
        GgmlType::F16
    }
}

/// The ggml type of tensor `gguf` (PyTorch shape `shape`) in a file of type `t` of a model with
/// `layers` blocks. `tied`: the token embedding also serves as the output head.
pub fn choose_type(
    t: ExportType,
    gguf: &str,
    shape: &[usize],
    layers: u32,
    tied: bool,
) -> GgmlType {
    let cols = shape.last().copied().unwrap_or(0);
    if shape.len() < 2 || gguf.ends_with("_norm.weight") {
        return GgmlType::F32;
    }
    let layer = gguf
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<u32>().ok())
        .unwrap_or(0);
    let is_output = gguf == "output.weight" || (tied && gguf == "token_embd.weight");
    match t {
        ExportType::F32 => GgmlType::F32,
        ExportType::F16 => GgmlType::F16,
        ExportType::BF16 => GgmlType::BF16,
        // gguf-py raises QuantError for rows that are not whole blocks; the converter then
        // writes F16.
        ExportType::Q8_0 => fallback(GgmlType::Q8_0, cols),
        ExportType::Q4_0 | ExportType::Q4KM if is_output => {
            // `category == OUTPUT`: Q6_K, or Q8_0 when the rows are not whole super-blocks.
            if cols % 256 == 0 {
                GgmlType::Q6K
            } else {
                fallback(GgmlType::Q8_0, cols)
            }
        }
        ExportType::Q4_0 => fallback(GgmlType::Q4_0, cols),
        ExportType::Q4KM => {
            // `category_is_attn_v` covers the fused `attn_qkv` (ChatGLM) as well as `attn_v`,
            // and that branch comes first, so a fused qkv gets attn_v's rule: Q6_K where
            // `use_more_bits(i_attention_wv, n_attention_wv)`, else the default Q4_K. (The later
            // `ATTENTION_QKV` branch, Q5_K for Q4_K_M, is unreachable there; older llama.cpp
            // matched attn_qkv by name only and wrote Q5_K.) Both counters run in llama.cpp's
            // tensor order, by layer (`weight_name_comparer`), and there is one such tensor per
            // layer, so `i_attention_wv` is the layer and `n_attention_wv` the layer count, as
            // for ffn_down's `i_ffn_down` / `n_layer`.
            let attn_v = gguf.ends_with(".attn_v.weight") || gguf.ends_with(".attn_qkv.weight");
            let more =
                (attn_v || gguf.ends_with(".ffn_down.weight")) && use_more_bits(layer, layers);
            fallback(if more { GgmlType::Q6K } else { GgmlType::Q4K }, cols)
        }
    }
}

/// Encodes f32 values in `ty` (a type [`choose_type`] returns).
pub fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quantize::quantize_q8_0(values),
        GgmlType::Q4_0 => quantize::quantize_q4_0(values),
        GgmlType::Q5_0 => kquantize::quantize_q5_0(values),
        GgmlType::Q4K => kquantize::quantize_q4_k(values),
        GgmlType::Q5K => kquantize::quantize_q5_k(values),
        GgmlType::Q6K => kquantize::quantize_q6_k(values),
        // Never chosen by `choose_type`.
        GgmlType::Q4_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => Vec::new(),
    }
}

/// llama.cpp's rotary row permutation (convert_hf_to_gguf.py `LlamaModel.permute`):
/// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// w: [rows, cols] row-major -> [rows, cols]; `None` when rows do not split into head pairs.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || rows % (2 * heads) != 0 || w.len() != rows.checked_mul(cols)? {
        return None;
    }
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * 2 + j) * half + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// Every tensor of the GGUF, in transformers' order per layer. Without an output head (tied
/// embeddings, not untied by an adapter) llama.cpp reuses `token_embd`.
pub fn plan(h: &Hparams, t: ExportType, write_output: bool) -> Vec<Planned> {
    let (hid, ffn, vocab) = (h.hidden as usize, h.ffn as usize, h.vocab as usize);
    let (q, kv) = (
        (h.heads * h.head_dim) as usize,
        (h.kv_heads * h.head_dim) as usize,
    );
    let mut keys: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, hid])];
    for l in 0..h.layers {
        let p = |m: &str| format!("model.layers.{l}.{m}.weight");
        keys.extend([
            (p("input_layernorm"), vec![hid]),
            (p("self_attn.q_proj"), vec![q, hid]),
            (p("self_attn.k_proj"), vec![kv, hid]),
            (p("self_attn.v_proj"), vec![kv, hid]),
            (p("self_attn.o_proj"), vec![hid, q]),
            (p("post_attention_layernorm"), vec![hid]),
            (p("mlp.gate_proj"), vec![ffn, hid]),
            (p("mlp.up_proj"), vec![ffn, hid]),
            (p("mlp.down_proj"), vec![hid, ffn]),
        ]);
    }
    keys.push(("model.norm.weight".into(), vec![hid]));
    if write_output {
        keys.push(("lm_head.weight".into(), vec![vocab, hid]));
    }
    let tied = h.tied && !write_output;
    let mut planned: Vec<Planned> = keys
        .into_iter()
        .filter_map(|(hf, shape)| {
            let (gguf, rows) = gguf_name(&hf)?;
            let ty = choose_type(t, &gguf, &shape, h.layers, tied);
            Some(Planned {
                gguf,
                hf,
                shape,
                rows,
                ty,
                made: None,
            })
        })
        .collect();
    if let Some(factors) = h.rope_freqs() {
        // convert_hf_to_gguf.py yields it before the checkpoint's tensors (F32, 1-D).
        planned.insert(
            0,
            Planned {
                gguf: "rope_freqs.weight".into(),
                hf: "rope_freqs.weight".into(),
                shape: vec![factors.len()],
                rows: Rows::AsIs,
                ty: GgmlType::F32,
                made: Some(factors),
            },
        );
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::names::{hf_name, unpermute_rows};
    use crate::models::rope::RopeScaling;

    fn smollm2() -> Hparams {
        Hparams {
            layers: 30,
            hidden: 576,
            ffn: 1536,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            context: 8192,
            rope_theta: 1e5,
            rms_eps: 1e-5,
            tied: true,
            rope_scaling: RopeScaling::None,
        }
    }

    #[test]
    fn names_invert_the_import_mapping() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.7.self_attn.q_proj.weight",
            "model.layers.7.mlp.down_proj.weight",
        ] {
            let (g, rows) = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g), Some((hf.to_string(), rows)));
        }
    }

    #[test]
    fn permuting_is_undone_by_the_import_unpermutation() {
        let (rows, cols, heads) = (12, 3, 3);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let p = permute_rows(&w, rows, cols, heads).unwrap();
        assert_ne!(p, w);
        assert_eq!(unpermute_rows(&p, rows, cols, heads).unwrap(), w);
    }

    #[test]
    fn use_more_bits_matches_llama_quant_for_30_layers() {
        let picked: Vec<u32> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0..3, 26..30, and (i - 3) % 3 == 2.
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn q4_k_m_on_smollm2_falls_back_where_rows_are_not_whole_super_blocks() {
        let t = ExportType::Q4KM;
        // 576 columns: Q4_K -> Q5_0, the tied output (token_embd) Q6_K -> Q8_0.
        assert_eq!(
            choose_type(t, "blk.3.attn_q.weight", &[576, 576], 30, true),
            GgmlType::Q5_0
        );
        assert_eq!(
            choose_type(t, "token_embd.weight", &[49152, 576], 30, true),
            GgmlType::Q8_0
        );
        // 1536 columns: whole super-blocks.
        assert_eq!(
            choose_type(t, "blk.0.ffn_down.weight", &[576, 1536], 30, true),
            GgmlType::Q6K
        );
        assert_eq!(
            choose_type(t, "blk.3.ffn_down.weight", &[576, 1536], 30, true),
            GgmlType::Q4K
        );
        assert_eq!(
            choose_type(t, "blk.3.attn_norm.weight", &[576], 30, true),
            GgmlType::F32
        );
        assert_eq!(
            choose_type(ExportType::F16, "blk.3.attn_norm.weight", &[576], 30, true),
            GgmlType::F32
        );
    }

    #[test]
    fn a_tied_model_has_no_output_tensor() {
        let names: Vec<String> = plan(&smollm2(), ExportType::F16, false)
            .into_iter()
            .map(|p| p.gguf)
            .collect();
        assert_eq!(names.len(), 2 + 30 * 9);
        assert!(!names.contains(&"output.weight".to_string()));
    }
}

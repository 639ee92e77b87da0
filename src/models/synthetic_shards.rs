//! Writes a synthetic Llama folder as safetensors shards (`model-0000N-of-0000M.safetensors` +
//! `model.safetensors.index.json`, as transformers' `save_pretrained`), streaming random values
//! through one small buffer: a 7B folder (13.5 GB in bf16) is written without holding a tensor.

use std::io::Write;
use std::path::Path;

use safetensors::Dtype;
use serde_json::json;

use crate::error::LoadError;
use crate::merge::layout::{OutShard, OutTensor};
use crate::merge::stream;
use crate::models::synthetic::Shape;

/// Values per write: 4 Mi values (8 MiB in bf16).
const BLOCK: usize = 4 << 20;
/// U(−AMP, AMP) weights, norms at 1 (as `write_random_llama`).
const AMP: f32 = 0.02;

fn tensor(name: String, dtype: Dtype, shape: Vec<usize>) -> OutTensor {
    OutTensor {
        source: name.clone(),
        name,
        dtype,
        shape,
    }
}

/// The tensors of layer `l`, with PyTorch's `[out, in]` shapes.
fn layer_tensors(s: &Shape, l: usize, dtype: Dtype) -> Vec<OutTensor> {
    let (h, i) = (s.hidden, s.intermediate);
    let kv = h / s.heads * s.kv_heads;
    let p = format!("model.layers.{l}");
    let mut out = Vec::new();
    for (name, shape) in [
        ("self_attn.q_proj", [h, h]),
        ("self_attn.k_proj", [kv, h]),
        ("self_attn.v_proj", [kv, h]),
        ("self_attn.o_proj", [h, h]),
        ("mlp.gate_proj", [i, h]),
        ("mlp.up_proj", [i, h]),
        ("mlp.down_proj", [h, i]),
    ] {
        out.push(tensor(format!("{p}.{name}.weight"), dtype, shape.to_vec()));
    }
    for n in ["input_layernorm", "post_attention_layernorm"] {
        out.push(tensor(format!("{p}.{n}.weight"), dtype, vec![h]));
    }
    out
}

/// Shards of `layers_per_shard` layers; the embedding opens the first, norm and head close the
/// last.
fn shards(s: &Shape, tied: bool, dtype: Dtype, layers_per_shard: usize) -> Vec<OutShard> {
    let per = layers_per_shard.max(1);
    let count = s.layers.div_ceil(per).max(1);
    (0..count)
        .map(|k| {
            let mut ts = Vec::new();
            if k == 0 {
                let name = "model.embed_tokens.weight".to_string();
                ts.push(tensor(name, dtype, vec![s.vocab, s.hidden]));
            }
            for l in k * per..((k + 1) * per).min(s.layers) {
                ts.extend(layer_tensors(s, l, dtype));
            }
            if k == count - 1 {
                ts.push(tensor("model.norm.weight".into(), dtype, vec![s.hidden]));
                if !tied {
                    ts.push(tensor(
                        "lm_head.weight".into(),
                        dtype,
                        vec![s.vocab, s.hidden],
                    ));
                }
            }
            OutShard {
                file: format!("model-{:05}-of-{count:05}.safetensors", k + 1),
                tensors: ts,
            }
        })
        .collect()
}

/// xorshift64 values in U(−amp, amp), or 1 for a norm.
fn fill(buf: &mut Vec<u8>, n: usize, dtype: Dtype, norm: bool, seed: &mut u64) {
    buf.clear();
    for _ in 0..n {
        let v = if norm {
            1.0
        } else {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * AMP
        };
        match dtype {
            Dtype::BF16 => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            Dtype::F16 => buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            _ => buf.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Writes `config.json`, the shards and the index into `dir`; returns the bytes of weights.
/// `dtype`: F32, BF16 or F16.
pub fn write_sharded_llama(
    dir: &Path,
    (shape, tied): (Shape, bool),
    dtype: Dtype,
    layers_per_shard: usize,
    seed: u64,
) -> Result<u64, LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut config = shape.config_with_head(tied);
    config["torch_dtype"] = json!(match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    let (mut weight_map, mut total) = (serde_json::Map::new(), 0u64);
    let mut seed = seed | 1;
    let mut buf = Vec::with_capacity(BLOCK * 4);
    for shard in shards(&shape, tied, dtype, layers_per_shard) {
        let path = dir.join(&shard.file);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        file.write_all(&stream::header(&shard)).map_err(io)?;
        for t in &shard.tensors {
            let norm = t.shape.len() == 1;
            let mut left: usize = t.shape.iter().product();
            while left > 0 {
                let n = left.min(BLOCK);
                fill(&mut buf, n, dtype, norm, &mut seed);
                file.write_all(&buf).map_err(io)?;
                left -= n;
            }
            total += t.byte_len();
            weight_map.insert(t.name.clone(), json!(shard.file));
        }
        file.flush().map_err(io)?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).map_err(io)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::synthetic::NAMED;

    #[test]
    fn the_llama2_7b_shape_has_its_published_parameter_count() {
        let (_, shape, tied) = NAMED[2];
        // meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters.
        assert_eq!(shape.parameters(tied), 6_738_415_616);
        let bytes: u64 = shards(&shape, tied, Dtype::BF16, 4)
            .iter()
            .flat_map(|s| s.tensors.iter().map(OutTensor::byte_len))
            .sum();
        assert_eq!(bytes, 2 * 6_738_415_616);
    }

    #[test]
    fn a_small_sharded_folder_loads_as_a_model() {
        let tmp = tempfile::tempdir().unwrap();
        let shape = Shape {
            hidden: 32,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            intermediate: 64,
            vocab: 50,
        };
        let bytes = write_sharded_llama(tmp.path(), (shape, false), Dtype::BF16, 2, 7).unwrap();
        assert_eq!(bytes, 2 * shape.parameters(false));
        assert!(tmp
            .path()
            .join("model-00002-of-00002.safetensors")
            .is_file());
        let dir = crate::models::ModelDir::open(tmp.path()).unwrap();
        let model = dir.load(&burn::tensor::Device::flex()).unwrap();
        assert_eq!(model.vocab_size(), 50);
    }
}

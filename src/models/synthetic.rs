//! Llama-shaped model folders with random weights, for benchmarks (speed does not depend on the
//! values) and tests.

use std::path::Path;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::error::LoadError;
use crate::io::{write_safetensors_atomic, OwnedTensor};
use crate::models::ModelDir;

/// A Llama shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
}

/// SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 KV heads, intermediate 1536, vocab 49152.
pub const SMOLLM2_135M: Shape = Shape {
    hidden: 576,
    layers: 30,
    heads: 9,
    kv_heads: 3,
    intermediate: 1536,
    vocab: 49152,
};

/// Llama-2-7B (Touvron et al. 2023, meta-llama/Llama-2-7b-hf config.json): hidden 4096,
/// 32 layers, 32 heads (no GQA), intermediate 11008, vocab 32000, untied head: 6.74B parameters.
pub const LLAMA2_7B: Shape = Shape {
    hidden: 4096,
    layers: 32,
    heads: 32,
    kv_heads: 32,
    intermediate: 11008,
    vocab: 32000,
};

/// A 0.5B-parameter Llama shape (hidden 1536, 16 layers, 12/4 heads, intermediate 4096, vocab
/// 32000, untied), small enough to train a step on the 2-core machine and check the memory
/// estimate at a width nearer 7B's.
pub const LLAMA_HALF_B: Shape = Shape {
    hidden: 1536,
    layers: 16,
    heads: 12,
    kv_heads: 4,
    intermediate: 4096,
    vocab: 32000,
};

/// The named shapes `examples/synthetic_model.rs` writes: (name, shape, tied head).
pub const NAMED: [(&str, Shape, bool); 3] = [
    ("smollm2-135m", SMOLLM2_135M, true),
    ("llama-0.5b", LLAMA_HALF_B, false),
    ("llama2-7b", LLAMA2_7B, false),
];

impl Shape {
    /// Parameters of this shape (tied or not).
    pub fn parameters(&self, tied: bool) -> u64 {
        let (h, i) = (self.hidden as u64, self.intermediate as u64);
        let d = h / self.heads as u64;
        let kv = d * self.kv_heads as u64;
        let layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h;
        let embed = self.vocab as u64 * h * if tied { 1 } else { 2 };
        self.layers as u64 * layer + embed + h
    }

    /// The config.json of this shape with the head `tied` or not (rope_theta 1e4 as Llama 2).
    pub fn config_with_head(&self, tied: bool) -> Value {
        let mut c = self.config();
        c["tie_word_embeddings"] = json!(tied);
        if !tied {
            c["rope_theta"] = json!(10000.0);
            c["max_position_embeddings"] = json!(4096);
        }
        c
    }

    /// The config.json of this shape (tied embeddings, rope_theta 1e5 as SmolLM2).
    pub fn config(&self) -> Value {
        json!({
            "model_type": "llama", "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2
        })
    }
}

/// Writes `config.json` and a `model.safetensors` of U(−0.02, 0.02) weights (norms at 1).
pub fn write_random_llama(dir: &Path, shape: Shape, seed: u64) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("config.json"), shape.config().to_string()).map_err(io)?;
    let model = ModelDir::open(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    for m in model.module_paths() {
        let shape = if m.kind == "embedding" {
            vec![m.d_in, m.d_out]
        } else {
            vec![m.d_out, m.d_in]
        };
        let values: Vec<f32> = (0..m.d_in * m.d_out)
            .map(|_| rng.random_range(-0.02..0.02))
            .collect();
        tensors.push((
            format!("{}.weight", m.path),
            OwnedTensor::from_f32(shape, &values),
        ));
    }
    let ones = vec![1.0f32; shape.hidden];
    for l in 0..shape.layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((
                format!("model.layers.{l}.{norm}.weight"),
                OwnedTensor::from_f32(vec![shape.hidden], &ones),
            ));
        }
    }
    tensors.push((
        "model.norm.weight".into(),
        OwnedTensor::from_f32(vec![shape.hidden], &ones),
    ));
    write_safetensors_atomic(&dir.join("model.safetensors"), &tensors, None).map_err(|e| {
        LoadError::Config {
            path: dir.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

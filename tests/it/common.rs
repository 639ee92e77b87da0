//! Shared helpers for the integration tests: fixture paths, reference tensors, comparisons, and
//! running the `peft` binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use burn::tensor::Device;
use peft::io::Checkpoint;
use peft::models::{CausalLm, Inputs, ModelDir};

/// Logits max abs diff allowed against the PyTorch references (f32 compute).
pub const LOGITS_TOL: f32 = 1e-4;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn device() -> Device {
    Device::flex()
}

pub fn load_model(rel: &str) -> CausalLm {
    let dir = ModelDir::open(&fixture(rel)).expect("fixture model opens");
    dir.load(&device()).expect("fixture model loads")
}

/// A fixture `reference.safetensors`: input ids, attention mask and logits.
pub struct Reference {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    pub logits: Vec<f32>,
    pub logits_shape: Vec<usize>,
    pub file: Checkpoint,
}

pub fn reference(rel: &str) -> Reference {
    let file = Checkpoint::open_files(&[fixture(rel).join("reference.safetensors")])
        .expect("reference opens");
    let (ids, shape) = file.read_i64("input_ids").expect("input_ids");
    let (mask, _) = file.read_i64("attention_mask").expect("attention_mask");
    let (logits, logits_shape) = file.read_f32("logits").expect("logits");
    Reference {
        ids,
        mask,
        batch: shape[0],
        seq: shape[1],
        logits,
        logits_shape,
        file,
    }
}

impl Reference {
    /// Greedy decoding of `model` from the reference's `greedy_prompt_ids` (no EOS stop) and the
    /// reference's `greedy_new_ids`.
    pub fn greedy(&self, model: &CausalLm) -> (Vec<u32>, Vec<u32>) {
        let (prompt, _) = self.file.read_i64("greedy_prompt_ids").unwrap();
        let (expected, _) = self.file.read_i64("greedy_new_ids").unwrap();
        let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
        let cfg = peft::generate::SamplingConfig {
            max_new_tokens: expected.len(),
            stop_at_eos: false,
            ..Default::default()
        };
        let new = peft::generate::generate(model, &prompt, &cfg, &mut |_| {}).unwrap();
        (new, expected.iter().map(|&t| t as u32).collect())
    }

    pub fn inputs(&self) -> Inputs {
        Inputs::with_mask(self.ids.clone(), &self.mask, self.batch, self.seq)
    }

    /// Max |ours − reference| over positions with attention_mask == 1, comparing the last `seq`
    /// positions of the reference (prompt methods prepend virtual tokens). Returns (diff, count).
    pub fn compare(&self, ours: &[f32]) -> (f32, usize) {
        let vocab = *self.logits_shape.last().expect("vocab dim");
        let ref_seq = self.logits_shape[1];
        let offset = ref_seq - self.seq;
        let mut worst = 0.0f32;
        let mut compared = 0;
        for b in 0..self.batch {
            for t in 0..self.seq {
                if self.mask[b * self.seq + t] == 0 {
                    continue;
                }
                let o = &ours[(b * self.seq + t) * vocab..][..vocab];
                let r = &self.logits[(b * ref_seq + offset + t) * vocab..][..vocab];
                for (x, y) in o.iter().zip(r) {
                    worst = worst.max((x - y).abs());
                }
                compared += 1;
            }
        }
        (worst, compared)
    }
}

pub fn peft_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peft"))
}

pub fn run_peft(args: &[&str]) -> Output {
    peft_bin().args(args).output().expect("peft binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The training lines of a run's `metrics.jsonl` (eval lines carry a `split`), in order.
pub fn train_metrics(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("split").is_none())
        .collect()
}

/// The training losses of a run, step by step.
pub fn train_losses(out: &std::path::Path) -> Vec<f64> {
    train_metrics(out)
        .iter()
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// `peft train --model MODEL --data datasets/tiny_instruct.jsonl --out OUT FLAGS...`.
pub fn train_on_tiny_instruct(
    model: &std::path::Path,
    out: &std::path::Path,
    flags: &[&str],
) -> Output {
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let mut args = vec![
        "train",
        "--model",
        path_str(model),
        "--data",
        path_str(&data),
        "--out",
        path_str(out),
    ];
    args.extend_from_slice(flags);
    run_peft(&args)
}

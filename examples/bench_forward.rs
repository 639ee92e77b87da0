//! Forward and generation benchmark on a SmolLM2-135M-shaped Llama with random weights, plus the
//! peak RSS of loading a ≥ 500M-parameter checkpoint. Writes JSON; compare with
//! `../shared/bench/torch_forward.py` run in the same session (see README).
//!
//!     cargo run --example bench_forward -- [--device cpu|ndarray] [--out bench-out/forward.json]
//!
//! The load measurement runs in a child process (`--load-only DIR`) so its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use peft::generate::{generate, SamplingConfig};
use peft::models::synthetic::{peak_rss_mib, write_random_llama, Shape, SMOLLM2_135M};
use peft::models::tensor_util::to_vec;
use peft::models::{Inputs, ModelDir};
use serde_json::json;

fn prefill_tokens_per_s(
    model: &peft::models::CausalLm,
    batch: usize,
    seq: usize,
    repeats: usize,
) -> f64 {
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i % 1000) as i64 + 10).collect();
    let inputs = Inputs::new(ids, batch, seq);
    let _ = to_vec(model.forward_last(&inputs, None));
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let _ = to_vec(model.forward_last(&inputs, None));
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (batch * seq) as f64 / times[times.len() / 2]
}

fn generation_tokens_per_s(model: &peft::models::CausalLm, new: usize) -> Result<f64> {
    let prompt: Vec<u32> = (0..16).map(|i| 100 + i).collect();
    let cfg = SamplingConfig {
        max_new_tokens: new,
        stop_at_eos: false,
        ..Default::default()
    };
    let t = Instant::now();
    let out = generate(model, &prompt, &cfg, &mut |_| {})?;
    Ok(out.len() as f64 / t.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device_name = arg("--device").unwrap_or_else(|| "cpu".into());
    let device = peft::device::parse_device(&device_name)?;
    if let Some(dir) = arg("--load-only") {
        let t = Instant::now();
        // `--base-dtype bf16`: the frozen base stored in bf16, as `peft train --base-dtype bf16`.
        let dtype = match arg("--base-dtype").as_deref() {
            Some("bf16") => burn::tensor::DType::BF16,
            _ => burn::tensor::DType::F32,
        };
        let model = ModelDir::open(Path::new(&dir))?.load_with_base_dtype(&device, dtype)?;
        println!(
            "{}",
            json!({"load_s": t.elapsed().as_secs_f64(), "peak_rss_mib": peak_rss_mib(), "vocab": model.vocab_size()})
        );
        return Ok(());
    }
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "bench-out/forward.json".into()));
    let work = std::env::temp_dir().join("peft-bench-forward");
    let small = work.join("smollm2-shaped");
    write_random_llama(&small, SMOLLM2_135M, 0).context("writing the SmolLM2-shaped model")?;
    let model = ModelDir::open(&small)?.load(&device)?;
    let mut results = serde_json::Map::new();
    results.insert("device".into(), json!(device_name));
    let threads = peft::device::set_threads(arg("--threads").and_then(|t| t.parse().ok()))?;
    results.insert("threads".into(), json!(threads));
    for batch in [1, 8] {
        let tps = prefill_tokens_per_s(&model, batch, 256, 3);
        eprintln!("prefill batch {batch} seq 256: {tps:.1} tokens/s");
        results.insert(format!("prefill_b{batch}_s256_tokens_per_s"), json!(tps));
    }
    for new in [16, 256] {
        let tps = generation_tokens_per_s(&model, new)?;
        eprintln!("greedy generation {new} new tokens: {tps:.2} tokens/s");
        results.insert(format!("generate_{new}_tokens_per_s"), json!(tps));
    }
    let mut model = model;
    model.cast_decode_weights(burn::tensor::DType::BF16);
    for new in [16, 256] {
        let tps = generation_tokens_per_s(&model, new)?;
        eprintln!("greedy generation {new} new tokens, bf16 decoding weights: {tps:.2} tokens/s");
        results.insert(format!("generate_bf16_{new}_tokens_per_s"), json!(tps));
    }
    drop(model);
    // ~522M parameters: hidden 1024, 30 layers, intermediate 4096, vocab 49152, tied.
    let big = work.join("llama-520m");
    let shape = Shape {
        hidden: 1024,
        layers: 30,
        heads: 16,
        kv_heads: 8,
        intermediate: 4096,
        vocab: 49152,
    };
    write_random_llama(&big, shape, 1).context("writing the 520M-parameter model")?;
    let params = ModelDir::open(&big)?.num_parameters();
    let load_child = |base_dtype: &str| -> Result<serde_json::Value> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--load-only",
                big.to_str().unwrap_or_default(),
                "--device",
                &device_name,
                "--base-dtype",
                base_dtype,
            ])
            .output()?;
        serde_json::from_slice(&child.stdout).context("child load report")
    };
    let load = load_child("f32")?;
    let load_bf16 = load_child("bf16")?;
    let f32_mib = params as f64 * 4.0 / (1024.0 * 1024.0);
    eprintln!(
        "load {params} params: peak RSS {} MiB (f32 size {f32_mib:.0} MiB)",
        load["peak_rss_mib"]
    );
    results.insert("load_params".into(), json!(params));
    results.insert("load_f32_mib".into(), json!(f32_mib));
    results.insert("load_peak_rss_mib".into(), load["peak_rss_mib"].clone());
    results.insert("load_s".into(), load["load_s"].clone());
    results.insert(
        "load_bf16_peak_rss_mib".into(),
        load_bf16["peak_rss_mib"].clone(),
    );
    std::fs::remove_dir_all(&work).ok();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

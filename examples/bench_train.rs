//! LoRA benchmarks on a SmolLM2-135M-shaped Llama with random weights (speed does not depend on
//! the values). Writes JSON; compare with `../shared/bench/torch_train.py lora` in the same
//! session (see README).
//!
//!     cargo run --example bench_train -- [--device cpu] [--steps 3] [--threads N] [--with-full]
//!         [--out bench-out/train.json]
//!
//! - adapter overhead: forward tokens/s with LoRA r 8 on every linear layer vs. without adapters,
//!   and LoRA forward+backward tokens/s (batch 1 × seq 256);
//! - training: AdamW steps at batch 4 × seq 256, loss on every token (as torch_train.py), and the
//!   peak RSS of that process (run as a child so the number is its own).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use peft::models::synthetic::{peak_rss_mib, write_random_llama, SMOLLM2_135M};
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, ModelDir};
use peft::peft::config::AdapterConfig;
use peft::peft::format::inject_new;
use peft::train::{train_step, AdamW, AdamWConfig, Batch};
use serde_json::json;

const RANK: usize = 8;

fn lora_config() -> Result<AdapterConfig> {
    let value = json!({"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules":
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
    Ok(AdapterConfig::from_json(value, Path::new("bench"))?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn random_batch(batch: usize, seq: usize) -> Batch {
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7919) % 49152) as i64)
        .collect();
    Batch {
        labels: ids.clone(),
        mask: vec![1; ids.len()],
        ids,
        batch,
        seq,
    }
}

fn load(dir: &Path, device: &Device, lora: bool) -> Result<CausalLm> {
    let model_dir = ModelDir::open(dir)?;
    let mut model = model_dir.load(device)?;
    if lora {
        inject_new(&mut model, "llama", &lora_config()?, 0, device)?;
    }
    Ok(model)
}

fn overhead(dir: &Path, device: &Device, repeats: usize) -> Result<serde_json::Value> {
    let inputs = random_batch(1, 256).inputs();
    let base = load(dir, device, false)?;
    let base_s = timed(repeats, || {
        to_vec(base.forward(&inputs, None));
    });
    drop(base);
    let lora = load(dir, device, true)?;
    let lora_s = timed(repeats, || {
        to_vec(lora.forward(&inputs, None));
    });
    drop(lora);
    let auto = device.clone().autodiff();
    let train_model = load(dir, &auto, true)?;
    let fb_s = timed(repeats, || {
        let loss = train_model.forward(&inputs, None).mean();
        let _ = loss.backward();
    });
    Ok(json!({
        "forward_base_tokens_per_s": 256.0 / base_s, "forward_lora_tokens_per_s": 256.0 / lora_s,
        "forward_lora_overhead": lora_s / base_s - 1.0, "forward_backward_lora_tokens_per_s": 256.0 / fb_s,
    }))
}

/// AdamW steps at batch 4 × 256: LoRA r 8 on every linear layer, or full fine-tuning (every
/// parameter trained; the issue's yardstick: a LoRA step should cost ≤ 0.7× of it).
fn train(dir: &Path, device: &Device, steps: usize, full: bool) -> Result<serde_json::Value> {
    use burn::module::Module;
    let auto = device.clone().autodiff();
    let mut model = load(dir, &auto, !full)?;
    if full {
        model = model.set_require_grad(true);
    }
    let mut optim = AdamW::new(AdamWConfig {
        weight_decay: 0.01,
        ..Default::default()
    });
    let batch = random_batch(4, 256);
    let mut times = Vec::new();
    for i in 0..=steps {
        let t = Instant::now();
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), 1e-4, None);
        model = next;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "step {i}: loss {:.4} ({:.1} s)",
            stats.loss,
            t.elapsed().as_secs_f64()
        );
    }
    let step_s = median(times);
    let key = if full { "full" } else { "train" };
    Ok(json!({
        format!("{key}_step_s"): step_s,
        format!("{key}_tokens_per_s"): 1024.0 / step_s,
        format!("{key}_peak_rss_mib"): peak_rss_mib(),
    }))
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
    let threads = peft::device::set_threads(arg("--threads").and_then(|t| t.parse().ok()))?;
    let steps: usize = arg("--steps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join("peft-bench-train/smollm2-shaped");
    if let Some(model_dir) = arg("--train-only") {
        let full = args.iter().any(|a| a == "--full");
        println!("{}", train(Path::new(&model_dir), &device, steps, full)?);
        return Ok(());
    }
    write_random_llama(&dir, SMOLLM2_135M, 0).context("writing the SmolLM2-shaped model")?;
    let mut results = overhead(&dir, &device, 3)?;
    eprintln!("{results}");
    // Each training run in a child process, so its peak RSS is its own.
    let mut reports = Vec::new();
    let modes: &[&str] = if args.iter().any(|a| a == "--with-full") {
        &["lora", "full"]
    } else {
        &["lora"]
    };
    for mode in modes {
        let steps = steps.to_string();
        let threads = threads.to_string();
        let mut child_args = vec![
            "--train-only",
            dir.to_str().unwrap_or_default(),
            "--device",
            &device_name,
            "--steps",
            &steps,
            "--threads",
            &threads,
        ];
        if *mode == "full" {
            child_args.push("--full");
        }
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(child_args)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let report: serde_json::Value =
            serde_json::from_slice(&child.stdout).context("child training report")?;
        reports.push(report);
    }
    for t in reports.iter().filter_map(|r| r.as_object()) {
        results.as_object_mut().map(|r| r.extend(t.clone()));
    }
    if let Some(r) = results.as_object_mut() {
        r.insert("device".into(), json!(device_name));
        r.insert("rank".into(), json!(RANK));
        r.insert("threads".into(), json!(threads));
    }
    let out = arg("--out").unwrap_or_else(|| "bench-out/train.json".into());
    if let Some(parent) = Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    std::fs::remove_dir_all(dir.parent().unwrap_or(&dir)).ok();
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

//! `--compute-dtype f32` against `bf16` in one process, on SmolLM2-135M-Instruct with a bf16
//! base and LoRA r 8 on every linear layer: the same model, its compute dtype switched between
//! alternating timings of one training forward + backward (loss on every token) at batch 4 × 256.
//! Prints the median seconds of each and their ratio. Relative numbers only; give `uptime`.
//!
//!     PEFT_SMOLLM2_DIR=/var/tmp/peft-cache/SmolLM2-135M-Instruct cargo run --example bench_compute_dtype

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{DType, Device};
use peft::kernels::bf16_gemm::supported;
use peft::models::linear::ComputeDtype;
use peft::models::ModelDir;
use peft::peft::config::AdapterConfig;
use peft::peft::format::inject_new;
use peft::train::Batch;
use serde_json::json;

fn main() -> Result<()> {
    if !supported() {
        println!("this CPU has no avx512bf16: nothing to compare");
        return Ok(());
    }
    let dir = std::env::var("PEFT_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/peft-cache/SmolLM2-135M-Instruct"));
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let device = Device::flex().autodiff();
    let mut model = ModelDir::open(&dir)?.load_with_base_dtype(&device, DType::BF16)?;
    let config = AdapterConfig::from_json(
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules":
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
        std::path::Path::new("bench"),
    )?;
    inject_new(&mut model, "llama", &config, 0, &device)?;
    let (batch, seq) = (4, 256);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7919) % 49152) as i64)
        .collect();
    let batch = Batch {
        labels: ids.clone(),
        mask: vec![1; ids.len()],
        ids,
        batch,
        seq,
    };
    let inputs = batch.inputs();
    let mut times = [Vec::new(), Vec::new()];
    for rep in 0..=reps {
        for (i, compute) in [ComputeDtype::F32, ComputeDtype::Bf16]
            .into_iter()
            .enumerate()
        {
            model.set_compute_dtype(compute);
            let t = Instant::now();
            let loss = model.token_loss_sum(&inputs, &batch.labels);
            let _ = loss.backward();
            let s = t.elapsed().as_secs_f64();
            eprintln!("rep {rep} {compute:?}: {s:.2} s");
            if rep > 0 {
                times[i].push(s);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, b) = (median(&mut times[0]), median(&mut times[1]));
    println!(
        "threads {}; fwd+bwd at 4 × 256, median of {reps}: f32 compute {f:.2} s, bf16 compute {b:.2} s, {:.2}×",
        rayon::current_num_threads(),
        f / b
    );
    Ok(())
}

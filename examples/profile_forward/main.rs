//! One forward workload of `bench_forward` in a loop, for a profiler (`perf record`) or for A/B
//! timings inside one process: the SmolLM2-135M-shaped model with random weights, 2 threads.
//!
//!     cargo run --example profile_forward -- prefill 8 [repeats]     # batch 8 × 256
//!     cargo run --example profile_forward -- generate 256 [repeats]  # greedy, f32 weights
//!     cargo run --example profile_forward -- generate-bf16 256 [repeats]
//!     cargo run --example profile_forward -- ops-prefill 8 | ops-generate 256 | ops-generate-bf16 256
//!
//!     cargo run --example profile_forward -- gemv-ab 300     # few-row kernels, both layouts
//!     cargo run --example profile_forward -- linear-ab 8 9   # 3-D linear vs 2-D matmul
//!     cargo run --example profile_forward -- handoff 20000   # a parallel op from outside the pool
//!
//! The `ops-` modes run the Llama forward op by op (the composition of `LlamaForCausalLm`,
//! checked against `forward_last`) and print the wall and CPU time per op (every thread of the
//! process, `CLOCK_PROCESS_CPUTIME_ID`) per token.
//!
//! Prints wall and process CPU seconds per repeat (CPU time is what a shared machine inflates
//! least; wall time shows thread idling). Set `THREADS` (default 2).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use peft::generate::{generate, SamplingConfig};
use peft::models::synthetic::{write_random_llama, SMOLLM2_135M};
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, Inputs, ModelDir};

mod ops;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("prefill");
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let repeats: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    peft::device::set_threads(Some(threads))?;
    let device = peft::device::parse_device("cpu")?;
    if mode == "gemv-ab" {
        return ops::gemv_ab(n);
    }
    let dir = std::env::temp_dir().join("peft-profile-forward");
    if !dir.join("config.json").exists() {
        write_random_llama(&dir, SMOLLM2_135M, 0).context("writing the SmolLM2-shaped model")?;
    }
    let mut model = ModelDir::open(&dir)?.load(&device)?;
    if mode.ends_with("bf16") {
        model.cast_decode_weights(burn::tensor::DType::BF16);
    }
    let run = |model: &peft::models::CausalLm| -> Result<usize> {
        match mode {
            "prefill" => {
                let ids: Vec<i64> = (0..n * 256).map(|i| (i % 1000) as i64 + 10).collect();
                let _ = to_vec(model.forward_last(&Inputs::new(ids, n, 256), None));
                Ok(n * 256)
            }
            "generate" | "generate-bf16" => {
                let prompt: Vec<u32> = (0..16).map(|i| 100 + i).collect();
                let cfg = SamplingConfig {
                    max_new_tokens: n,
                    stop_at_eos: false,
                    ..Default::default()
                };
                Ok(generate(model, &prompt, &cfg, &mut |_| {})?.len())
            }
            other => bail!("unknown mode {other}"),
        }
    };
    if mode == "gemv-ab" {
        return ops::gemv_ab(n);
    }
    if mode == "handoff" {
        return ops::handoff(n);
    }
    if mode == "linear-ab" {
        return ops::linear_ab(n, repeats);
    }
    if let Some(op_mode) = mode.strip_prefix("ops-") {
        let CausalLm::Llama(m) = &model else {
            bail!("ops- modes take a Llama")
        };
        return ops::profile(m, op_mode, n, repeats);
    }
    run(&model)?;
    for _ in 0..repeats {
        let (t, c) = (Instant::now(), cpu_seconds());
        let tokens = run(&model)?;
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        println!(
            "{mode} {n}: {tokens} tokens, wall {wall:.3} s ({:.1} tok/s), cpu {cpu:.2} s ({:.2} cores)",
            tokens as f64 / wall,
            cpu / wall
        );
    }
    Ok(())
}

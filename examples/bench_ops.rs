//! The LoRA training step by op family, fused kernel against the plain burn composition, on the
//! SmolLM2-135M shapes (batch 4 × 256, hidden 576, intermediate 1536, 9/3 heads of 64, vocab
//! 49152, LoRA r 8), forward + backward, summed over the 30 layers. The families are those of
//! `../shared/bench/torch_profile.py`, so the table reads against torch.profiler's.
//!
//!     cargo run --example bench_ops -- [--threads 2] [--reps 3] [--out bench-out/ops.json]

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use peft::kernels::attention::{attention, attention_reference, AttnMask};
use peft::kernels::cross_entropy::{
    linear_cross_entropy, linear_cross_entropy_reference, HeadLayout,
};
use peft::kernels::{lora_linear, rms_norm, rope, swiglu};
use serde_json::json;

const B: usize = 4;
const S: usize = 256;
const HIDDEN: usize = 576;
const INTER: usize = 1536;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 49152;
const LAYERS: usize = 30;
const RANK: usize = 8;

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Uniform(-0.5, 0.5), device)
}

/// Median seconds of `reps` runs of `f` (after one warm-up).
fn timed(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Forward and backward of `f(x)` for a tracked `x`, reduced by a sum.
fn fwd_bwd<const D: usize, const E: usize>(x: &Tensor<D>, f: &dyn Fn(Tensor<D>) -> Tensor<E>) {
    let x = x.clone().require_grad();
    let grads = f(x.clone()).sum().backward();
    std::hint::black_box(x.grad(&grads));
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads = peft::device::set_threads(arg("--threads").and_then(|t| t.parse().ok()))?;
    let reps: usize = arg("--reps").and_then(|r| r.parse().ok()).unwrap_or(3);
    let dev = Device::flex().autodiff();
    let rows = B * S;
    let mut table: Vec<(&str, f64, Option<f64>)> = Vec::new();

    // Frozen base GEMMs of one layer: q, k, v, o, gate, up, down (forward + input gradient).
    let shapes = [
        (HIDDEN, HEADS * HEAD_DIM),
        (HIDDEN, KV_HEADS * HEAD_DIM),
        (HIDDEN, KV_HEADS * HEAD_DIM),
        (HEADS * HEAD_DIM, HIDDEN),
        (HIDDEN, INTER),
        (HIDDEN, INTER),
        (INTER, HIDDEN),
    ];
    let weights: Vec<Tensor<2>> = shapes.iter().map(|&(i, o)| rand([i, o], &dev)).collect();
    let inputs: Vec<Tensor<2>> = shapes.iter().map(|&(i, _)| rand([rows, i], &dev)).collect();
    let base = timed(reps, || {
        for (x, w) in inputs.iter().zip(&weights) {
            fwd_bwd(x, &|x| x.matmul(w.clone()));
        }
    });
    table.push((
        "frozen base GEMMs (fwd + input grad)",
        base * LAYERS as f64,
        None,
    ));

    // Base + LoRA linears of one layer: x·W + s·(x·A)·B on every projection, W frozen, A and B
    // trained (forward, input gradient and factor gradients).
    let factors: Vec<(Tensor<2>, Tensor<2>)> = shapes
        .iter()
        .map(|&(i, o)| {
            (
                rand([i, RANK], &dev).require_grad(),
                rand([RANK, o], &dev).require_grad(),
            )
        })
        .collect();
    let lora_layer = |fused: bool| {
        timed(reps, || {
            for ((x, w), (a, b)) in inputs.iter().zip(&weights).zip(&factors) {
                let x = x.clone().require_grad();
                let y = if fused {
                    lora_linear::lora_linear(x.clone(), w.clone(), None, a.clone(), b.clone(), 2.0)
                } else {
                    lora_linear::reference(
                        x.clone(),
                        x.clone(),
                        w.clone(),
                        None,
                        a.clone(),
                        b.clone(),
                        2.0,
                    )
                };
                let g = y.sum().backward();
                std::hint::black_box((x.grad(&g), a.grad(&g), b.grad(&g)));
            }
        })
    };
    let (fused, plain) = (lora_layer(true), lora_layer(false));
    table.push((
        "LoRA A/B side path, scale, grads (LoRA linears minus the base GEMMs)",
        (fused - base).max(0.0) * LAYERS as f64,
        Some((plain - base).max(0.0) * LAYERS as f64),
    ));

    // Attention of one layer, causal, no padding.
    let q = rand([B, HEADS, S, HEAD_DIM], &dev);
    let k = rand([B, KV_HEADS, S, HEAD_DIM], &dev).require_grad();
    let v = rand([B, KV_HEADS, S, HEAD_DIM], &dev).require_grad();
    let mask = AttnMask {
        key_valid: None,
        causal_offset: Some(0),
    };
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let fused = timed(reps, || {
        fwd_bwd(&q, &|q| attention(q, k.clone(), v.clone(), &mask, scale))
    });
    let plain = timed(reps, || {
        fwd_bwd(&q, &|q| {
            attention_reference(q, k.clone(), v.clone(), &mask, scale)
        })
    });
    table.push((
        "attention fwd + bwd",
        fused * LAYERS as f64,
        Some(plain * LAYERS as f64),
    ));

    // lm_head (tied, frozen) + cross-entropy over every token.
    let embed = rand([VOCAB, HIDDEN], &dev);
    let hidden = rand([rows, HIDDEN], &dev);
    let targets: Vec<i64> = (0..rows).map(|i| ((i * 7919) % VOCAB) as i64).collect();
    let fused = timed(reps, || {
        fwd_bwd(&hidden, &|h| {
            linear_cross_entropy(h, embed.clone(), HeadLayout::VocabMajor, &targets)
        })
    });
    let plain = timed(reps, || {
        fwd_bwd(&hidden, &|h| {
            linear_cross_entropy_reference(h, embed.clone(), HeadLayout::VocabMajor, &targets)
        })
    });
    table.push(("lm_head GEMM + cross-entropy", fused, Some(plain)));

    // SiLU(gate) · up of one layer.
    let gate = rand([B, S, INTER], &dev);
    let up = rand([B, S, INTER], &dev).require_grad();
    let fused = timed(reps, || fwd_bwd(&gate, &|g| swiglu::swiglu(g, up.clone())));
    let plain = timed(reps, || {
        fwd_bwd(&gate, &|g| swiglu::reference(g, up.clone()))
    });
    table.push((
        "SiLU × up",
        fused * LAYERS as f64,
        Some(plain * LAYERS as f64),
    ));

    // The two RMSNorms of one layer (frozen weight).
    let x = rand([B, S, HIDDEN], &dev);
    let w = rand([HIDDEN], &dev);
    let fused = timed(reps, || {
        for _ in 0..2 {
            fwd_bwd(&x, &|x| rms_norm::rms_norm(x, w.clone(), 1e-5));
        }
    });
    let plain = timed(reps, || {
        for _ in 0..2 {
            fwd_bwd(&x, &|x| rms_norm::reference(x, w.clone(), 1e-5));
        }
    });
    table.push((
        "RMSNorm",
        fused * LAYERS as f64,
        Some(plain * LAYERS as f64),
    ));

    // Rotary embedding of q and k of one layer.
    let cos = rand([B, 1, S, HEAD_DIM], &dev);
    let sin = rand([B, 1, S, HEAD_DIM], &dev);
    let kx = rand([B, KV_HEADS, S, HEAD_DIM], &dev);
    let rotate = |f: fn(Tensor<4>, &Tensor<4>, &Tensor<4>) -> Tensor<4>| {
        timed(reps, || {
            fwd_bwd(&q, &|x| f(x, &cos, &sin));
            fwd_bwd(&kx, &|x| f(x, &cos, &sin));
        })
    };
    let (fused, plain) = (rotate(rope::rope), rotate(rope::reference));
    table.push(("rope", fused * LAYERS as f64, Some(plain * LAYERS as f64)));

    println!("| family (ms per step) | ours | plain burn composition |\n|---|---|---|");
    let mut out = serde_json::Map::new();
    for (name, ours, plain) in &table {
        let p = plain.map_or("—".to_string(), |p| format!("{:.0}", p * 1e3));
        println!("| {name} | {:.0} | {p} |", ours * 1e3);
        out.insert(
            name.to_string(),
            json!({"ours_ms": ours * 1e3, "composition_ms": plain.map(|p| p * 1e3)}),
        );
    }
    out.insert("threads".into(), json!(threads));
    let path = arg("--out").unwrap_or_else(|| "bench-out/ops.json".into());
    if let Some(parent) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

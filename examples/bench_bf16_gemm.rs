//! The bf16-compute frozen linear (`kernels::bf16_gemm`, `--compute-dtype bf16`) against the widen
//! path it replaces (`kernels::narrow_linear`: the bf16 weight cast to f32, then burn-flex's f32
//! gemm) and an f32 weight's plain matmul, on SmolLM2-135M's projection shapes at batch 4 × 256
//! (x [1024, in]): forward `x·W` and the backward's input-gradient product `dy·Wᵀ` (W read
//! through its transposed view, as the op's backward does). Best of `REPS` (default 5), in ms and
//! GFLOP/s (2·rows·in·out per product). Relative numbers only; give `uptime` with them.
//!
//!     cargo run --example bench_bf16_gemm

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Tensor};
use peft::kernels::bf16_gemm::{bf16_linear, supported};
use peft::kernels::lora_linear::lora_linear_in;
use peft::kernels::narrow_linear::narrow_linear;
use peft::models::linear::ComputeDtype;

fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if !supported() {
        println!("this CPU has no avx512bf16: nothing to compare");
        return;
    }
    let rows = 1024;
    let device = Device::flex();
    println!(
        "threads {}; rows {rows}; best of {reps}",
        rayon::current_num_threads()
    );
    println!(
        "| product | shape | f32 weight ms | widen ms (GFLOP/s) | bf16 ms (GFLOP/s) | speed-up |"
    );
    println!("|---|---|---|---|---|---|");
    let mut totals = [0f64; 3];
    // q/o, k/v, gate/up, down: [in, out] in burn orientation.
    for (inp, out) in [(576usize, 576usize), (576, 192), (576, 1536), (1536, 576)] {
        let w32 = Tensor::<2>::random([inp, out], Distribution::Normal(0.0, 0.02), &device);
        let w16 = w32.clone().cast(DType::BF16);
        for backward in [false, true] {
            let (k, n) = if backward { (out, inp) } else { (inp, out) };
            let x = Tensor::<2>::random([rows, k], Distribution::Uniform(-1.0, 1.0), &device);
            let (wf, wb) = if backward {
                (w32.clone().transpose(), w16.clone().transpose())
            } else {
                (w32.clone(), w16.clone())
            };
            let f32_ms = best_ms(reps, || {
                let _ = x.clone().matmul(wf.clone()).into_data();
            });
            let widen_ms = best_ms(reps, || {
                let y = narrow_linear(&x, &wb).expect("a bf16 weight takes the widen op");
                let _ = y.into_data();
            });
            let bf16_ms = best_ms(reps, || {
                let y = bf16_linear(&x, &wb).expect("a bf16 weight takes the bf16 op");
                let _ = y.into_data();
            });
            let gflop = 2.0 * (rows * k * n) as f64 / 1e9;
            let name = if backward { "dy·Wᵀ" } else { "x·W" };
            println!(
                "| {name} | [{rows},{k}]·[{k},{n}] | {f32_ms:.2} | {widen_ms:.2} ({:.0}) | {bf16_ms:.2} ({:.0}) | {:.2}× |",
                gflop / widen_ms * 1e3,
                gflop / bf16_ms * 1e3,
                widen_ms / bf16_ms
            );
            totals[0] += f32_ms;
            totals[1] += widen_ms;
            totals[2] += bf16_ms;
        }
    }
    println!(
        "| all eight | | {:.2} | {:.2} | {:.2} | {:.2}× |",
        totals[0],
        totals[1],
        totals[2],
        totals[1] / totals[2]
    );
    // The fused LoRA linear (r 8) under autodiff, forward + backward, bf16 weight: the product
    // training runs, in f32 compute (widened) and bf16 compute.
    let grad = device.clone().autodiff();
    println!();
    println!("| LoRA r8 linear, fwd + bwd | shape | f32 compute ms | bf16 compute ms | speed-up |");
    println!("|---|---|---|---|---|");
    for (inp, out) in [(576usize, 576usize), (576, 192), (576, 1536), (1536, 576)] {
        let w = Tensor::<2>::random([inp, out], Distribution::Normal(0.0, 0.02), &grad)
            .cast(DType::BF16);
        let a = Tensor::<2>::random([inp, 8], Distribution::Normal(0.0, 0.02), &grad);
        let b = Tensor::<2>::random([8, out], Distribution::Normal(0.0, 0.02), &grad);
        let x = Tensor::<2>::random([rows, inp], Distribution::Uniform(-1.0, 1.0), &grad);
        let time = |compute| {
            best_ms(reps, || {
                let (x, a, b) = (
                    x.clone().require_grad(),
                    a.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let y = lora_linear_in(
                    x.clone(),
                    None,
                    w.clone(),
                    None,
                    a.clone(),
                    b.clone(),
                    2.0,
                    compute,
                );
                let g = y.sum().backward();
                let _ = x.grad(&g).map(|t| t.into_data());
            })
        };
        let (f, h) = (time(ComputeDtype::F32), time(ComputeDtype::Bf16));
        println!(
            "| | [{rows},{inp}]·[{inp},{out}] | {f:.2} | {h:.2} | {:.2}× |",
            f / h
        );
    }
}

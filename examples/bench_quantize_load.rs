//! How long `--quantize-base` takes to quantize weights at load: µs per 1M values on one thread
//! for each quantizer (int4's searched Q4_0 scale in SIMD lanes and its scalar reference, nf4,
//! int8 = Q8_0 in `quant::q8_0` and the serial `gguf::quantize` it replaced at load), then one Llama-2-7B MLP weight (4096 × 11008) on rayon's whole pool, and the
//! estimate for the 7B model's 6.61B quantized values (32 layers of q/k/v/o 4096² and
//! gate/up/down 4096 × 11008, plus the untied 32000 × 4096 `lm_head`). Best of `REPS` (default 3).
//! Relative numbers only on a loaded machine; give `uptime` with them.
//!
//!     cargo run --example bench_quantize_load

use std::time::Instant;

use peft::quant::{nf4, search, BaseQuant, QMatrix};

/// Values `--quantize-base` quantizes in the Llama-2-7B shape.
const LLAMA2_7B_VALUES: f64 =
    32.0 * (4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0) + 32000.0 * 4096.0;

fn best_s(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Deterministic weight-like values: roughly Gaussian, std 0.02, an outlier every 97.
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| {
            let g = (0..4).map(|_| uniform()).sum::<f32>() - 2.0;
            g * if i % 97 == 0 { 0.12 } else { 0.02 }
        })
        .collect()
}

type Quantizer = (&'static str, fn(&[f32]));

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let quantizers: [Quantizer; 5] = [
        ("int4 (searched Q4_0, lanes)", |v| {
            std::hint::black_box(search::quantize_q4_0_search(v));
        }),
        ("int4 (searched Q4_0, scalar reference)", |v| {
            std::hint::black_box(search::quantize_q4_0_search_reference(v));
        }),
        ("nf4", |v| {
            std::hint::black_box(nf4::quantize_nf4(v));
        }),
        ("int8 (Q8_0, quant::q8_0)", |v| {
            std::hint::black_box(peft::quant::q8_0::quantize_q8_0(v));
        }),
        ("int8 (Q8_0, gguf::quantize, as before)", |v| {
            std::hint::black_box(peft::gguf::quantize::quantize_q8_0(v));
        }),
    ];

    let million = weights(1 << 20);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    println!("one thread, µs per 1M values (best of {reps}):");
    for (name, f) in &quantizers {
        let s = one.install(|| best_s(reps, || f(&million)));
        let per_m = s * 1e6 / million.len() as f64 * 1e6;
        println!(
            "  {name:<40} {per_m:>9.0} µs   (7B on one thread: {:.1} s)",
            per_m * LLAMA2_7B_VALUES / 1e12
        );
    }

    let (rows, cols) = (11008, 4096);
    let mlp = weights(rows * cols);
    let threads = rayon::current_num_threads();
    println!("one {rows} × {cols} weight, {threads} threads (QMatrix::quantize):");
    for scheme in [BaseQuant::Int4, BaseQuant::Nf4, BaseQuant::Int8] {
        let s = best_s(reps, || {
            std::hint::black_box(QMatrix::quantize(scheme, &mlp, rows, cols));
        });
        println!(
            "  {:<6} {:>8.3} s   (7B estimate: {:.1} s)",
            scheme.name(),
            s,
            s * LLAMA2_7B_VALUES / mlp.len() as f64
        );
    }
    let before: [Quantizer; 2] = [quantizers[1], quantizers[4]];
    for (name, f) in before {
        let s = best_s(1, || f(&mlp));
        println!(
            "  {name:<40} {s:>8.3} s   (7B estimate: {:.1} s)",
            s * LLAMA2_7B_VALUES / mlp.len() as f64
        );
    }
    Ok(())
}

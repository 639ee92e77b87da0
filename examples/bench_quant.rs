//! A quantized frozen linear three ways on SmolLM2-135M's MLP shape (x [1024, 576] · W [576, 1536],
//! batch 4 × 256; and one decoding row): an f32 weight with burn's matmul (the baseline), our
//! dequantize-in-the-GEMM kernel (`kernels::quant_linear`, int8 = Q8_0, int4 = Q4_0, nf4), and
//! burn's own quantization (`Tensor::quantize_dynamic` with a `QuantScheme` of 32-value blocks,
//! then `matmul`, which burn-backend 0.22.1's default `q_matmul` computes by dequantizing the
//! whole weight and calling the float matmul; flex does not override it). Forward, and forward +
//! input-gradient backward under autodiff; best of `REPS` (default 5), in ms, and the bytes each
//! weight holds. Relative numbers only; give `uptime` with them.
//!
//!     cargo run --example bench_quant

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{Device, Distribution, Tensor};
use peft::kernels::quant_linear::quant_linear;
use peft::quant::{BaseQuant, QMatrix, QuantWeight};

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
    let (inp, out) = (576, 1536);
    let plain = Device::flex();
    let grad = plain.clone().autodiff();
    let w = Tensor::<2>::random([inp, out], Distribution::Normal(0.0, 0.02), &plain);
    let values = peft::models::tensor_util::to_vec(w.clone().transpose());
    println!("op, rows, forward_ms, forward_backward_ms, weight_bytes");
    for rows in [1024usize, 1] {
        let x = Tensor::<2>::random([rows, inp], Distribution::Uniform(-1.0, 1.0), &plain);
        let xg = Tensor::<2>::from_data(x.clone().into_data(), &grad);
        // f32 baseline.
        let wg = Tensor::<2>::from_data(w.clone().into_data(), &grad);
        let fwd = best_ms(reps, || {
            let _ = x.clone().matmul(w.clone()).into_data();
        });
        let bwd = best_ms(reps, || {
            let x = xg.clone().require_grad();
            let g = x.clone().matmul(wg.clone()).sum().backward();
            let _ = x.grad(&g).map(|t| t.into_data());
        });
        println!("f32 matmul, {rows}, {fwd:.2}, {bwd:.2}, {}", inp * out * 4);
        for scheme in [BaseQuant::Int8, BaseQuant::Int4, BaseQuant::Nf4] {
            let Some(q) = QMatrix::quantize(scheme, &values, out, inp) else {
                continue;
            };
            let bytes = q.bytes();
            let q = QuantWeight(Arc::new(q));
            let fwd = best_ms(reps, || {
                let _ = quant_linear(x.clone(), &q).into_data();
            });
            let bwd = best_ms(reps, || {
                let x = xg.clone().require_grad();
                let g = quant_linear(x.clone(), &q).sum().backward();
                let _ = x.grad(&g).map(|t| t.into_data());
            });
            println!(
                "ours {}, {rows}, {fwd:.2}, {bwd:.2}, {bytes}",
                scheme.name()
            );
        }
        for (name, value, store) in [
            ("Q8S", QuantValue::Q8S, QuantStore::Native),
            ("Q4S", QuantValue::Q4S, QuantStore::PackedU32(0)),
        ] {
            let scheme = QuantScheme::default()
                .with_value(value)
                .with_store(store)
                .per_block([1, 32], ScaleDtype::F16);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let wq = w.clone().quantize_dynamic(&scheme);
                let fwd = best_ms(reps, || {
                    let _ = x.clone().matmul(wq.clone()).into_data();
                });
                let wqg = wg_quantized(&w, &scheme, &grad);
                let bwd = best_ms(reps, || {
                    let x = xg.clone().require_grad();
                    let g = x.clone().matmul(wqg.clone()).sum().backward();
                    let _ = x.grad(&g).map(|t| t.into_data());
                });
                (fwd, bwd)
            }));
            match run {
                Ok((fwd, bwd)) => println!("burn {name} block 32, {rows}, {fwd:.2}, {bwd:.2}, -"),
                Err(_) => println!("burn {name} block 32, {rows}, panicked, -, -"),
            }
        }
    }
}

fn wg_quantized(w: &Tensor<2>, scheme: &QuantScheme, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(w.clone().into_data(), device).quantize_dynamic(scheme)
}

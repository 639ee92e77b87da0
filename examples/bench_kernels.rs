//! The fused element-wise kernels against their reference compositions, forward + backward, on
//! SmolLM2-135M's training shapes (batch 4 × 256, hidden 576, intermediate 1536, 9 query / 3 key
//! heads of 64), in one process: best of `REPS` (default 5) per op, in ms, with both results'
//! largest difference. Each measurement includes the same harness (`(y · probe).sum()`, its
//! backward, reading the gradient back); `harness` is that cost with an identity op, to subtract.
//! Relative numbers only; give `uptime` with them.
//!
//!     cargo run --example bench_kernels

use std::time::Instant;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use peft::kernels::{lora_linear, rms_norm, rope, swiglu};
use peft::models::rope::{Rope, RopeScaling};

/// Best of `reps` runs of each, the two alternating (so both see the same allocator and cache
/// state: which op ran just before changes a time by several times here).
fn best_ms(reps: usize, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    let time = |h: &mut dyn FnMut()| {
        let t = Instant::now();
        h();
        t.elapsed().as_secs_f64() * 1e3
    };
    f();
    g();
    let (mut bf, mut bg) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        bf = bf.min(time(&mut f));
        bg = bg.min(time(&mut g));
    }
    (bf, bg)
}

fn report(
    name: &str,
    reps: usize,
    mut fused: impl FnMut() -> Tensor<2>,
    mut reference: impl FnMut() -> Tensor<2>,
) {
    // ONLY=<part of a name>: just those ops (for a profiler).
    if std::env::var("ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let diff = (fused() - reference()).abs().max().into_scalar::<f32>();
    let (f, r) = best_ms(
        reps,
        || {
            std::hint::black_box(fused().into_data());
        },
        || {
            std::hint::black_box(reference().into_data());
        },
    );
    println!(
        "{name:<34} fused {f:>7.1} ms | reference {r:>7.1} ms | {:>4.2}x | max |grad diff| {diff:.2e}",
        r / f
    );
}

fn main() {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dev = Device::flex().autodiff();
    let (b, s, hid, inter, h, kvh, d) = (4, 256, 576, 1536, 9, 3, 64);
    let n = Distribution::Normal(0.0, 1.0);
    println!(
        "threads: {}, AVX2 lanes: {}",
        rayon::current_num_threads(),
        peft::kernels::simd::avx2()
    );

    // The harness alone, on the largest activation ([4, 256, 1536]).
    let xh = Tensor::<3>::random([b, s, inter], n, &dev).require_grad();
    let probe = Tensor::<3>::random([b, s, inter], n, &dev);
    let run = || {
        let g = (xh.clone() * probe.clone()).sum().backward();
        xh.grad(&g).unwrap().reshape([b * s, inter])
    };
    report("harness [4,256,1536] (identity)", reps, run, run);

    // SwiGLU: gate, up [4, 256, 1536], both tracked; returns d gate (flattened to 2-D).
    let gate = Tensor::<3>::random([b, s, inter], n, &dev).require_grad();
    let up = Tensor::<3>::random([b, s, inter], n, &dev).require_grad();
    let probe = Tensor::<3>::random([b, s, inter], n, &dev);
    let run = |f: fn(Tensor<3>, Tensor<3>) -> Tensor<3>| {
        let g = (f(gate.clone(), up.clone()) * probe.clone())
            .sum()
            .backward();
        let _ = up.grad(&g);
        gate.grad(&g).unwrap().reshape([b * s, inter])
    };
    report(
        "swiglu [4,256,1536] fwd+bwd",
        reps,
        || run(swiglu::swiglu),
        || run(swiglu::reference),
    );

    // RMSNorm: x [4, 256, 576] tracked, weight frozen (LoRA); returns dx.
    let x = Tensor::<3>::random([b, s, hid], n, &dev).require_grad();
    let w = Param::from_tensor(Tensor::<1>::random(
        [hid],
        Distribution::Uniform(0.5, 1.5),
        &dev,
    ))
    .set_require_grad(false);
    let probe = Tensor::<3>::random([b, s, hid], n, &dev);
    let run = |f: fn(Tensor<3>, Tensor<1>, f64) -> Tensor<3>| {
        let g = (f(x.clone(), w.val(), 1e-5) * probe.clone())
            .sum()
            .backward();
        x.grad(&g).unwrap().reshape([b * s, hid])
    };
    report(
        "rms_norm [4,256,576] fwd+bwd",
        reps,
        || run(rms_norm::rms_norm),
        || run(rms_norm::reference),
    );

    // Forward only, without autodiff (inference).
    let flex = Device::flex();
    let x = Tensor::<3>::random([b, s, hid], n, &flex);
    let w = Tensor::<1>::random([hid], Distribution::Uniform(0.5, 1.5), &flex);
    report(
        "rms_norm [4,256,576] fwd, no autodiff",
        reps,
        || rms_norm::rms_norm(x.clone(), w.clone(), 1e-5).reshape([b * s, hid]),
        || rms_norm::reference(x.clone(), w.clone(), 1e-5).reshape([b * s, hid]),
    );
    let (g, u) = (
        Tensor::<3>::random([b, s, inter], n, &flex),
        Tensor::<3>::random([b, s, inter], n, &flex),
    );
    report(
        "swiglu [4,256,1536] fwd, no autodiff",
        reps,
        || swiglu::swiglu(g.clone(), u.clone()).reshape([b * s, inter]),
        || swiglu::reference(g.clone(), u.clone()).reshape([b * s, inter]),
    );

    // Rope on q [4, 9, 256, 64] and k [4, 3, 256, 64] (the projection's swap_dims view).
    let positions: Vec<usize> = (0..b * s).map(|i| i % s).collect();
    let (cos, sin) = Rope::new(d, 100000.0, &RopeScaling::None).cos_sin(&positions, b, s, &dev);
    let q = Tensor::<3>::random([b, s, h * d], n, &dev).require_grad();
    let k = Tensor::<3>::random([b, s, kvh * d], n, &dev).require_grad();
    let (pq, pk) = (
        Tensor::<4>::random([b, h, s, d], n, &dev),
        Tensor::<4>::random([b, kvh, s, d], n, &dev),
    );
    let run = |f: fn(Tensor<4>, &Tensor<4>, &Tensor<4>) -> Tensor<4>| {
        let heads = |t: &Tensor<3>, nh| t.clone().reshape([b, s, nh, d]).swap_dims(1, 2);
        let yq = f(heads(&q, h), &cos, &sin) * pq.clone();
        let yk = f(heads(&k, kvh), &cos, &sin) * pk.clone();
        let g = (yq.sum() + yk.sum()).backward();
        let _ = k.grad(&g);
        q.grad(&g).unwrap().reshape([b * s, h * d])
    };
    report(
        "rope q+k [4,9|3,256,64] fwd+bwd",
        reps,
        || run(rope::rope),
        || run(rope::reference),
    );

    // LoRA r8 linear, q_proj-like and gate_proj-like: x tracked, W frozen, A and B trained.
    for (name, out) in [
        ("lora_linear 576->576 r8 fwd+bwd", hid),
        ("lora_linear 576->1536 r8 fwd+bwd", inter),
    ] {
        let x = Tensor::<3>::random([b, s, hid], n, &dev).require_grad();
        let w = Param::from_tensor(Tensor::<2>::random(
            [hid, out],
            Distribution::Uniform(-0.04, 0.04),
            &dev,
        ))
        .set_require_grad(false);
        let a =
            Tensor::<2>::random([hid, 8], Distribution::Uniform(-0.04, 0.04), &dev).require_grad();
        let bb =
            Tensor::<2>::random([8, out], Distribution::Uniform(-0.04, 0.04), &dev).require_grad();
        let probe = Tensor::<3>::random([b, s, out], n, &dev);
        let run = |fused: bool| {
            let y = if fused {
                lora_linear::lora_linear(x.clone(), w.val(), None, a.clone(), bb.clone(), 2.0)
            } else {
                lora_linear::reference(
                    x.clone(),
                    x.clone(),
                    w.val(),
                    None,
                    a.clone(),
                    bb.clone(),
                    2.0,
                )
            };
            let g = (y * probe.clone()).sum().backward();
            let _ = (a.grad(&g), bb.grad(&g));
            x.grad(&g).unwrap().reshape([b * s, hid])
        };
        report(name, reps, || run(true), || run(false));

        // The same with a dropout (p = 0.05) on the low-rank input, as adapters/lora.json.
        let dropout = burn::nn::DropoutConfig::new(0.05).init();
        let run = |fused: bool| {
            let x_low = dropout.forward(x.clone());
            let y = if fused {
                lora_linear::lora_linear_dropout(
                    x.clone(),
                    x_low,
                    w.val(),
                    None,
                    a.clone(),
                    bb.clone(),
                    2.0,
                )
            } else {
                lora_linear::reference(x.clone(), x_low, w.val(), None, a.clone(), bb.clone(), 2.0)
            };
            let g = (y * probe.clone()).sum().backward();
            let _ = (a.grad(&g), bb.grad(&g));
            // The masks differ between the two runs: report the base part's gradient shape only.
            x.grad(&g).unwrap().reshape([b * s, hid]).mul_scalar(0.0)
        };
        report(
            &format!("{name}, dropout 0.05"),
            reps,
            || run(true),
            || run(false),
        );
    }
}

//! `LlamaForCausalLm`'s forward (no prompt encoder) written out op by op, with a wall-clock
//! timer around each op: where a prefill or a decoding step spends its time. flex runs every op
//! eagerly, so an op's time is its own. The result is checked against `forward_last`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{ensure, Result};
use burn::tensor::Tensor;
use peft::kernels::attention::attention;
use peft::models::llama::LlamaForCausalLm;
use peft::models::rope::apply_rotary;
use peft::models::tensor_util::{ids_tensor, to_vec};
use peft::models::{Inputs, KvCache};

/// CPU seconds of every thread of this process (CLOCK_PROCESS_CPUTIME_ID): what an op costs on a
/// machine shared with other jobs, where its wall time mostly measures the others.
pub fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; the clock id is a constant Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Per op: (wall seconds, CPU seconds, calls).
#[derive(Default)]
struct Timers(BTreeMap<&'static str, (f64, f64, usize)>);

impl Timers {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let (t, c) = (Instant::now(), cpu_now());
        let out = f();
        self.add(name, t, c);
        out
    }

    fn add(&mut self, name: &'static str, since: Instant, cpu: f64) {
        let e = self.0.entry(name).or_default();
        e.0 += since.elapsed().as_secs_f64();
        e.1 += cpu_now() - cpu;
        e.2 += 1;
    }
}

fn forward_last(
    m: &LlamaForCausalLm,
    inputs: &Inputs,
    mut cache: Option<&mut KvCache>,
    tm: &mut Timers,
) -> Tensor<2> {
    let c = &m.config;
    let device = m.model.embed_tokens.weight.device();
    let past = cache.as_ref().map_or(0, |c| c.len());
    let (b, s) = (inputs.batch, inputs.seq);
    let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let (cos, sin, mask) = tm.time("rope tables + mask", || {
        let (cos, sin) = m.rope.cos_sin(&inputs.positions(past), b, s, &device);
        (cos, sin, inputs.attn_mask(past, 0))
    });
    let mut x = tm.time("embedding", || {
        m.model
            .embed_tokens
            .forward(ids_tensor(&inputs.ids, b, s, &device))
    });
    for (i, layer) in m.model.layers.iter().enumerate() {
        let a = &layer.self_attn;
        let n = tm.time("rmsnorm", || layer.input_layernorm.forward(x.clone()));
        let q = tm.time("linear q", || a.q_proj.forward(n.clone()));
        let k = tm.time("linear k", || a.k_proj.forward(n.clone()));
        let v = tm.time("linear v", || a.v_proj.forward(n));
        let q = q.reshape([b, s, h, d]).swap_dims(1, 2);
        let k = k.reshape([b, s, kvh, d]).swap_dims(1, 2);
        let v = v.reshape([b, s, kvh, d]).swap_dims(1, 2);
        let q = tm.time("rope", || apply_rotary(q, &cos, &sin));
        let k = tm.time("rope", || apply_rotary(k, &cos, &sin));
        let (k, v) = match cache.as_deref_mut() {
            Some(cache) => tm.time("kv cache append", || cache.append(i, k, v)),
            None => (k, v),
        };
        let o = tm.time("attention", || {
            attention(q, k, v, &mask, 1.0 / (d as f64).sqrt())
        });
        let o = tm.time("attention out reshape", || {
            o.swap_dims(1, 2).reshape([b, s, h * d])
        });
        let o = tm.time("linear o", || a.o_proj.forward(o));
        let hres = tm.time("residual add", || x.clone() + o);
        let n = tm.time("rmsnorm", || {
            layer.post_attention_layernorm.forward(hres.clone())
        });
        let f = &layer.mlp;
        let g = tm.time("linear gate", || f.gate_proj.forward(n.clone()));
        let u = tm.time("linear up", || f.up_proj.forward(n));
        let gu = tm.time("swiglu", || peft::kernels::swiglu::swiglu(g, u));
        let dn = tm.time("linear down", || f.down_proj.forward(gu));
        x = tm.time("residual add", || hres + dn);
    }
    if let Some(cache) = cache {
        cache.advance(s);
    }
    let hidden = m.model.embed_tokens.weight.dims()[1];
    let last = tm.time("final slice + norm", || {
        m.model.norm.forward(x.slice([0..b, s - 1..s, 0..hidden]))
    });
    let logits = tm.time("lm_head", || m.logits(last));
    logits.squeeze_dim::<2>(1)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in v.iter().enumerate() {
        if l > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn profile(m: &LlamaForCausalLm, mode: &str, n: usize, repeats: usize) -> Result<()> {
    let mut tm = Timers::default();
    let total = Instant::now();
    let mut tokens = 0;
    for rep in 0..=repeats {
        if rep == 1 {
            // The first repeat warms up (allocator, pools): not counted.
            tm = Timers::default();
        }
        match mode {
            "prefill" => {
                let ids: Vec<i64> = (0..n * 256).map(|i| (i % 1000) as i64 + 10).collect();
                let inputs = Inputs::new(ids, n, 256);
                let (t, c) = (Instant::now(), cpu_now());
                let got = to_vec(forward_last(m, &inputs, None, &mut tm));
                tm.add("to host", t, c);
                if rep == 0 {
                    let want = to_vec(m.forward(&inputs, None, None).slice([0..n, 255..256]));
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    ensure!(diff < 1e-3, "op-by-op forward differs by {diff}");
                }
                tokens += n * 256;
            }
            _ => {
                let mut cache = KvCache::new(m.config.num_hidden_layers);
                let mut step: Vec<i64> = (0..16).map(|i| 100 + i).collect();
                for t in 0..n {
                    let inputs = Inputs::new(step.clone(), 1, step.len());
                    let (t0, c0) = (Instant::now(), cpu_now());
                    // On a pool thread, as `generate` runs each step.
                    let logits = rayon::scope(|_| {
                        to_vec(forward_last(m, &inputs, Some(&mut cache), &mut tm))
                    });
                    tm.add("to host", t0, c0);
                    let next = tm.time("argmax", || argmax(&logits));
                    step = vec![next as i64];
                    if t == 0 {
                        // The prefill of the prompt: not a decoding step.
                        tm.0.clear();
                    }
                }
                tokens += n - 1;
            }
        }
        if rep == 0 {
            tokens = 0;
        }
    }
    let _ = total;
    // "to host" wraps the whole forward: the op times are inside it.
    let get = |k: &str| tm.0.get(k).copied().unwrap_or_default();
    let (all_wall, all_cpu) = (
        get("to host").0 + get("argmax").0,
        get("to host").1 + get("argmax").1,
    );
    let per = |s: f64| 1e3 * s / tokens as f64;
    println!(
        "{mode} {n}: {tokens} tokens timed, {:.2} ms wall, {:.2} ms CPU per token ({:.2} cores)",
        per(all_wall),
        per(all_cpu),
        all_cpu / all_wall
    );
    let mut rows: Vec<_> = tm.0.iter().filter(|(k, _)| **k != "to host").collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let (mut ops_wall, mut ops_cpu) = (0.0, 0.0);
    println!(
        "  {:24} {:>9} {:>9} {:>6} {:>6}",
        "op", "wall ms", "CPU ms", "CPU %", "cores"
    );
    for (name, (wall, cpu, calls)) in rows {
        ops_wall += wall;
        ops_cpu += cpu;
        println!(
            "  {name:24} {:9.3} {:9.3} {:5.1}% {:6.2}  ({calls} calls)",
            per(*wall),
            per(*cpu),
            100.0 * cpu / all_cpu,
            cpu / wall
        );
    }
    println!(
        "  {:24} {:9.3} {:9.3} {:5.1}%",
        "(untimed glue)",
        per(all_wall - ops_wall),
        per(all_cpu - ops_cpu),
        100.0 * (all_cpu - ops_cpu) / all_cpu
    );
    Ok(())
}

/// A/B of the linear paths on prefill shapes, interleaved: burn's linear on the 3-D input (a
/// batched matmul) against one 2-D matmul on the flattened rows.
pub fn linear_ab(batch: usize, repeats: usize) -> Result<()> {
    use burn::tensor::{Device, Distribution};
    let device = Device::flex();
    for (k, n) in [(576, 1536), (1536, 576), (576, 576), (576, 192)] {
        let x = Tensor::<3>::random([batch, 256, k], Distribution::Uniform(-1.0, 1.0), &device);
        let w = Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &device);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let t = cpu_now();
            let y = burn::tensor::module::linear(x.clone(), w.clone(), None);
            a.push(cpu_now() - t);
            drop(y);
            let t = cpu_now();
            let y = x
                .clone()
                .reshape([batch * 256, k])
                .matmul(w.clone())
                .reshape([batch, 256, n]);
            b.push(cpu_now() - t);
            drop(y);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let flops = 2.0 * (batch * 256 * k * n) as f64;
        println!(
            "[{batch}, 256, {k}] x [{k}, {n}], CPU time: 3-D linear {:.2} ms ({:.0} GFLOP/cpu-s), 2-D matmul {:.2} ms ({:.0} GFLOP/cpu-s) (medians)",
            1e3 * a[repeats / 2],
            flops / a[repeats / 2] / 1e9,
            1e3 * b[repeats / 2],
            flops / b[repeats / 2] / 1e9
        );
    }
    Ok(())
}

/// The cost of one rayon parallel region entered from the main thread (a handoff to the pool
/// and back) against the same region entered from inside the pool.
pub fn handoff(repeats: usize) -> Result<()> {
    use rayon::prelude::*;
    let mut buf = vec![0f32; 576];
    let region = |buf: &mut [f32]| {
        buf.par_chunks_mut(288).for_each(|c| c[0] += 1.0);
    };
    let (t, c) = (Instant::now(), cpu_now());
    for _ in 0..repeats {
        region(&mut buf);
    }
    let (outside, outside_cpu) = (t.elapsed().as_secs_f64(), cpu_now() - c);
    let (t, c) = (Instant::now(), cpu_now());
    rayon::scope(|_| {
        for _ in 0..repeats {
            region(&mut buf);
        }
    });
    let (inside, inside_cpu) = (t.elapsed().as_secs_f64(), cpu_now() - c);
    println!(
        "two-chunk parallel region: from main {:.1} µs wall {:.1} µs CPU, inside the pool {:.2} µs wall {:.2} µs CPU",
        1e6 * outside / repeats as f64,
        1e6 * outside_cpu / repeats as f64,
        1e6 * inside / repeats as f64,
        1e6 * inside_cpu / repeats as f64
    );
    Ok(())
}

/// Bytes per CPU second of the few-row kernels on the decoding shapes: W [K, N] (column blocks)
/// against W [N, K] (row dot products), f32 and bf16, one row, inside the pool.
pub fn gemv_ab(repeats: usize) -> Result<()> {
    use burn::tensor::{DType, Device, Distribution};
    use peft::kernels::gemv::{few_rows_linear, few_rows_linear_t};
    let device = Device::flex();
    rayon::scope(|_| {
        for (k, n) in [(576, 1536), (1536, 576), (576, 576), (576, 192)] {
            let x = Tensor::<2>::random([1, k], Distribution::Uniform(-1.0, 1.0), &device);
            let w = Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &device);
            let wt = w.clone().transpose().cast(DType::F32).reshape([n, k]);
            let wt = Tensor::<2>::from_data(wt.into_data(), &device);
            for dtype in [DType::F32, DType::BF16] {
                let (w, wt) = (w.clone().cast(dtype), wt.clone().cast(dtype));
                let (mut a, mut b) = (0.0, 0.0);
                let (mut wa, mut wb) = (0.0, 0.0);
                for _ in 0..repeats {
                    let (t, c) = (Instant::now(), cpu_now());
                    std::hint::black_box(few_rows_linear(&x, &w));
                    a += cpu_now() - c;
                    wa += t.elapsed().as_secs_f64();
                    let (t, c) = (Instant::now(), cpu_now());
                    std::hint::black_box(few_rows_linear_t(&x, &wt));
                    b += cpu_now() - c;
                    wb += t.elapsed().as_secs_f64();
                }
                let bytes = (k * n * if dtype == DType::F32 { 4 } else { 2 } * repeats) as f64;
                println!(
                    "{dtype:?} [{k}, {n}]: W[K,N] blocks {:.1} GB/cpu-s ({:.1} GB/s wall), W[N,K] dots {:.1} GB/cpu-s ({:.1} GB/s wall)",
                    bytes / a / 1e9,
                    bytes / wa / 1e9,
                    bytes / b / 1e9,
                    bytes / wb / 1e9
                );
            }
        }
    });
    Ok(())
}

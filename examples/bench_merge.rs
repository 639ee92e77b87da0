//! Benchmark of `peft merge` on a synthetic ≥1.5B-parameter Llama (bf16, sharded) with a LoRA r=16
//! adapter on every linear layer; compared with a plain `cp` of the shards and, when `REF_PYTHON`
//! and `REF_MERGE` are set, with PEFT's `merge_and_unload` + `save_pretrained` (torch_merge.py).
//!
//!     cargo run --example bench_merge -- OUT_JSON
//!     REF_PYTHON=/tmp/ref/bin/python REF_MERGE=../shared/bench/torch_merge.py cargo run --example bench_merge -- OUT_JSON
//!
//! Files go to `BENCH_DIR` (default /var/tmp/peft-bench) and are deleted at the end. Values are
//! generated while writing, so the generator holds one 16 MiB buffer, never a tensor.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peft::merge::layout::{OutShard, OutTensor};
use peft::merge::{stream, FileSink, MergeOptions, MergePlan, NoProgress};
use safetensors::Dtype;
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error>>;
const LINEARS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];
// 24 layers, hidden 2048, MLP 8192, GQA 16/4 heads of 128, vocab 32000: 1.59B parameters, 3.2 GB in bf16.
const HIDDEN: usize = 2048;
const INTER: usize = 8192;
const LAYERS: usize = 24;
const KV: usize = 512;
const VOCAB: usize = 32000;
const RANK: usize = 16;

fn tensor(name: String, dtype: Dtype, shape: Vec<usize>) -> OutTensor {
    OutTensor {
        source: name.clone(),
        name,
        dtype,
        shape,
    }
}

/// `[out, in]` of each linear layer.
fn linear_shape(m: &str) -> [usize; 2] {
    match m {
        "k_proj" | "v_proj" => [KV, HIDDEN],
        "gate_proj" | "up_proj" => [INTER, HIDDEN],
        "down_proj" => [HIDDEN, INTER],
        _ => [HIDDEN, HIDDEN],
    }
}

/// Writes a shard whose values come from a xorshift generator scaled to `amp`.
fn write_random(path: &Path, shard: &OutShard, seed: &mut u64, amp: f32) -> Res<()> {
    let mut file = std::io::BufWriter::new(fs::File::create(path)?);
    file.write_all(&stream::header(shard))?;
    let mut buf = Vec::with_capacity(16 << 20);
    for t in &shard.tensors {
        let mut left = t.shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(4 << 20);
            buf.clear();
            for _ in 0..n {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let v = ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp;
                match t.dtype {
                    Dtype::BF16 => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                    _ => buf.extend_from_slice(&v.to_le_bytes()),
                }
            }
            file.write_all(&buf)?;
            left -= n;
        }
    }
    Ok(file.flush()?)
}

/// The base model (6 shards of 4 layers) and the adapter; returns the parameter count.
fn generate(dir: &Path) -> Res<u64> {
    let (base, adapter) = (dir.join("base"), dir.join("adapter"));
    fs::create_dir_all(&base)?;
    fs::create_dir_all(&adapter)?;
    let (mut shards, mut weight_map, mut lora) = (Vec::new(), serde_json::Map::new(), Vec::new());
    for s in 0..LAYERS / 4 {
        let mut ts = if s == 0 {
            vec![tensor(
                "model.embed_tokens.weight".into(),
                Dtype::BF16,
                vec![VOCAB, HIDDEN],
            )]
        } else {
            vec![]
        };
        for l in s * 4..s * 4 + 4 {
            for (part, m) in LINEARS {
                let [o, i] = linear_shape(m);
                let p = format!("model.layers.{l}.{part}.{m}");
                ts.push(tensor(format!("{p}.weight"), Dtype::BF16, vec![o, i]));
                lora.push(tensor(
                    format!("base_model.model.{p}.lora_A.weight"),
                    Dtype::F32,
                    vec![RANK, i],
                ));
                lora.push(tensor(
                    format!("base_model.model.{p}.lora_B.weight"),
                    Dtype::F32,
                    vec![o, RANK],
                ));
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                ts.push(tensor(
                    format!("model.layers.{l}.{n}.weight"),
                    Dtype::BF16,
                    vec![HIDDEN],
                ));
            }
        }
        if s == LAYERS / 4 - 1 {
            ts.push(tensor(
                "model.norm.weight".into(),
                Dtype::BF16,
                vec![HIDDEN],
            ));
            ts.push(tensor(
                "lm_head.weight".into(),
                Dtype::BF16,
                vec![VOCAB, HIDDEN],
            ));
        }
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, LAYERS / 4);
        ts.iter().for_each(|t| {
            weight_map.insert(t.name.clone(), json!(file));
        });
        shards.push(OutShard { file, tensors: ts });
    }
    let (mut seed, mut params, mut bytes) = (0x9E37_79B9_7F4A_7C15u64, 0u64, 0u64);
    for shard in &shards {
        write_random(&base.join(&shard.file), shard, &mut seed, 0.05)?;
        params += shard
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum::<u64>();
        bytes += shard.tensors.iter().map(|t| t.byte_len()).sum::<u64>();
    }
    let index = json!({"metadata": {"total_size": bytes, "total_parameters": params}, "weight_map": weight_map});
    fs::write(
        base.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    let config = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": VOCAB,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "dtype": "bfloat16", "hidden_act": "silu"});
    fs::write(
        base.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    write_random(
        &adapter.join("adapter_model.safetensors"),
        &OutShard {
            file: String::new(),
            tensors: lora,
        },
        &mut seed,
        0.02,
    )?;
    let targets: Vec<&str> = LINEARS.iter().map(|(_, m)| *m).collect();
    let acfg = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 32, "target_modules": targets, "lora_dropout": 0.0});
    fs::write(adapter.join("adapter_config.json"), acfg.to_string())?;
    Ok(params)
}

/// Peak resident set (VmHWM) of a live process, in KiB.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a command, polling its peak RSS; returns (wall s, peak MiB, stdout).
fn measure(cmd: &mut Command) -> Res<(f64, f64, String)> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        peak = peak.max(vm_hwm(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed").into());
    }
    Ok((
        wall,
        peak as f64 / 1024.0,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Child mode: the merge itself (the code behind `peft merge`), reporting its own VmHWM.
fn child_merge(dir: &Path) -> Res<()> {
    let options = MergeOptions {
        base: dir.join("base"),
        adapters: vec![dir.join("adapter")],
        out: dir.join("ours"),
        dtype: None,
        max_shard_size: None,
        force: true,
        scale: 1.0,
    };
    MergePlan::build(options)?.execute(&mut FileSink, &mut NoProgress)?;
    println!("{}", vm_hwm(std::process::id()).unwrap_or(0));
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp/peft-bench".into()),
    );
    if args.get(1).map(String::as_str) == Some("--child-merge") {
        return child_merge(&dir);
    }
    let out_json = args.get(1).ok_or("usage: bench_merge OUT_JSON")?;
    let t = Instant::now();
    let params = generate(&dir)?;
    eprintln!(
        "generated {params} parameters in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (cp_wall, cp_peak, _) = measure(
        Command::new("cp")
            .arg("-r")
            .arg(dir.join("base"))
            .arg(dir.join("copy")),
    )?;
    let (wall, polled, stdout) =
        measure(Command::new(std::env::current_exe()?).arg("--child-merge"))?;
    let peak = polled.max(stdout.trim().parse::<f64>().unwrap_or(0.0) / 1024.0);
    let mut result = json!({"params": params, "dtype": "bf16", "shards": LAYERS / 4, "lora_rank": RANK,
        "peft_merge": {"wall_s": wall, "peak_rss_mib": peak}, "cp": {"wall_s": cp_wall, "peak_rss_mib": cp_peak},
        "largest_tensor_mib": (VOCAB * HIDDEN * 2) as f64 / 1048576.0, "ratio_wall_vs_cp": wall / cp_wall});
    if let (Ok(py), Ok(script)) = (std::env::var("REF_PYTHON"), std::env::var("REF_MERGE")) {
        let (twall, tpolled, tout) = measure(
            Command::new(py)
                .arg(script)
                .arg(dir.join("base"))
                .arg(dir.join("adapter"))
                .arg(dir.join("torch")),
        )?;
        let reported: serde_json::Value =
            serde_json::from_str(tout.lines().last().unwrap_or("{}")).unwrap_or(json!({}));
        let tpeak = reported["peak_rss_mib"]
            .as_f64()
            .unwrap_or(tpolled)
            .max(tpolled);
        result["torch_merge"] =
            json!({"wall_s": twall, "inner_wall_s": reported["wall_s"], "peak_rss_mib": tpeak});
        result["ratio_wall_vs_torch"] = json!(wall / twall);
        result["ratio_peak_rss_vs_torch"] = json!(peak / tpeak);
    }
    fs::write(out_json, serde_json::to_string_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    if std::env::var("KEEP").is_err() {
        fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

//! `--base-dtype bf16|f16`: the frozen base kept in its storage dtype (issue 17, item 1). The
//! weights are stored narrow, every product computes in f32; logits against the f32 path, against
//! transformers' bf16 model, adapters on a bf16 base, training from the CLI, and load memory.

use std::path::Path;

use burn::tensor::DType;
use peft::io::Checkpoint;
use peft::models::synthetic::{peak_rss_mib, write_random_llama, SMOLLM2_135M};
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::load_adapter;
use rstest::rstest;

use crate::common::*;

fn load_as(rel: &str, dtype: DType) -> CausalLm {
    ModelDir::open(&fixture(rel))
        .unwrap()
        .load_with_base_dtype(&device(), dtype)
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn a_bf16_base_stores_linear_and_embedding_weights_in_bf16_and_norms_in_f32() {
    let mut model = load_as("llama-tiny", DType::BF16);
    for (name, linear) in model.linears_mut() {
        assert_eq!(linear.weight.val().dtype(), DType::BF16, "{name}");
    }
    let CausalLm::Llama(m) = &model else {
        panic!("llama-tiny is a Llama")
    };
    assert_eq!(m.model.embed_tokens.weight.val().dtype(), DType::BF16);
    assert_eq!(m.model.norm.weight.val().dtype(), DType::F32);
    assert_eq!(
        m.model.layers[0].input_layernorm.weight.val().dtype(),
        DType::F32
    );
}

/// The bf16 checkpoint's reference logits were computed in f32 from its bf16 weights: a bf16
/// base holding exactly those values and computing in f32 must give them at the f32 tolerance.
#[test]
fn a_bf16_checkpoint_loaded_as_bf16_gives_its_f32_compute_reference_logits() {
    let model = load_as("llama-tiny-bf16-sharded", DType::BF16);
    let reference = reference("llama-tiny-bf16-sharded");
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(diff <= LOGITS_TOL, "max abs diff {diff} > {LOGITS_TOL}");
}

/// Narrowing the f32 llama-tiny to bf16 (and f16) moves its logits by the rounding of the
/// weights only. Measured max abs diff over every position: bf16 2.0e-3, f16 2.7e-4; the bounds
/// leave ~2.5x margin, so a wrong weight (a transposition, a missing cast) fails.
#[rstest]
#[case::bf16(DType::BF16, 5e-3)]
#[case::f16(DType::F16, 7e-4)]
fn a_narrow_base_stays_near_the_f32_logits(#[case] dtype: DType, #[case] tol: f32) {
    let reference = reference("llama-tiny");
    let f32_logits = to_vec(load_model("llama-tiny").forward(&reference.inputs(), None));
    let narrow = to_vec(load_as("llama-tiny", dtype).forward(&reference.inputs(), None));
    let diff = max_abs_diff(&f32_logits, &narrow);
    assert!(diff > 0.0, "{dtype:?}: the weights were not narrowed");
    assert!(diff <= tol, "{dtype:?}: max abs diff {diff} > {tol}");
}

/// transformers' bf16 llama-tiny (`tests/fixtures/llama-tiny-bf16-reference/make_reference.py`)
/// computes its matmuls and activations in bf16 (RMSNorm and the attention softmax upcast to
/// f32), we in f32 from the same bf16 weights, so the two differ by that bf16 rounding. Measured max abs diff: base 3.7e-3, + LoRA
/// 9.8e-3; bound 2e-2.
#[rstest]
#[case::base(None, "reference.safetensors")]
#[case::lora(Some("adapters/lora"), "reference-lora.safetensors")]
fn a_bf16_base_matches_transformers_bf16_logits(#[case] adapter: Option<&str>, #[case] file: &str) {
    const TOL: f32 = 2e-2;
    let mut model = load_as("llama-tiny", DType::BF16);
    if let Some(a) = adapter {
        load_adapter(&mut model, "llama", &fixture(a), &device()).unwrap();
    }
    let mut reference = reference("llama-tiny");
    let theirs = Checkpoint::open_files(&[fixture("llama-tiny-bf16-reference").join(file)])
        .unwrap()
        .read_f32("logits")
        .unwrap()
        .0;
    reference.logits = theirs;
    let ours = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&ours);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(diff <= TOL, "max abs diff {diff} > {TOL}");
}

/// Every adapter consumer of a base weight (the fused LoRA linear, DoRA's weight norm, IA3,
/// AdaLoRA) on a bf16 base: the bf16 checkpoint stored as bf16 or widened to f32 holds the same
/// values, so the adapted logits agree at the f32 tolerance (measured: identical); folding
/// rounds the merged weight back to bf16 (measured ≤ 4.5e-3 from the unfolded logits; bound
/// 1e-2).
#[rstest]
#[case::lora("lora")]
#[case::dora("dora")]
#[case::ia3("ia3")]
#[case::adalora("adalora")]
fn adapters_on_a_bf16_base_match_the_f32_base_and_fold_in_bf16(#[case] name: &str) {
    let inputs = reference("llama-tiny").inputs();
    let adapted = |dtype| {
        let mut m = load_as("llama-tiny-bf16-sharded", dtype);
        let dir = fixture(&format!("adapters/{name}"));
        load_adapter(&mut m, "llama", &dir, &device()).unwrap();
        m
    };
    let wide = to_vec(adapted(DType::F32).forward(&inputs, None));
    let mut narrow = adapted(DType::BF16);
    let unfolded = to_vec(narrow.forward(&inputs, None));
    let diff = max_abs_diff(&wide, &unfolded);
    assert!(diff <= LOGITS_TOL, "{name}: bf16 vs f32 base {diff}");
    for (_, linear) in narrow.linears_mut() {
        peft::peft::fold::fold(linear);
        assert_eq!(linear.weight.val().dtype(), DType::BF16, "{name}: fold");
    }
    let folded = to_vec(narrow.forward(&inputs, None));
    let diff = max_abs_diff(&unfolded, &folded);
    assert!(diff <= 1e-2, "{name}: folded vs unfolded {diff}");
}

fn train_losses(out: &Path, base_dtype: &str) -> Vec<f64> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--data",
        path_str(&data),
        "--out",
        path_str(out),
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--lr",
        "3e-3",
        "--epochs",
        "2",
        "--base-dtype",
        base_dtype,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    crate::common::train_losses(out)
}

/// The same LoRA run with an f32 and a bf16 base: the bf16 losses fall and follow the f32 ones
/// (measured: at most 2.1e-4 apart over 16 steps; bound 2e-3), and the adapter file is plain f32
/// PEFT.
#[test]
fn lora_training_from_the_cli_on_a_bf16_base_follows_the_f32_run_and_saves_an_f32_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    let narrow = train_losses(&out, "bf16");
    let wide = train_losses(&tmp.path().join("f32"), "f32");
    assert_eq!(narrow.len(), wide.len());
    assert!(narrow.len() >= 4, "{narrow:?}");
    assert!(
        narrow.last().unwrap() < &(narrow[0] - 0.1),
        "loss did not fall: {narrow:?}"
    );
    let apart = narrow
        .iter()
        .zip(&wide)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    assert!(apart <= 2e-3, "bf16 {narrow:?} vs f32 {wide:?}");
    let adapter = Checkpoint::open_files(&[out.join("adapter_model.safetensors")]).unwrap();
    let mut n = 0;
    for e in adapter.entries() {
        assert_eq!(e.dtype, safetensors::Dtype::F32, "{}", e.name);
        assert!(e.name.starts_with("base_model.model."), "{}", e.name);
        n += 1;
    }
    assert!(n > 0);
}

const RSS_CHILD_ENV: &str = "PEFT_BASE_DTYPE_RSS_CHILD";

/// The child half of the next test: loads the model named by the environment and prints its
/// peak RSS (a process of its own, so the parent's allocations do not count).
#[test]
#[ignore = "run as a child process by a_bf16_base_loads_in_about_half_the_memory_of_f32"]
fn load_rss_child() {
    let Ok(spec) = std::env::var(RSS_CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (dtype, mode, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let dtype = if dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let device = if mode == "train" {
        device().autodiff()
    } else {
        device()
    };
    let model = ModelDir::open(Path::new(dir))
        .unwrap()
        .load_with_base_dtype(&device, dtype)
        .unwrap();
    if mode != "train" {
        println!("PEAK_RSS_MIB {}", peak_rss_mib());
        return;
    }
    // One LoRA r8 (q, v) step on a 2 × 64 batch: the activations stay small beside the base.
    let mut model = model;
    let config = peft::peft::AdapterConfig::from_json(
        serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
            "target_modules": ["q_proj", "v_proj"]}),
        Path::new("inline"),
    )
    .unwrap();
    peft::peft::format::inject_new(&mut model, "llama", &config, 0, &device).unwrap();
    let (batch, seq) = (2, 64);
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i * 37 % 4000) as i64).collect();
    let batch = peft::train::Batch {
        labels: ids.clone(),
        mask: vec![1; ids.len()],
        ids,
        batch,
        seq,
    };
    let mut optim = peft::train::AdamW::new(peft::train::AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let (_model, stats) =
        peft::train::train_step(model, &mut optim, std::slice::from_ref(&batch), 1e-3, None);
    assert!(stats.loss.is_finite());
    println!("PEAK_RSS_MIB {}", peak_rss_mib());
}

fn child_peak_rss(dtype: &str, mode: &str, dir: &Path) -> f64 {
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "base_dtype::load_rss_child",
            "--ignored",
            "--nocapture",
        ])
        .env(RSS_CHILD_ENV, format!("{dtype}:{mode}:{}", dir.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", stderr(&o));
    text.lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_MIB "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text}"))
}

/// SmolLM2-135M-shaped random model (f32 file, 540 MB). Measured peak RSS of the load: f32
/// 547 MiB, bf16 287 MiB (0.52x: the bf16 weights plus one tensor's f32 transient); of a load +
/// one LoRA step (batch 2 × 64): f32 654 MiB, bf16 411 MiB (0.63x: the activations are f32 in
/// both; no layer keeps an f32 copy of its weight for the backward, and the fused loss widens
/// the tied head slab by slab).
#[test]
fn a_bf16_base_loads_in_about_half_the_memory_of_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2-shaped");
    write_random_llama(&dir, SMOLLM2_135M, 0).unwrap();
    let f32_mib = child_peak_rss("f32", "load", &dir);
    let bf16_mib = child_peak_rss("bf16", "load", &dir);
    eprintln!("load peak RSS: f32 {f32_mib:.0} MiB, bf16 {bf16_mib:.0} MiB");
    assert!(f32_mib > 500.0, "f32 load peak {f32_mib} MiB");
    assert!(
        bf16_mib < 0.65 * f32_mib,
        "bf16 {bf16_mib:.0} MiB vs f32 {f32_mib:.0} MiB"
    );
    let f32_mib = child_peak_rss("f32", "train", &dir);
    let bf16_mib = child_peak_rss("bf16", "train", &dir);
    eprintln!("LoRA step peak RSS: f32 {f32_mib:.0} MiB, bf16 {bf16_mib:.0} MiB");
    assert!(
        bf16_mib < 0.7 * f32_mib,
        "training: bf16 {bf16_mib:.0} MiB vs f32 {f32_mib:.0} MiB"
    );
}

fn train_adapter(out: &Path, base_dtype: &str, method: &[&str]) {
    let mut args = vec![
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--max-len",
        "64",
        "--lr",
        "1e-2",
        "--max-steps",
        "3",
        "--base-dtype",
        base_dtype,
    ];
    args.extend_from_slice(method);
    let o = train_on_tiny_instruct(&fixture("llama-tiny-bf16-sharded"), out, &args);
    assert!(o.status.success(), "{method:?}: {}", stderr(&o));
}

fn eval_loss(base_dtype: &str, adapter: &Path) -> f64 {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let model = fixture("llama-tiny-bf16-sharded");
    let o = run_peft(&[
        "eval",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--max-len",
        "64",
        "--json",
        "--adapter",
        path_str(adapter),
        "--base-dtype",
        base_dtype,
    ]);
    assert!(o.status.success(), "eval: {}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    json["loss"].as_f64().expect("loss")
}

/// On the bf16 checkpoint a bf16 base and an f32 base hold the same values and compute in f32,
/// so training (DoRA's weight norm, IA3, AdaLoRA, prompt tuning initialised from the bf16 word
/// embeddings) gives the same adapter, and `peft eval --base-dtype bf16` the same loss.
#[rstest]
#[case::dora(&["--method", "dora"])]
#[case::ia3(&["--method", "ia3"])]
#[case::adalora(&["--method", "adalora", "--total-step", "3"])]
#[case::prompt_text(&["--method", "prompt", "--num-virtual-tokens", "4", "--prompt-tuning-init", "TEXT", "--prompt-tuning-init-text", "Answer the question:"])]
fn training_on_a_bf16_base_gives_the_f32_base_adapter(#[case] method: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (narrow, wide) = (tmp.path().join("bf16"), tmp.path().join("f32"));
    train_adapter(&narrow, "bf16", method);
    train_adapter(&wide, "f32", method);
    let read = |dir: &Path| {
        let c = Checkpoint::open_files(&[dir.join("adapter_model.safetensors")]).unwrap();
        let names: Vec<String> = c.entries().map(|e| e.name.clone()).collect();
        names
            .into_iter()
            .map(|n| {
                let e = c.get(&n).unwrap();
                assert_eq!(e.dtype, safetensors::Dtype::F32, "{n}");
                (n.clone(), c.read_f32(&n).unwrap().0)
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (read(&narrow), read(&wide));
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let diff = max_abs_diff(x, y);
        assert!(diff <= 1e-6, "{method:?} {n}: {diff}");
    }
    let (l_narrow, l_wide) = (eval_loss("bf16", &narrow), eval_loss("f32", &narrow));
    assert!((l_narrow - l_wide).abs() <= 1e-5, "{l_narrow} vs {l_wide}");
}

/// ChatGLM's weights load through the same reader: bf16 logits near the f32 ones (measured
/// max abs diff 1.5e-2; bound 3e-2).
#[test]
fn chatglm_on_a_bf16_base_stays_near_the_f32_logits() {
    let reference = reference("chatglm-tiny");
    let f32_logits = to_vec(load_model("chatglm-tiny").forward(&reference.inputs(), None));
    let narrow = to_vec(load_as("chatglm-tiny", DType::BF16).forward(&reference.inputs(), None));
    let diff = max_abs_diff(&f32_logits, &narrow);
    assert!(diff > 0.0 && diff <= 3e-2, "max abs diff {diff}");
}

//! `--gradient-checkpointing` (issue 17 item 4): recomputing each decoder layer in the backward
//! gives the same losses, gradients and training trajectory as keeping its activations.

use std::path::Path;

use burn::tensor::Tensor;
use peft::models::checkpointing::recomputed_layers;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::{adapter_tensors, load_adapter};
use peft::train::{train_step, AdamW, AdamWConfig, Batch};
use rstest::rstest;

use crate::common::*;
use crate::train::fixture_batch;

/// Same arithmetic in the same order, so equal up to float reordering (measured: 0 for most;
/// bound 1e-5 as the issue asks).
const TOL: f64 = 1e-5;

fn optim() -> AdamW {
    AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    })
}

/// Per-step losses and the final adapter tensors of `steps` AdamW steps.
fn trajectory(
    model_rel: &str,
    family: &str,
    adapter: &Path,
    checkpointing: bool,
) -> (Vec<f64>, Vec<Vec<f32>>) {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture(model_rel)).unwrap();
    let mut model: CausalLm = dir.load(&device).unwrap();
    load_adapter(&mut model, family, adapter, &device).unwrap();
    model.set_gradient_checkpointing(checkpointing);
    let batch: Batch = match family {
        "llama" => fixture_batch("train/lora"),
        _ => chatglm_batch(),
    };
    let mut optim = optim();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (next, stats) = train_step(
            model,
            &mut optim,
            std::slice::from_ref(&batch),
            1e-2,
            Some(1.0),
        );
        model = next;
        losses.push(stats.loss);
    }
    let tensors = adapter_tensors(&mut model)
        .into_iter()
        .map(|(_, t)| peft::io::dtype::to_f32(t.dtype, &t.bytes).unwrap())
        .collect();
    (losses, tensors)
}

/// A small batch over ChatGLM-tiny's vocabulary with padding and masked labels.
fn chatglm_batch() -> Batch {
    let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 7 + 3) % 60 + 1).collect();
    let mut mask = vec![1i64; 18];
    mask[0] = 0;
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 9 < 3 { -100 } else { t })
        .collect();
    Batch {
        ids,
        mask,
        labels,
        batch: 2,
        seq: 9,
    }
}

fn assert_same(name: &str, plain: &(Vec<f64>, Vec<Vec<f32>>), ckpt: &(Vec<f64>, Vec<Vec<f32>>)) {
    assert_eq!(plain.0.len(), ckpt.0.len());
    for (step, (a, b)) in plain.0.iter().zip(&ckpt.0).enumerate() {
        assert!((a - b).abs() <= TOL, "{name} step {step}: loss {a} vs {b}");
    }
    assert_eq!(plain.1.len(), ckpt.1.len(), "{name}: adapter tensors");
    assert!(!plain.1.is_empty(), "{name}: no adapter tensors compared");
    for (i, (a, b)) in plain.1.iter().zip(&ckpt.1).enumerate() {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(f64::from(diff) <= TOL, "{name} tensor {i}: {diff}");
    }
}

#[rstest]
#[case::lora("lora")]
#[case::rslora("lora-rslora-patterns")]
#[case::dora("dora")]
#[case::ia3("ia3")]
#[case::adalora("adalora")]
#[case::prompt_tuning("prompt")]
fn llama_training_with_gradient_checkpointing_follows_the_same_trajectory(#[case] name: &str) {
    let adapter = fixture(&format!("adapters/{name}"));
    let plain = trajectory("llama-tiny", "llama", &adapter, false);
    let ckpt = trajectory("llama-tiny", "llama", &adapter, true);
    assert!(
        plain.0[2] < plain.0[0],
        "{name}: loss did not fall {:?}",
        plain.0
    );
    assert_same(name, &plain, &ckpt);
}

#[test]
fn chatglm_lora_training_with_gradient_checkpointing_follows_the_same_trajectory() {
    let adapter = fixture("chatglm-tiny-lora");
    let plain = trajectory("chatglm-tiny", "chatglm", &adapter, false);
    let before = recomputed_layers();
    let ckpt = trajectory("chatglm-tiny", "chatglm", &adapter, true);
    assert!(recomputed_layers() >= before + 6, "no block was recomputed");
    assert_same("chatglm lora", &plain, &ckpt);
}

/// The input gradient too: a tracked input (as under full fine-tuning of the embedding) gets the
/// same gradient through the recomputed layers.
#[test]
fn gradients_through_checkpointed_layers_equal_the_plain_ones() {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let grads = |on: bool| {
        let mut model = dir.load(&device).unwrap();
        load_adapter(&mut model, "llama", &fixture("adapters/lora"), &device).unwrap();
        model.set_gradient_checkpointing(on);
        let batch = fixture_batch("train/lora");
        let inputs = batch.inputs();
        let loss: Tensor<1> = model.token_loss_sum(&inputs, &batch.labels);
        let g = loss.backward();
        let mut out: Vec<Vec<f32>> = Vec::new();
        for (_, linear) in model.linears_mut() {
            if let Some(peft::peft::adapter::LinearAdapter::Lora(l)) = &linear.adapter {
                for t in [l.lora_a.val(), l.lora_b.val()] {
                    let grad = t.grad(&g).expect("adapter gradient");
                    out.push(grad.into_data().iter::<f32>().collect());
                }
            }
        }
        out
    };
    let (plain, ckpt) = (grads(false), grads(true));
    assert!(!plain.is_empty());
    assert_eq!(plain.len(), ckpt.len());
    for (a, b) in plain.iter().zip(&ckpt) {
        let scale = a.iter().map(|v| v.abs()).fold(1e-12f32, f32::max);
        let rel = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max);
        assert!(f64::from(rel) <= TOL, "gradient relative diff {rel}");
    }
}

fn cli_train(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut flags = vec![
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--lr",
        "3e-3",
        "--seed",
        "1",
    ];
    flags.extend_from_slice(extra);
    train_on_tiny_instruct(model, out, &flags)
}

/// From the CLI, on both families: the same losses with and without the flag, and the memory
/// estimate is printed before loading.
#[rstest]
#[case::llama("llama-tiny")]
#[case::chatglm("chatglm-tiny")]
fn peft_train_with_gradient_checkpointing_gives_the_same_losses(#[case] model: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("plain"), tmp.path().join("ckpt"));
    let plain = cli_train(&fixture(model), &a, &["--method", "dora"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let ckpt = cli_train(
        &fixture(model),
        &b,
        &["--method", "dora", "--gradient-checkpointing"],
    );
    assert!(ckpt.status.success(), "{}", stderr(&ckpt));
    assert!(
        stderr(&ckpt).contains("memory estimate"),
        "{}",
        stderr(&ckpt)
    );
    let (x, y) = (train_losses(&a), train_losses(&b));
    assert_eq!(x.len(), 3);
    for (p, q) in x.iter().zip(&y) {
        assert!((p - q).abs() <= TOL, "{x:?} vs {y:?}");
    }
}

#[rstest]
#[case::prefix(&["--method", "prefix", "--num-virtual-tokens", "4"], "prefix tuning")]
#[case::llama_adapter(&["--method", "llama-adapter", "--adapter-len", "4", "--adapter-layers", "1"], "LLaMA-Adapter")]
fn gradient_checkpointing_refuses_methods_with_per_layer_prompts(
    #[case] method: &[&str],
    #[case] name: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut extra = method.to_vec();
    extra.push("--gradient-checkpointing");
    let o = cli_train(&fixture("llama-tiny"), &tmp.path().join("out"), &extra);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--gradient-checkpointing") && err.contains(name),
        "{err}"
    );
}

/// A model folder whose config.json describes ~400B parameters (no weights: the refusal comes
/// before loading), with the tiny tokenizer.
fn huge_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": 128000, "hidden_size": 16384,
        "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
        "max_position_embeddings": 4096
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        let from = fixture("llama-tiny").join(f);
        if from.is_file() {
            std::fs::copy(from, dir.join(f)).unwrap();
        }
    }
}

#[test]
fn a_run_over_the_available_memory_is_refused_before_loading_naming_the_options() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("huge");
    huge_model(&model);
    let o = cli_train(&model, &tmp.path().join("out"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for option in [
        "memory estimate",
        "--base-dtype bf16",
        "--quantize-base int4",
        "--gradient-checkpointing",
        "--batch-size",
        "--max-len",
        "--ignore-memory-estimate",
    ] {
        assert!(err.contains(option), "{option} missing: {err}");
    }
    // The override goes on to loading, which then fails on the missing weights instead.
    let o = cli_train(
        &model,
        &tmp.path().join("out2"),
        &["--ignore-memory-estimate"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("warning: training needs an estimated"),
        "{err}"
    );
    assert!(err.contains("loading"), "{err}");
}

#[test]
fn peft_inspect_memory_prints_the_estimate_without_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("huge");
    huge_model(&model);
    let o = run_peft(&[
        "inspect",
        "--model",
        path_str(&model),
        "--memory",
        "--base-dtype",
        "bf16",
        "--batch-size",
        "1",
        "--max-len",
        "256",
        "--gradient-checkpointing",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("memory estimate (batch 1 × 256 tokens, base bf16)"),
        "{out}"
    );
    assert!(out.contains("--ignore-memory-estimate"), "{out}");
}

/// Llama-2-7B with a bf16 base, LoRA r8 on q/v, batch 1 × 256 and checkpointing: the issue's
/// bound is 16 GiB; the estimate says 12.8 GiB (weights 12.55 GiB of it).
#[test]
fn the_llama2_7b_bf16_lora_run_is_estimated_under_16_gib() {
    use peft::train::memory::{MemoryPlan, ModelShape, WeightStorage};
    let tmp = tempfile::tempdir().unwrap();
    let (_, shape, tied) = peft::models::synthetic::NAMED[2];
    std::fs::write(
        tmp.path().join("config.json"),
        shape.config_with_head(tied).to_string(),
    )
    .unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let config = peft::peft::AdapterConfig::from_json(
        serde_json::json!({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]
        }),
        Path::new("adapter_config.json"),
    )
    .unwrap();
    let adapter = peft::train::memory::adapter_footprint(&dir, &config).unwrap();
    assert_eq!(adapter.trainable, 32 * 2 * 8 * (4096 + 4096));
    let plan = MemoryPlan {
        shape: ModelShape::from_dir(&dir),
        linear_storage: WeightStorage::Bf16,
        embedding_storage: WeightStorage::Bf16,
        adapter,
        batch: 1,
        seq: 256,
        checkpointing: true,
    };
    let total = plan.estimate().total();
    assert!(total <= 16 << 30, "{}", plan.estimate());
    assert!(total >= 12 << 30, "{}", plan.estimate());
}

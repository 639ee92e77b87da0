//! `peft train --method prompt|ptuning|prefix|ptuning-v2|llama-adapter` end to end on the tiny
//! models: training lowers the eval loss of the saved adapter, runs resume exactly, ChatGLM's
//! native P-tuning v2 trains and evaluates, and bad input gets a clear error.

use std::fs;
use std::path::Path;

use rstest::rstest;

use crate::common::*;

fn data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/tiny_instruct.jsonl")
        .to_string_lossy()
        .into_owned()
}

fn train(model: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture(model);
    let data = data();
    let mut args = vec![
        "train",
        "--model",
        path_str(&model),
        "--data",
        &data,
        "--out",
        path_str(out),
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--max-len",
        "64",
    ];
    args.extend_from_slice(extra);
    run_peft(&args)
}

fn eval_loss(model: &str, adapter: Option<&Path>) -> f64 {
    let model = fixture(model);
    let data = data();
    let mut args = vec![
        "eval",
        "--model",
        path_str(&model),
        "--data",
        &data,
        "--max-len",
        "64",
        "--json",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", path_str(a)]);
    }
    let o = run_peft(&args);
    assert!(o.status.success(), "eval: {}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    json["loss"].as_f64().expect("loss")
}

#[rstest]
#[case::prompt_random(&["--method", "prompt", "--num-virtual-tokens", "8"])]
#[case::prompt_text(&["--method", "prompt", "--num-virtual-tokens", "8", "--prompt-tuning-init", "TEXT", "--prompt-tuning-init-text", "Answer the question:"])]
#[case::prompt_sample_vocab(&["--method", "prompt", "--num-virtual-tokens", "8", "--prompt-tuning-init", "SAMPLE_VOCAB"])]
#[case::ptuning_mlp(&["--method", "ptuning", "--num-virtual-tokens", "8", "--encoder-hidden-size", "32"])]
#[case::ptuning_lstm(&["--method", "ptuning", "--num-virtual-tokens", "8", "--encoder-reparameterization-type", "LSTM", "--encoder-hidden-size", "16"])]
#[case::prefix(&["--method", "prefix", "--num-virtual-tokens", "8", "--encoder-hidden-size", "32"])]
#[case::ptuning_v2(&["--method", "ptuning-v2", "--num-virtual-tokens", "8"])]
#[case::llama_adapter(&["--method", "llama-adapter", "--adapter-len", "4", "--adapter-layers", "2"])]
fn each_prompt_method_trains_and_its_adapter_lowers_the_eval_loss(#[case] method: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = method.to_vec();
    args.extend([
        "--lr",
        "3e-2",
        "--max-steps",
        "6",
        "--lr-scheduler",
        "constant",
    ]);
    let o = train("llama-tiny", &out, &args);
    assert!(o.status.success(), "{method:?}: {}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["inference_mode"], true, "{config}");
    let base = eval_loss("llama-tiny", None);
    let tuned = eval_loss("llama-tiny", Some(&out));
    assert!(tuned < base, "{method:?}: base {base}, tuned {tuned}");
}

#[test]
fn a_prompt_learning_run_resumes_exactly_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, resumed) = (tmp.path().join("whole"), tmp.path().join("resumed"));
    let method = [
        "--method",
        "ptuning",
        "--encoder-reparameterization-type",
        "LSTM",
        "--encoder-hidden-size",
        "16",
        "--num-virtual-tokens",
        "4",
        "--lr",
        "2e-2",
        "--max-steps",
        "4",
        "--save-steps",
        "2",
    ];
    let o = train("llama-tiny", &whole, &method);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = whole.join("checkpoint-2");
    assert!(ckpt.join("prompt_encoder.safetensors").is_file());
    let mut again = method.to_vec();
    again.extend(["--resume", path_str(&ckpt)]);
    let o = train("llama-tiny", &resumed, &again);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["prompt_encoder.safetensors", "adapter_model.safetensors"] {
        assert_eq!(
            fs::read(whole.join(file)).unwrap(),
            fs::read(resumed.join(file)).unwrap(),
            "{file} differs after resuming"
        );
    }
}

#[rstest]
#[case::without_projection("ptuning-v2")]
#[case::with_projection("prefix")]
fn chatglm_native_ptuning_v2_trains_and_evaluates(#[case] method: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(
        "chatglm-tiny",
        &out,
        &[
            "--method",
            method,
            "--num-virtual-tokens",
            "4",
            "--template",
            "chatglm3",
            "--lr",
            "3e-2",
            "--max-steps",
            "6",
            "--lr-scheduler",
            "constant",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "prefix_encoder.safetensors",
        "ptuning_config.json",
        "adapter_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let model = fixture("chatglm-tiny");
    let data = data();
    let eval = |adapter: Option<&Path>| -> f64 {
        let mut args = vec![
            "eval",
            "--model",
            path_str(&model),
            "--data",
            &data,
            "--template",
            "chatglm3",
            "--max-len",
            "64",
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", path_str(a)]);
        }
        let o = run_peft(&args);
        assert!(o.status.success(), "eval: {}", stderr(&o));
        let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        json["loss"].as_f64().unwrap()
    };
    let (base, tuned) = (eval(None), eval(Some(&out)));
    assert!(tuned < base, "base {base}, tuned {tuned}");
}

#[rstest]
#[case::text_init_without_text(&["--method", "prompt", "--prompt-tuning-init", "TEXT"], "prompt_tuning_init_text")]
#[case::virtual_tokens_past_the_context(&["--method", "prefix", "--num-virtual-tokens", "250"], "context")]
#[case::unknown_init(&["--method", "prompt", "--prompt-tuning-init", "ZEROS"], "RANDOM, TEXT or SAMPLE_VOCAB")]
#[case::unknown_encoder(&["--method", "ptuning", "--encoder-reparameterization-type", "GRU"], "MLP or LSTM")]
#[case::flag_of_another_method(&["--method", "prompt", "--adapter-len", "4"], "ADAPTION_PROMPT")]
#[case::lora_flag_on_a_prompt_method(&["--method", "prefix", "--r", "8"], "--r does not apply")]
#[case::adapter_layers_missing(&["--method", "llama-adapter"], "--adapter-layers is required")]
#[case::too_many_adapter_layers(&["--method", "llama-adapter", "--adapter-layers", "3"], "adapter_layers 3 exceeds")]
#[case::zero_virtual_tokens(&["--method", "prompt", "--num-virtual-tokens", "0"], "positive integer")]
fn bad_prompt_learning_options_are_refused_clearly(#[case] args: &[&str], #[case] message: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = args.to_vec();
    all.extend(["--max-steps", "1"]);
    let o = train("llama-tiny", &tmp.path().join("run"), &all);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = stderr(&o);
    assert!(err.contains(message), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[rstest]
#[case::prompt_tuning(&["--method", "prompt"], "P-tuning v2")]
#[case::llama_adapter(&["--method", "llama-adapter", "--adapter-layers", "1"], "P-tuning v2")]
#[case::other_projection_size(&["--method", "prefix", "--encoder-hidden-size", "8"], "hidden_size (64)")]
fn chatglm_refuses_what_its_prefix_encoder_cannot_do(#[case] args: &[&str], #[case] message: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = args.to_vec();
    all.extend(["--template", "chatglm3", "--max-steps", "1"]);
    let o = train("chatglm-tiny", &tmp.path().join("run"), &all);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(message), "{}", stderr(&o));
}

#[test]
fn merge_refuses_a_prompt_adapter_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_peft(&[
        "merge",
        "--base",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&fixture("adapters/prefix")),
        "--out",
        path_str(&tmp.path().join("merged")),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("PREFIX_TUNING") && err.contains("no weight"),
        "{err}"
    );
}

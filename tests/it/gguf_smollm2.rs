//! The real model: SmolLM2-135M-Instruct converted by examples/get_smollm2.sh. Nothing is
//! downloaded here. When the folder is absent the tests say so loudly and pass, unless
//! `PEFT_REQUIRE_SMOLLM2` is set (CI sets it, after running the script).

use std::path::PathBuf;

use serde_json::Value as Json;

use super::{check_tokenizer_parity, fixture, peft, read_json};

/// `$PEFT_SMOLLM2_DIR`, else `$HOME/.cache/peft/SmolLM2-135M-Instruct`, if it holds a converted model.
fn smollm2_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("PEFT_SMOLLM2_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/peft/SmolLM2-135M-Instruct"),
    };
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let message = format!(
        "\n*** {test}: SKIPPED: no converted SmolLM2 at {} (run examples/get_smollm2.sh, or set PEFT_SMOLLM2_DIR) ***\n",
        dir.display()
    );
    if std::env::var_os("PEFT_REQUIRE_SMOLLM2").is_some() {
        panic!("{message}PEFT_REQUIRE_SMOLLM2 is set, so the real model must be present");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a skip
    // must be seen.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
    None
}

#[test]
fn smollm2_config_has_the_published_hyperparameters() {
    let Some(dir) = smollm2_dir("smollm2_config_has_the_published_hyperparameters") else {
        return;
    };
    let config = read_json(&dir.join("config.json"));
    let expect = [
        ("num_hidden_layers", Json::from(30)),
        ("hidden_size", 576.into()),
        ("intermediate_size", 1536.into()),
        ("num_attention_heads", 9.into()),
        ("num_key_value_heads", 3.into()),
        ("vocab_size", 49152.into()),
        ("tie_word_embeddings", true.into()),
        ("rope_theta", 100000.0.into()),
        ("max_position_embeddings", 8192.into()),
        ("bos_token_id", 1.into()),
        ("eos_token_id", 2.into()),
    ];
    for (key, value) in expect {
        assert_eq!(config[key], value, "config.json `{key}`");
    }
}

#[test]
fn smollm2_tokenizer_encodes_like_transformers_gguf_conversion() {
    let Some(dir) = smollm2_dir("smollm2_tokenizer_encodes_like_transformers_gguf_conversion")
    else {
        return;
    };
    let compared = check_tokenizer_parity(
        &dir.join("tokenizer.json"),
        &fixture("smollm2_tokenizer_parity.json"),
    );
    assert!(compared >= 10, "only {compared} parity cases");
}

#[test]
fn smollm2_greedy_continuation_names_paris() {
    let Some(dir) = smollm2_dir("smollm2_greedy_continuation_names_paris") else {
        return;
    };
    let model = dir.to_str().unwrap();
    let run = peft(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "The capital of France is",
        "--greedy",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: Json =
        serde_json::from_slice(&run.stdout).expect("generate --json prints one JSON object");
    let text = out["text"].as_str().expect("`text` in the JSON output");
    assert!(text.starts_with(" Paris"), "continuation was {text:?}");
}

#[test]
fn smollm2_greedy_ids_match_transformers_on_the_converted_folder() {
    let Some(dir) = smollm2_dir("smollm2_greedy_ids_match_transformers_on_the_converted_folder")
    else {
        return;
    };
    // Recorded by check_with_transformers.py: transformers 5.24, float32, CPU, from the GGUF itself.
    let reference = read_json(&fixture("smollm2_transformers_check.json"))
        ["greedy_prompt_transformers_gguf"]
        .clone();
    let run = peft(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--greedy",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours: Json =
        serde_json::from_slice(&run.stdout).expect("generate --json prints one JSON object");
    assert_eq!(ours["prompt_ids"], reference["prompt_ids"]);
    assert_eq!(
        ours["new_ids"], reference["new_ids"],
        "ours: {:?}, transformers: {:?}",
        ours["text"], reference["text"]
    );
}

#[test]
fn smollm2_chat_answer_names_paris() {
    let Some(dir) = smollm2_dir("smollm2_chat_answer_names_paris") else {
        return;
    };
    let model = dir.to_str().unwrap();
    let run = peft(&[
        "generate",
        "--model",
        model,
        "--chat",
        "What is the capital of France?",
        "--greedy",
        "--max-new-tokens",
        "32",
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let answer = String::from_utf8_lossy(&run.stdout);
    assert!(answer.contains("Paris"), "answer was {answer:?}");
}

/// With llama.cpp's BLAS backend (f32 activations for every product of ≥ 32 tokens), our f16 and
/// q8_0 exports of SmolLM2 give our logits within 1e-3 and our greedy ids
/// (examples/check_gguf_llama_cpp_blas.py). Runs when `$PEFT_LLAMA_BLAS_PYTHON`, else the cached
/// `/var/tmp/peft-cache/llama-blas-venv`, imports llama_cpp.
#[test]
fn llama_cpp_with_blas_gives_our_logits_for_the_f16_and_q8_0_exports_of_smollm2() {
    let test = "llama_cpp_with_blas_gives_our_logits_for_the_f16_and_q8_0_exports_of_smollm2";
    let Some(dir) = smollm2_dir(test) else {
        return;
    };
    let Some(python) = crate::gguf_export::python_with_llama_cpp(
        test,
        "PEFT_LLAMA_BLAS_PYTHON",
        "/var/tmp/peft-cache/llama-blas-venv/bin/python",
        "build llama-cpp-python with CMAKE_ARGS=\"-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS\" into that venv",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/check_gguf_llama_cpp_blas.py");
    let o = std::process::Command::new(python)
        .arg(script)
        .args(["--peft", env!("CARGO_BIN_EXE_peft")])
        .arg("--model")
        .arg(&dir)
        .arg("--work")
        .arg(tmp.path().join("work"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["q8_0_greedy_equal"], "48/48");
    assert!(report["f16_max_abs_diff"].as_f64().unwrap() <= 1e-3);
}

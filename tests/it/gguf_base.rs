//! `--model file.gguf`: training and inference directly on a GGUF file (issue 17, item 3). The
//! file's block-quantized linear weights stay quantized in memory; the model must compute what
//! the `peft convert gguf` folder (every tensor dequantized to f32) computes.

use std::path::{Path, PathBuf};

use peft::gguf::{convert_gguf, ConvertOptions};
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::load_adapter;
use rstest::rstest;
use safetensors::Dtype;

use crate::common::*;

fn gguf_fixture(name: &str) -> PathBuf {
    fixture(&format!("gguf/{name}"))
}

fn converted(file: &Path, out: &Path) -> CausalLm {
    convert_gguf(
        file,
        out,
        ConvertOptions {
            dtype: Dtype::F32,
            force: false,
        },
    )
    .unwrap();
    ModelDir::open(out).unwrap().load(&device()).unwrap()
}

fn inputs(vocab: usize) -> peft::models::Inputs {
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 % vocab) as i64).collect();
    peft::models::Inputs::with_mask(ids, &[1; 24], 2, 12)
}

/// Logits of the GGUF read in place against the converted f32 folder: the same dequantized
/// values, products summed panel by panel, so equal to f32 rounding relative to the logits'
/// scale (the k-quant fixture's random super-blocks give logits in the thousands).
#[rstest]
#[case::legacy("tiny_llama.gguf")]
#[case::kquants("tiny_kquant_llama.gguf")]
fn a_gguf_read_in_place_keeps_its_blocks_and_gives_the_converted_models_logits(#[case] name: &str) {
    let file = gguf_fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let wide = converted(&file, &tmp.path().join("hf"));
    let dir = ModelDir::open(&file).unwrap();
    assert!(dir.gguf_file().is_some());
    let mut model = dir.load(&device()).unwrap();
    let quantized = model
        .linears_mut()
        .iter()
        .filter(|(_, l)| l.quant.is_some())
        .count();
    assert!(quantized > 0, "{name}: no linear kept quantized");
    let vocab = match &model {
        CausalLm::Llama(m) => m.config.vocab_size,
        CausalLm::ChatGlm(_) => unreachable!(),
    };
    let ours = to_vec(model.forward(&inputs(vocab), None));
    let want = to_vec(wide.forward(&inputs(vocab), None));
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5 * scale, "{name}: {diff} (scale {scale})");
}

/// LoRA trains from the CLI on the GGUF file itself; the adapter is plain PEFT and loads onto the
/// converted folder; `peft merge --model file.gguf` dequantizes, merges in f32 and writes f32
/// safetensors (item 5), which `--verify` checks against the GGUF base + adapter, and leaves no
/// scratch folder behind.
#[test]
fn lora_trains_from_the_cli_on_a_gguf_file_and_merges_into_f32_safetensors() {
    let file = gguf_fixture("tiny_llama.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&file),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--batch-size",
        "8",
        "--max-len",
        "64",
        "--lr",
        "3e-3",
        "--max-steps",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("adapter_model.safetensors").is_file());
    let hf = tmp.path().join("hf");
    let mut wide = converted(&file, &hf);
    let dir = ModelDir::open(&hf).unwrap();
    load_adapter(&mut wide, dir.model_type(), &out, &device()).unwrap();

    let merged = tmp.path().join("merged");
    let o = run_peft(&[
        "merge",
        "--model",
        path_str(&file),
        "--adapter",
        path_str(&out),
        "--out",
        path_str(&merged),
        "--verify",
    ]);
    assert!(o.status.success(), "merge: {}", stderr(&o));
    let ckpt = peft::io::Checkpoint::open_dir(&merged).unwrap();
    assert!(ckpt.contains("model.layers.0.self_attn.q_proj.weight"));
    for e in ckpt.entries() {
        assert_eq!(e.dtype, Dtype::F32, "{}", e.name);
    }
    assert!(merged.join("tokenizer.json").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The real file: SmolLM2-135M-Instruct as Q4_1 (examples/get_smollm2.sh caches it). A short
/// LoRA run directly on it, and its logits against the converted folder.
#[test]
fn smollm2_q4_1_gguf_trains_in_place() {
    let cache = std::env::var_os("PEFT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/peft-cache"));
    let file = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !file.is_file() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "\n*** smollm2_q4_1_gguf_trains_in_place: SKIPPED: no {} (run examples/get_smollm2.sh) ***\n",
                file.display()
            )
            .as_bytes(),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&file),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--batch-size",
        "2",
        "--max-len",
        "64",
        "--max-steps",
        "2",
        "--target-modules",
        "q_proj,v_proj",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let loss = first["loss"].as_f64().unwrap();
    // An instruct model on instruction data: far below the uniform loss ln(49152) ≈ 10.8.
    assert!(loss.is_finite() && loss < 6.0, "first loss {loss}");
}

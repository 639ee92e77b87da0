//! Reading llama.cpp's `chatglm` architecture (issue 19 criterion 5, issue 17 item 3): our own
//! ChatGLM exports come back through `peft convert gguf` as a THUDM ChatGLM folder holding the
//! tensors we wrote (exact for f32, rounded for f16/bf16, within the block quantizer's error),
//! the same config, tokenizer and chat template, and the same logits; and `--model file.gguf`
//! trains and evaluates on the file in place with its quantized linears kept quantized.

use std::path::{Path, PathBuf};

use peft::gguf::dequant::GgmlType;
use peft::gguf::{convert_gguf, ConvertOptions};
use peft::io::Checkpoint;
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::load_adapter;
use rstest::rstest;
use safetensors::Dtype;

use super::common::{device, fixture, path_str, run_peft, stderr, stdout};
use super::gguf_export::{export, ok, parse};

/// `peft convert gguf FILE --out DIR` (f32 safetensors).
fn convert(file: &Path, out: &Path) {
    ok(run_peft(&[
        "convert",
        "gguf",
        path_str(file),
        "--out",
        path_str(out),
    ]));
}

/// Exports `model` as `ty` into `dir`/m.gguf and converts it back into `dir`/back.
fn round_trip(model: &Path, dir: &Path, ty: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let gguf = dir.join("m.gguf");
    ok(export(model, &gguf, ty, extra));
    let back = dir.join("back");
    convert(&gguf, &back);
    (gguf, back)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The largest difference a stored tensor of ggml type `ty` may have from `want`, block by block
/// (32 values): f16/bf16 the rounded value exactly; Q8_0 half a step of absmax/127 plus up to 127
/// steps of the f16 scale's relative rounding (2^-11); Q4_0 one step of absmax/8 (the side
/// opposite the largest value clamps at +7) plus 8 steps of the scale's rounding.
fn check_block(ty: GgmlType, name: &str, want: &[f32], got: &[f32]) {
    let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bound = match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 | GgmlType::BF16 => {
            for (a, b) in want.iter().zip(got) {
                let r = if ty == GgmlType::F16 {
                    half::f16::from_f32(*a).to_f32()
                } else {
                    half::bf16::from_f32(*a).to_f32()
                };
                assert_eq!(*b, r, "{name}: {a} stored as {ty:?}");
            }
            return;
        }
        GgmlType::Q8_0 => 0.5 * amax / 127.0 + amax / 2048.0 + 1e-7,
        GgmlType::Q4_0 => amax / 8.0 + 8.0 * (amax / 8.0) / 2048.0 + 1e-7,
        other => panic!("{name}: unexpected type {other:?}"),
    };
    for (a, b) in want.iter().zip(got) {
        assert!((a - b).abs() <= bound, "{name} ({ty:?}): {a} vs {b}");
    }
}

#[rstest]
#[case("f32")]
#[case("f16")]
#[case("bf16")]
#[case("q8_0")]
#[case("q4_0")]
fn a_chatglm_export_converts_back_to_the_tensors_it_holds_under_thudm_names(#[case] ty: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (gguf, back) = round_trip(&fixture("chatglm-tiny"), tmp.path(), ty, &[]);
    let source = Checkpoint::open_dir(&fixture("chatglm-tiny")).unwrap();
    let back = Checkpoint::open_dir(&back).unwrap();
    let (_, g) = parse(&gguf);
    let mut quantized = 0;
    for info in &g.tensors {
        let (key, _) = peft::gguf::chatglm::hf_name(&info.name).unwrap();
        let (want, shape) = source.read_f32(&key).unwrap();
        let (got, got_shape) = back.read_f32(&key).unwrap();
        assert_eq!(shape, got_shape, "{ty} {key}");
        let t = GgmlType::from_id(info.ggml_type).unwrap();
        quantized += usize::from(matches!(t, GgmlType::Q8_0 | GgmlType::Q4_0));
        for (w, b) in want.chunks(32).zip(got.chunks(32)) {
            check_block(t, &key, w, b);
        }
    }
    // Every source tensor came back, and nothing else.
    assert_eq!(g.tensors.len(), source.entries().count());
    assert_eq!(back.entries().count(), source.entries().count());
    if ty.starts_with('q') {
        assert!(quantized >= 8, "{ty}: only {quantized} quantized tensors");
    }
}

#[test]
fn a_converted_chatglm_has_thudms_config_and_scores_and_evaluates_as_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixture("chatglm-tiny");
    let (gguf, back) = round_trip(&source, tmp.path(), "f32", &[]);
    let want = read_json(&source.join("config.json"));
    let got = read_json(&back.join("config.json"));
    for key in [
        "model_type",
        "architectures",
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "kv_channels",
        "num_attention_heads",
        "multi_query_attention",
        "multi_query_group_num",
        "seq_length",
        "padded_vocab_size",
        "layernorm_epsilon",
        "rmsnorm",
        "add_qkv_bias",
        "add_bias_linear",
        "post_layer_norm",
        "apply_residual_connection_post_layernorm",
        "eos_token_id",
        "pad_token_id",
    ] {
        assert_eq!(got[key], want[key], "config.json `{key}`");
    }
    assert_eq!(got["rope_ratio"], serde_json::json!(1.0));
    // The chat template embedded from chat_template.jinja is the converted tokenizer's.
    let template = std::fs::read_to_string(source.join("chat_template.jinja")).unwrap();
    let tok_config = read_json(&back.join("tokenizer_config.json"));
    assert_eq!(
        tok_config["chat_template"].as_str(),
        Some(template.as_str())
    );
    // Same ids for texts, bit-equal logits for ids, and the same eval loss: the source folder,
    // the converted folder and the GGUF read in place.
    let logits = |model: &Path, name: &str| {
        let out = tmp.path().join(format!("{name}.json"));
        ok(run_peft(&[
            "export",
            "logits",
            "--model",
            path_str(model),
            "--text",
            "Hello world, ChatGLM!",
            "--ids",
            "1,44,73,80,388,314,266,80,72,2",
            "--out",
            path_str(&out),
        ]));
        let ids = read_json(&out)["ids"].clone();
        (ids, std::fs::read(out.with_extension("f32")).unwrap())
    };
    let eval = |model: &Path| {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
        let o = ok(run_peft(&[
            "eval",
            "--model",
            path_str(model),
            "--data",
            path_str(&data),
            "--limit",
            "16",
            "--json",
        ]));
        stdout(&o)
    };
    let want = (logits(&source, "source"), eval(&source));
    assert!(!want.0 .1.is_empty());
    assert_eq!(
        (logits(&back, "back"), eval(&back)),
        want,
        "converted folder"
    );
    assert_eq!((logits(&gguf, "gguf"), eval(&gguf)), want, "GGUF in place");
}

#[test]
fn a_merged_chatglm_lora_export_converts_back_to_the_merged_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = fixture("chatglm-tiny-lora");
    let (_, back) = round_trip(
        &fixture("chatglm-tiny"),
        tmp.path(),
        "f32",
        &["--adapter", path_str(&adapter)],
    );
    let merged = Checkpoint::open_dir(&fixture("chatglm-tiny-lora-merged")).unwrap();
    let back = Checkpoint::open_dir(&back).unwrap();
    for e in merged.entries() {
        let (want, _) = merged.read_f32(&e.name).unwrap();
        let (got, _) = back.read_f32(&e.name).unwrap();
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{}: {diff}", e.name);
    }
}

#[test]
fn a_chatglm3_32k_rope_ratio_survives_the_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("glm32k");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixture("chatglm-tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let mut config = read_json(&model.join("config.json"));
    config["rope_ratio"] = serde_json::json!(50);
    std::fs::write(
        model.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let (_, back) = round_trip(&model, tmp.path(), "f32", &[]);
    assert_eq!(
        read_json(&back.join("config.json"))["rope_ratio"],
        serde_json::json!(50.0)
    );
}

/// ChatGLM3's SentencePiece tokenizer (chatglm-tiny with spm-tiny's BPE model as its
/// `tokenizer.model`): the `chatglm-spm` vocabulary comes back as a `tokenizer.model` with the
/// same pieces, scores and types, which encodes spm-tiny's texts as Python's sentencepiece did.
#[test]
fn a_chatglm3_sentencepiece_vocabulary_converts_back_to_its_tokenizer_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("glm3");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(fixture("chatglm-tiny").join(f), model.join(f)).unwrap();
    }
    std::fs::copy(fixture("spm-tiny/bpe.model"), model.join("tokenizer.model")).unwrap();
    let (gguf, back) = round_trip(&model, tmp.path(), "q8_0", &[]);
    assert!(!back.join("tokenizer.json").exists());
    let spm = |dir: &Path| {
        peft::tokenizer_spm::SpModel::parse(&std::fs::read(dir.join("tokenizer.model")).unwrap())
            .unwrap()
    };
    let (want, got) = (spm(&model), spm(&back));
    assert_eq!(got.pieces, want.pieces);
    assert_eq!(
        (got.model_type, got.byte_fallback, got.add_dummy_prefix),
        (want.model_type, want.byte_fallback, want.add_dummy_prefix)
    );
    let tok_config = read_json(&back.join("tokenizer_config.json"));
    assert_eq!(tok_config["tokenizer_class"], "ChatGLMTokenizer");
    // config.json's eos 2 and pad 0, under sentencepiece's names.
    assert_eq!(
        (&tok_config["eos_token"], &tok_config["pad_token"]),
        (&serde_json::json!("</s>"), &serde_json::json!("<unk>"))
    );
    let cases = read_json(&fixture("spm-tiny/expected.json"));
    let cases = cases["bpe"]["cases"].as_array().unwrap();
    let ids = |m: &Path, name: &str| {
        let out = tmp.path().join(format!("{name}.json"));
        let mut args = vec![
            "export".to_string(),
            "logits".into(),
            "--model".into(),
            path_str(m).into(),
            "--out".into(),
            path_str(&out).into(),
        ];
        for c in cases {
            args.extend(["--text".to_string(), c["text"].as_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(run_peft(&args));
        read_json(&out)["ids"].clone()
    };
    let want: Vec<serde_json::Value> = cases.iter().map(|c| c["ids"].clone()).collect();
    assert_eq!(ids(&back, "back"), serde_json::json!(want));
    assert_eq!(ids(&gguf, "gguf"), serde_json::json!(want));
}

/// The q8_0 file read in place: its linears stay Q8_0 blocks, and its logits are those of the
/// converted f32 folder (the same dequantized values) to f32 rounding.
#[test]
fn a_chatglm_gguf_read_in_place_keeps_its_blocks_and_gives_the_converted_models_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    ok(export(&fixture("chatglm-tiny"), &gguf, "q8_0", &[]));
    let hf = tmp.path().join("hf");
    convert_gguf(
        &gguf,
        &hf,
        ConvertOptions {
            dtype: Dtype::F32,
            force: false,
        },
    )
    .unwrap();
    let wide = ModelDir::open(&hf).unwrap().load(&device()).unwrap();
    let dir = ModelDir::open(&gguf).unwrap();
    assert!(dir.gguf_file().is_some());
    let mut model = dir.load(&device()).unwrap();
    assert!(matches!(model, CausalLm::ChatGlm(_)));
    let quantized = model
        .linears_mut()
        .iter()
        .filter(|(_, l)| l.quant.is_some())
        .count();
    // The Q8_0 linears: each layer's query_key_value, dense and dense_h_to_4h, and the output
    // layer (dense_4h_to_h's 112-wide rows are not whole 32-blocks, so the export wrote F16).
    assert_eq!(quantized, 7);
    assert_logits_within_1e5_of_scale(&model, &wide);
}

/// LoRA trains from the CLI on a q4_0 ChatGLM GGUF in place; the adapter is plain PEFT on
/// THUDM's module names and loads onto the converted folder.
#[test]
fn lora_trains_from_the_cli_on_a_chatglm_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    ok(export(&fixture("chatglm-tiny"), &gguf, "q4_0", &[]));
    let out = tmp.path().join("run");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&gguf),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--batch-size",
        "4",
        "--max-len",
        "64",
        "--lr",
        "3e-3",
        "--max-steps",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = read_json(&out.join("adapter_config.json"));
    assert!(
        config["target_modules"]
            .to_string()
            .contains("query_key_value"),
        "{config}"
    );
    let hf = tmp.path().join("hf");
    convert(&gguf, &hf);
    let dir = ModelDir::open(&hf).unwrap();
    let mut wide = dir.load(&device()).unwrap();
    load_adapter(&mut wide, dir.model_type(), &out, &device()).unwrap();
}

/// An architecture neither Llama nor ChatGLM is still refused by name, by `convert gguf` and by
/// `--model file.gguf`, with nothing written.
#[test]
fn an_unknown_gguf_architecture_is_still_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    ok(export(&fixture("chatglm-tiny"), &gguf, "f32", &[]));
    let mut bytes = std::fs::read(&gguf).unwrap();
    // `general.architecture` is the first key the export writes: its value is the first
    // `chatglm` in the file.
    let at = bytes.windows(7).position(|w| w == b"chatglm").unwrap();
    bytes[at..at + 7].copy_from_slice(b"chatglx");
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let out = tmp.path().join("out");
    let o = run_peft(&["convert", "gguf", path_str(&bad), "--out", path_str(&out)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unsupported architecture `chatglx` (supported: llama, chatglm)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&["eval", "--model", path_str(&bad), "--data", path_str(&data)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unsupported architecture `chatglx`"),
        "{}",
        stderr(&o)
    );
}

/// A ChatGLM file quantized by llama.cpp itself (`llama_model_quantize`, Q4_K_M, on our f32
/// export; the tiny model's 64/112-wide rows make llama.cpp fall back to Q5_0/Q8_0/F16): it
/// converts, its tensors lie near the source's, and read in place it gives the converted folder's
/// logits. Skipped (loudly) without llama-cpp-python.
#[test]
fn a_chatglm_file_quantized_by_llama_cpp_reads_back() {
    let test = "a_chatglm_file_quantized_by_llama_cpp_reads_back";
    let Some(python) = super::gguf_export::llama_python(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f32_file = tmp.path().join("f32.gguf");
    ok(export(&fixture("chatglm-tiny"), &f32_file, "f32", &[]));
    let quantized = tmp.path().join("q4_k_m.gguf");
    let script = "import ctypes, sys, llama_cpp\n\
        p = llama_cpp.llama_model_quantize_default_params()\n\
        p.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M\n\
        sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n";
    let o = std::process::Command::new(&python)
        .args(["-c", script, path_str(&f32_file), path_str(&quantized)])
        .output()
        .unwrap();
    assert!(o.status.success(), "llama_model_quantize: {}", stderr(&o));
    let back = tmp.path().join("back");
    convert(&quantized, &back);
    let source = Checkpoint::open_dir(&fixture("chatglm-tiny")).unwrap();
    let got = Checkpoint::open_dir(&back).unwrap();
    for e in source.entries() {
        let (want, _) = source.read_f32(&e.name).unwrap();
        let (back, _) = got.read_f32(&e.name).unwrap();
        let err: f32 = want.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum();
        let norm: f32 = want.iter().map(|a| a * a).sum();
        let rel = (err / norm).sqrt();
        // Q5_0 ~4.3%, Q8_0 ~0.5% here.
        assert!(rel < 0.06, "{}: relative error {rel}", e.name);
    }
    let wide = ModelDir::open(&back).unwrap().load(&device()).unwrap();
    let mut model = ModelDir::open(&quantized).unwrap().load(&device()).unwrap();
    let kept = model
        .linears_mut()
        .iter()
        .filter(|(_, l)| l.quant.is_some())
        .count();
    assert!(kept >= 6, "only {kept} linears kept in llama.cpp's blocks");
    assert_logits_within_1e5_of_scale(&model, &wide);
}

/// The largest logit difference of `model` against `wide` on two fixed rows of 12 tokens is
/// within 1e-5 of the logits' scale.
fn assert_logits_within_1e5_of_scale(
    model: &peft::models::CausalLm,
    wide: &peft::models::CausalLm,
) {
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 % 512) as i64).collect();
    let inputs = peft::models::Inputs::with_mask(ids, &[1; 24], 2, 12);
    let ours = to_vec(model.forward(&inputs, None));
    let want = to_vec(wide.forward(&inputs, None));
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5 * scale, "{diff} (scale {scale})");
}

//! `peft export gguf` of ChatGLM (llama.cpp's `chatglm` architecture) and of a Llama 3.1-style
//! rotary scaling (`rope_freqs`): the file's keys, names and values read back by our own GGUF
//! reader (always), and llama.cpp itself loading and running them (examples/
//! check_gguf_llama_cpp.py) when llama-cpp-python is installed.

use std::path::{Path, PathBuf};

use peft::gguf::dequant::{dequantize, GgmlType};
use peft::gguf::reader::Value;
use peft::io::Checkpoint;

use super::common::{fixture, path_str, stderr};
use super::gguf_export::{check_with_llama_cpp, export, f32s, listing, llama_python, ok, parse};

fn u32_key(g: &peft::gguf::reader::Gguf, key: &str) -> Option<u32> {
    match g.get(key)? {
        Value::U32(v) => Some(*v),
        _ => None,
    }
}

#[test]
fn a_chatglm_export_has_llama_cpp_chatglm_keys_and_its_fused_tensors_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("glm.gguf");
    ok(export(&fixture("chatglm-tiny"), &out, "f32", &[]));
    let (bytes, g) = parse(&out);
    assert_eq!(
        g.get("general.architecture"),
        Some(&Value::String("chatglm".into()))
    );
    // config.json: hidden 64, 4 heads of 16, 2 KV groups, ffn 112, 2 layers, seq_length 256.
    for (key, want) in [
        ("chatglm.embedding_length", 64),
        ("chatglm.block_count", 2),
        ("chatglm.feed_forward_length", 112),
        ("chatglm.attention.head_count", 4),
        ("chatglm.attention.head_count_kv", 2),
        ("chatglm.context_length", 256),
        ("chatglm.rope.dimension_count", 8),
    ] {
        assert_eq!(u32_key(&g, key), Some(want), "{key}");
    }
    assert_eq!(g.get("chatglm.rope.freq_base"), Some(&Value::F32(10000.0)));
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        g.get("tokenizer.ggml.pre"),
        Some(&Value::String("gpt-2".into()))
    );
    assert!(g.get("llama.block_count").is_none());
    // Every tensor comes back exactly, under llama.cpp's names, in PyTorch's layout.
    let ckpt = Checkpoint::open_dir(&fixture("chatglm-tiny")).unwrap();
    let pairs = [
        (
            "token_embd.weight",
            "transformer.embedding.word_embeddings.weight",
        ),
        ("output.weight", "transformer.output_layer.weight"),
        (
            "output_norm.weight",
            "transformer.encoder.final_layernorm.weight",
        ),
        (
            "blk.1.attn_qkv.weight",
            "transformer.encoder.layers.1.self_attention.query_key_value.weight",
        ),
        (
            "blk.1.attn_qkv.bias",
            "transformer.encoder.layers.1.self_attention.query_key_value.bias",
        ),
        (
            "blk.1.attn_output.weight",
            "transformer.encoder.layers.1.self_attention.dense.weight",
        ),
        (
            "blk.0.ffn_up.weight",
            "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight",
        ),
        (
            "blk.0.ffn_down.weight",
            "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight",
        ),
        (
            "blk.0.attn_norm.weight",
            "transformer.encoder.layers.0.input_layernorm.weight",
        ),
        (
            "blk.0.ffn_norm.weight",
            "transformer.encoder.layers.0.post_attention_layernorm.weight",
        ),
    ];
    assert_eq!(g.tensors.len(), 3 + 2 * 7);
    for (gguf, hf) in pairs {
        let info = g.tensors.iter().find(|t| t.name == gguf).unwrap();
        let (want, shape) = ckpt.read_f32(hf).unwrap();
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.dims, dims, "{gguf}");
        assert_eq!(info.ggml_type, 0, "{gguf}");
        let got = f32s(g.tensor_data(&bytes, info, 4 * want.len() as u64).unwrap());
        assert_eq!(got, want, "{gguf}");
    }
    // The fused gate/up: [2·112, 64] in PyTorch, ggml ne = [64, 224].
    let up = g.tensors.iter().find(|t| t.name == "blk.0.ffn_up.weight");
    assert_eq!(up.unwrap().dims, vec![64, 224]);
}

#[test]
fn a_chatglm_q8_0_export_keeps_norms_and_bias_f32_and_its_blocks_dequantize_within_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("glm.gguf");
    ok(export(&fixture("chatglm-tiny"), &out, "q8_0", &[]));
    let (bytes, g) = parse(&out);
    let ckpt = Checkpoint::open_dir(&fixture("chatglm-tiny")).unwrap();
    let qkv = "transformer.encoder.layers.0.self_attention.query_key_value";
    for (gguf, hf, ty) in [
        (
            "blk.0.attn_qkv.weight",
            format!("{qkv}.weight"),
            GgmlType::Q8_0,
        ),
        ("blk.0.attn_qkv.bias", format!("{qkv}.bias"), GgmlType::F32),
        (
            "blk.0.attn_norm.weight",
            "transformer.encoder.layers.0.input_layernorm.weight".into(),
            GgmlType::F32,
        ),
    ] {
        let info = g.tensors.iter().find(|t| t.name == gguf).unwrap();
        let (want, _) = ckpt.read_f32(&hf).unwrap();
        let n_bytes = ty.n_bytes(want.len() as u64).unwrap();
        let raw = g.tensor_data(&bytes, info, n_bytes).unwrap();
        let mut got = Vec::new();
        dequantize(ty, raw, &mut got);
        for (block, back) in want.chunks(32).zip(got.chunks(32)) {
            // Q8_0: half a step of absmax / 127, plus up to 127 steps times the f16 scale's
            // relative rounding (2^-11).
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let bound = 0.5 * step + 127.0 * step / 2048.0 + 1e-7;
            for (a, b) in block.iter().zip(back) {
                assert!((a - b).abs() <= bound, "{gguf}: {a} vs {b} (step {step})");
            }
        }
    }
}

/// `--type q4_k_m` of the tiny ChatGLM: the types llama.cpp's Q4_K_M mix picks for its shapes
/// (no row is a whole 256-value super-block: Q4_K falls back to Q5_0, Q6_K to Q8_0, and the
/// 112-column ffn_down to F16; examples/check_gguf_q4_k_m_mix.py finds llama.cpp's own
/// quantization of our f32 file byte-identical), each tensor read back by our reader within
/// its quantizer's error, merged or not.
#[test]
fn a_chatglm_q4_k_m_export_has_llama_cpp_types_and_comes_back_within_the_quantizers_error() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = fixture("chatglm-tiny-lora");
    let merged = Checkpoint::open_dir(&fixture("chatglm-tiny-lora-merged")).unwrap();
    let base = Checkpoint::open_dir(&fixture("chatglm-tiny")).unwrap();
    for (name, extra, want_ckpt) in [
        ("base", vec![], &base),
        ("merged", vec!["--adapter", path_str(&adapter)], &merged),
    ] {
        let out = tmp.path().join(format!("{name}.gguf"));
        ok(export(&fixture("chatglm-tiny"), &out, "q4_k_m", &extra));
        let (bytes, g) = parse(&out);
        assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));
        assert_eq!(g.tensors.len(), 3 + 2 * 7);
        let types: Vec<(&str, u32)> = g
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.ggml_type))
            .collect();
        let (f32_, f16_, q5_0, q8_0) = (0, 1, 6, 8);
        for (tensor, ty) in [
            ("token_embd.weight", q5_0),
            ("output.weight", q8_0),
            ("output_norm.weight", f32_),
            ("blk.0.attn_qkv.weight", q5_0),
            ("blk.1.attn_qkv.weight", q8_0),
            ("blk.1.attn_qkv.bias", f32_),
            ("blk.0.attn_output.weight", q5_0),
            ("blk.0.ffn_up.weight", q5_0),
            ("blk.0.ffn_down.weight", f16_),
            ("blk.1.ffn_down.weight", f16_),
            ("blk.1.ffn_norm.weight", f32_),
        ] {
            assert!(types.contains(&(tensor, ty)), "{name} {tensor}: {types:?}");
        }
        // The checkpoint key of each GGUF tensor, by the export's own naming.
        let hf_of: std::collections::HashMap<String, String> = want_ckpt
            .entries()
            .filter_map(|e| {
                let (gguf, _) = peft::gguf::export::chatglm::gguf_name(&e.name)?;
                Some((gguf, e.name.clone()))
            })
            .collect();
        for info in &g.tensors {
            let hf = &hf_of[&info.name];
            let (want, _) = want_ckpt.read_f32(hf).unwrap();
            let ty = GgmlType::from_id(info.ggml_type).unwrap();
            let raw = g
                .tensor_data(&bytes, info, ty.n_bytes(want.len() as u64).unwrap())
                .unwrap();
            let mut got = Vec::new();
            dequantize(ty, raw, &mut got);
            let err: f32 = want.iter().zip(&got).map(|(a, b)| (a - b) * (a - b)).sum();
            let norm: f32 = want.iter().map(|a| a * a).sum();
            let rel = (err / norm).sqrt();
            // Relative RMS error: Q5_0 ~2-3%, Q8_0 ~0.4%, F16 ~1e-4, F32 exact.
            let tol = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::Q8_0 => 0.01,
                _ => 0.06,
            };
            assert!(
                rel <= tol,
                "{name} {}: {ty:?} relative error {rel}",
                info.name
            );
        }
    }
}

#[test]
fn a_chatglm_lora_only_export_adapts_attn_qkv_and_ffn_up_with_b_unpermuted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter.gguf");
    let adapter = fixture("chatglm-tiny-lora");
    ok(export(
        &fixture("chatglm-tiny"),
        &out,
        "f32",
        &["--adapter", path_str(&adapter), "--lora-only"],
    ));
    let (bytes, g) = parse(&out);
    assert_eq!(
        g.get("general.architecture"),
        Some(&Value::String("chatglm".into()))
    );
    assert_eq!(g.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));
    let w = Checkpoint::open_files(&[adapter.join("adapter_model.safetensors")]).unwrap();
    let key = |m: &str, p: &str| {
        format!("base_model.model.transformer.encoder.layers.1.{m}.lora_{p}.weight")
    };
    for (module, gguf) in [
        ("self_attention.query_key_value", "attn_qkv"),
        ("mlp.dense_h_to_4h", "ffn_up"),
    ] {
        for (part, suffix) in [("A", "lora_a"), ("B", "lora_b")] {
            let (want, shape) = w.read_f32(&key(module, part)).unwrap();
            let name = format!("blk.1.{gguf}.weight.{suffix}");
            let info = g.tensors.iter().find(|t| t.name == name).unwrap();
            assert_eq!(info.dims, vec![shape[1] as u64, shape[0] as u64], "{name}");
            let got = f32s(g.tensor_data(&bytes, info, 4 * want.len() as u64).unwrap());
            assert_eq!(got, want, "{name}");
        }
    }
    assert_eq!(g.tensors.len(), 2 * 2 * 2);
}

/// A copy of the tiny Llama with `model_type` or rotary scaling changed.
fn llama_variant(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixture("llama-tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    model
}

/// Llama 3.1 scaling with short wavelengths: head_dim 16, theta 10000, an original context of
/// 256 (so the 8 frequencies fall in all three regions), factor 32.
fn llama3_config(c: &mut serde_json::Value) {
    c["rope_parameters"] = serde_json::json!({"rope_theta": 10000.0, "rope_type": "llama3",
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256});
}

#[test]
fn a_llama3_scaled_model_exports_the_rope_freqs_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama_variant(tmp.path(), llama3_config);
    let out = tmp.path().join("l3.gguf");
    ok(export(&model, &out, "q8_0", &[]));
    let (bytes, g) = parse(&out);
    let info = g
        .tensors
        .iter()
        .find(|t| t.name == "rope_freqs.weight")
        .unwrap();
    assert_eq!((info.dims.clone(), info.ggml_type), (vec![8], 0));
    let got = f32s(g.tensor_data(&bytes, info, 32).unwrap());
    // wavelengths 2π·10000^(i/8): 6.3, 19.9, 62.8 (< 256/4: kept), 198.7 (smoothed), then
    // > 256 (divided by 32).
    assert_eq!(&got[..3], &[1.0, 1.0, 1.0]);
    let smooth = (256.0f32 / (2.0 * std::f32::consts::PI * 10000f32.powf(6.0 / 16.0)) - 1.0) / 3.0;
    assert!(
        (got[3] - 1.0 / ((1.0 - smooth) / 32.0 + smooth)).abs() < 1e-5,
        "{got:?}"
    );
    assert_eq!(&got[4..], &[32.0; 4]);
}

#[test]
fn an_unsupported_architecture_is_refused_by_name_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama_variant(tmp.path(), |c| c["model_type"] = "gpt2".into());
    let outs = tmp.path().join("out");
    std::fs::create_dir(&outs).unwrap();
    let o = export(&model, &outs.join("m.gguf"), "f16", &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "architecture `gpt2` cannot be exported to GGUF yet (supported: llama, chatglm)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(listing(&outs).is_empty(), "{:?}", listing(&outs));
    // A ChatGLM whose graph llama.cpp cannot build is refused too, by its config key.
    let glm = tmp.path().join("glm");
    std::fs::create_dir(&glm).unwrap();
    for e in std::fs::read_dir(fixture("chatglm-tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), glm.join(e.file_name())).unwrap();
    }
    let path = glm.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"add_bias_linear\": false", "\"add_bias_linear\": true"),
    )
    .unwrap();
    let o = export(&glm, &outs.join("g.gguf"), "f16", &[]);
    assert!(stderr(&o).contains("add_bias_linear"), "{}", stderr(&o));
    assert!(listing(&outs).is_empty(), "{:?}", listing(&outs));
}

/// llama.cpp loads the tiny ChatGLM (base f32/f16/q8_0, merged with chatglm-tiny-lora, base +
/// GGUF LoRA) and agrees with our logits (f32 within 1e-3), tokenizer ids and greedy ids.
#[test]
fn llama_cpp_loads_our_chatglm_exports_and_agrees_with_our_logits() {
    let Some(python) =
        llama_python("llama_cpp_loads_our_chatglm_exports_and_agrees_with_our_logits")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    check_with_llama_cpp(
        &python,
        &fixture("chatglm-tiny"),
        &fixture("chatglm-tiny-lora"),
        &tmp.path().join("work"),
    );
}

/// llama.cpp applies our `rope_freqs` as transformers' llama3 scaling: its logits on the
/// llama3-scaled tiny Llama equal ours (which differ from the unscaled model's).
#[test]
fn llama_cpp_runs_our_llama3_scaled_export_like_our_model() {
    let Some(python) = llama_python("llama_cpp_runs_our_llama3_scaled_export_like_our_model")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = llama_variant(tmp.path(), llama3_config);
    check_with_llama_cpp(
        &python,
        &model,
        &fixture("adapters/lora"),
        &tmp.path().join("work"),
    );
}

/// ChatGLM3's SentencePiece tokenizer (chatglm-tiny with spm-tiny's BPE model as its
/// `tokenizer.model`, no tokenizer.json): written as `set_vocab_chatglm3` does, and, with the
/// venv, llama.cpp's ids on our file equal our tokenizer's on spm-tiny's texts.
#[test]
fn a_chatglm3_sentencepiece_tokenizer_exports_as_chatglm_spm_with_thudm_specials() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("glm3");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(fixture("chatglm-tiny").join(f), model.join(f)).unwrap();
    }
    std::fs::copy(fixture("spm-tiny/bpe.model"), model.join("tokenizer.model")).unwrap();
    let out = tmp.path().join("glm3.gguf");
    ok(export(&model, &out, "f32", &[]));
    let (_, g) = parse(&out);
    assert_eq!(
        g.get("tokenizer.ggml.pre"),
        Some(&Value::String("chatglm-spm".into()))
    );
    let tokens = g.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let types = g.get_array("tokenizer.ggml.token_type").unwrap().unwrap();
    assert_eq!(tokens.len(), 512);
    let s = |i: usize| match &tokens[i] {
        Value::String(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (s(0), s(1), s(2)),
        ("<unk>".into(), "<bos>".into(), "<eos>".into())
    );
    // spm-tiny's BPE model has 420 pieces; THUDM's nine specials follow, then padding.
    assert_eq!(s(421), "[gMASK]");
    assert_eq!(s(428), "<|observation|>");
    assert_eq!(types[421], Value::I32(3));
    assert_eq!(
        (s(429), types[429].clone()),
        ("[PAD429]".into(), Value::I32(5))
    );
    let Some(python) = llama_python(
        "a_chatglm3_sentencepiece_tokenizer_exports_as_chatglm_spm_with_thudm_specials",
    ) else {
        return;
    };
    let cases = std::fs::read_to_string(fixture("spm-tiny/expected.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&cases).unwrap();
    let texts: Vec<String> = cases["bpe"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let ours = tmp.path().join("ours.json");
    let mut args = vec![
        "export".to_string(),
        "logits".into(),
        "--model".into(),
        path_str(&model).into(),
        "--out".into(),
        path_str(&ours).into(),
    ];
    for t in &texts {
        args.extend(["--text".to_string(), t.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(super::common::run_peft(&args));
    let script = r#"
import json, sys, llama_cpp
texts = json.load(open(sys.argv[2]))
ours = json.load(open(sys.argv[3]))["ids"]
llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
bad = [(t, llm.tokenize(t.encode(), add_bos=False, special=True), o) for t, o in zip(texts, ours)
       if llm.tokenize(t.encode(), add_bos=False, special=True) != o]
print(len(texts), "texts; differ:", bad)
sys.exit(1 if bad else 0)
"#;
    let texts_path = tmp.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    let o = std::process::Command::new(python)
        .args([
            "-c",
            script,
            path_str(&out),
            path_str(&texts_path),
            path_str(&ours),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// llama.cpp's own Q4_K_M quantizer (`llama_model_quantize`) applied to our f32 export gives
/// the same tensors, types and bytes as our `--type q4_k_m`: for the tiny ChatGLM and Llama
/// (fallback types) and for a random 8-layer ChatGLM with 256-wide rows (attn_qkv / ffn_down in
/// Q6_K or Q4_K by layer, output Q6_K), via examples/check_gguf_q4_k_m_mix.py.
#[test]
fn llama_cpp_quantizes_our_f32_exports_to_our_q4_k_m_bytes() {
    let test = "llama_cpp_quantizes_our_f32_exports_to_our_q4_k_m_bytes";
    let Some(python) = llama_python(test) else {
        return;
    };
    let has_gguf = std::process::Command::new(&python)
        .args(["-c", "import gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_gguf {
        eprintln!(
            "\n*** {test}: SKIPPED: `{python} -c 'import gguf'` fails (pip install gguf) ***\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/check_gguf_q4_k_m_mix.py");
    let (glm, llama, synthetic) = (
        fixture("chatglm-tiny"),
        fixture("llama-tiny"),
        tmp.path().join("synthetic"),
    );
    let o = std::process::Command::new(&python)
        .arg(script)
        .args(["--peft", env!("CARGO_BIN_EXE_peft")])
        .args(["--work", path_str(&tmp.path().join("work"))])
        .args(["--model", path_str(&glm), "--model", path_str(&llama)])
        .args(["--synthetic-chatglm", path_str(&synthetic)])
        .args(["--tokenizer-from", path_str(&glm)])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

//! `peft export gguf`: round trips through our own `peft convert gguf` (always), the quantizers
//! against gguf-py's and llama.cpp's bytes (fixture from tests/fixtures/gguf_export/
//! make_quant_reference.py), refusals, and llama.cpp itself loading our files
//! (examples/check_gguf_llama_cpp.py) when llama-cpp-python is installed.

use std::path::{Path, PathBuf};
use std::process::Output;

use peft::gguf::reader::{Gguf, Value};
use peft::io::Checkpoint;

use super::common::{fixture, path_str, run_peft, stderr};

pub(super) fn ok(o: Output) -> Output {
    assert!(o.status.success(), "peft failed: {}", stderr(&o));
    o
}

pub(super) fn export(model: &Path, out: &Path, ty: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "export",
        "gguf",
        "--model",
        path_str(model),
        "--out",
        path_str(out),
        "--type",
        ty,
    ];
    args.extend(extra);
    run_peft(&args)
}

/// Exports the tiny Llama as `ty` and converts it back to a Hugging Face folder (f32).
fn round_trip(ty: &str, extra: &[&str]) -> (tempfile::TempDir, Checkpoint) {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    ok(export(&fixture("llama-tiny"), &gguf, ty, extra));
    let back = tmp.path().join("back");
    ok(run_peft(&[
        "convert",
        "gguf",
        path_str(&gguf),
        "--out",
        path_str(&back),
    ]));
    let ckpt = Checkpoint::open_dir(&back).unwrap();
    (tmp, ckpt)
}

fn rounded(ty: &str, v: f32) -> f32 {
    match ty {
        "f16" => half::f16::from_f32(v).to_f32(),
        "bf16" => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

#[test]
fn f32_f16_and_bf16_exports_come_back_exactly_through_convert_gguf() {
    let base = Checkpoint::open_dir(&fixture("llama-tiny")).unwrap();
    for ty in ["f32", "f16", "bf16"] {
        let (_tmp, back) = round_trip(ty, &[]);
        let mut n = 0;
        for e in base.entries() {
            let (want, shape) = base.read_f32(&e.name).unwrap();
            let (got, got_shape) = back.read_f32(&e.name).unwrap();
            assert_eq!(shape, got_shape, "{ty} {}", e.name);
            // Norms (1-D) stay f32 in every file type, as convert_hf_to_gguf.py writes them.
            let t = if shape.len() == 1 { "f32" } else { ty };
            let want: Vec<f32> = want.iter().map(|&v| rounded(t, v)).collect();
            assert_eq!(got, want, "{ty} {}", e.name);
            n += 1;
        }
        assert_eq!(n, base.entries().count());
    }
}

#[test]
fn quantized_exports_come_back_within_the_quantizers_error() {
    let base = Checkpoint::open_dir(&fixture("llama-tiny")).unwrap();
    // Worst relative RMS error per tensor: Q8_0 ~0.4%, Q4_0 / Q5_0 (the q4_k_m fallback for
    // 64-wide rows) a few %.
    for (ty, tol) in [("q8_0", 0.01), ("q4_0", 0.12), ("q4_k_m", 0.08)] {
        let (_tmp, back) = round_trip(ty, &[]);
        for e in base.entries() {
            let (want, _) = base.read_f32(&e.name).unwrap();
            let (got, _) = back.read_f32(&e.name).unwrap();
            let err: f32 = want.iter().zip(&got).map(|(a, b)| (a - b) * (a - b)).sum();
            let norm: f32 = want.iter().map(|a| a * a).sum();
            let rel = (err / norm).sqrt();
            assert!(rel < tol, "{ty} {}: relative error {rel}", e.name);
        }
    }
}

#[test]
fn a_merged_export_equals_peft_merge_of_the_same_adapter() {
    let adapter = fixture("adapters/lora");
    let (_tmp, back) = round_trip("f32", &["--adapter", path_str(&adapter)]);
    let merged = Checkpoint::open_dir(&fixture("merged/lora")).unwrap();
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

pub(super) fn parse(path: &Path) -> (Vec<u8>, Gguf) {
    let bytes = std::fs::read(path).unwrap();
    let g = Gguf::parse(path, &bytes).unwrap();
    (bytes, g)
}

pub(super) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn a_lora_only_export_is_a_llama_cpp_adapter_with_permuted_q_and_k_b() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter.gguf");
    let adapter = fixture("adapters/lora");
    ok(export(
        &fixture("llama-tiny"),
        &out,
        "f32",
        &["--adapter", path_str(&adapter), "--lora-only"],
    ));
    let (bytes, g) = parse(&out);
    assert_eq!(
        g.get("general.type"),
        Some(&Value::String("adapter".into()))
    );
    assert_eq!(g.get("adapter.type"), Some(&Value::String("lora".into())));
    assert_eq!(
        g.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(g.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));
    let w = Checkpoint::open_files(&[adapter.join("adapter_model.safetensors")]).unwrap();
    let key =
        |m: &str, p: &str| format!("base_model.model.model.layers.0.self_attn.{m}.lora_{p}.weight");
    for (module, gguf, heads) in [
        ("q_proj", "attn_q", 4),
        ("k_proj", "attn_k", 2),
        ("v_proj", "attn_v", 0),
    ] {
        let Ok((b, shape)) = w.read_f32(&key(module, "B")) else {
            continue;
        };
        let (a, a_shape) = w.read_f32(&key(module, "A")).unwrap();
        let info = |n: &str| g.tensors.iter().find(|t| t.name == n).unwrap().clone();
        let ia = info(&format!("blk.0.{gguf}.weight.lora_a"));
        let ib = info(&format!("blk.0.{gguf}.weight.lora_b"));
        assert_eq!(ia.dims, vec![a_shape[1] as u64, a_shape[0] as u64]);
        assert_eq!(ib.dims, vec![shape[1] as u64, shape[0] as u64]);
        let got_a = f32s(g.tensor_data(&bytes, &ia, 4 * a.len() as u64).unwrap());
        assert_eq!(got_a, a);
        let got_b = f32s(g.tensor_data(&bytes, &ib, 4 * b.len() as u64).unwrap());
        let back = if heads > 0 {
            peft::gguf::names::unpermute_rows(&got_b, shape[0], shape[1], heads).unwrap()
        } else {
            got_b
        };
        assert_eq!(
            back, b,
            "{module}: a plain LoRA keeps B, up to the row permutation"
        );
    }
    let modelfile = std::fs::read_to_string(tmp.path().join("adapter.Modelfile")).unwrap();
    assert!(modelfile.contains("ADAPTER ./adapter.gguf"), "{modelfile}");
}

#[test]
fn the_export_embeds_tokenizer_chat_template_and_writes_a_modelfile() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    ok(export(&fixture("llama-tiny"), &out, "f16", &[]));
    let (_, g) = parse(&out);
    assert_eq!(
        g.get("tokenizer.ggml.model"),
        Some(&Value::String("gpt2".into()))
    );
    assert_eq!(
        g.get("tokenizer.ggml.pre"),
        Some(&Value::String("gpt-2".into()))
    );
    assert_eq!(
        g.get_array("tokenizer.ggml.tokens").unwrap().unwrap().len(),
        512
    );
    assert!(!g
        .get_array("tokenizer.ggml.merges")
        .unwrap()
        .unwrap()
        .is_empty());
    let template = std::fs::read_to_string(fixture("llama-tiny/chat_template.jinja")).unwrap();
    assert_eq!(
        g.get("tokenizer.chat_template"),
        Some(&Value::String(template))
    );
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(1)));
    assert_eq!(g.get("llama.attention.head_count_kv"), Some(&Value::U32(2)));
    let modelfile = std::fs::read_to_string(tmp.path().join("m.Modelfile")).unwrap();
    assert!(modelfile.contains("FROM ./m.gguf"), "{modelfile}");
}

pub(super) fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let cases: Vec<(PathBuf, &str, Vec<&str>, &str)> = vec![(
        fixture("llama-tiny"),
        "q3_k",
        vec![],
        "unknown --type `q3_k`",
    )];
    for (model, ty, extra, want) in cases {
        let o = export(&model, &out, ty, &extra);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    }
    // An existing output is kept unless --force.
    std::fs::write(&out, b"keep").unwrap();
    let o = export(&fixture("llama-tiny"), &out, "f16", &[]);
    assert!(
        stderr(&o).contains("already exists (pass --force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    assert_eq!(listing(tmp.path()), ["m.gguf"]);
    ok(export(&fixture("llama-tiny"), &out, "f16", &["--force"]));
    // An output inside the model folder is an input: refused before any work.
    let o = export(
        &fixture("llama-tiny"),
        &fixture("llama-tiny/x.gguf"),
        "f16",
        &[],
    );
    assert!(
        stderr(&o).contains("lies inside the --model folder"),
        "{}",
        stderr(&o)
    );
    assert!(!fixture("llama-tiny/x.gguf").exists());
    // --lora-only of a method llama.cpp cannot apply.
    let o = export(
        &fixture("llama-tiny"),
        &tmp.path().join("d.gguf"),
        "f32",
        &[
            "--adapter",
            path_str(&fixture("adapters/dora")),
            "--lora-only",
        ],
    );
    assert!(
        stderr(&o).contains("DoRA adapters have no GGUF LoRA form"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("d.gguf").exists());
}

/// Our quantizers, byte for byte, against gguf-py 0.19 (Q8_0, Q4_0, Q5_0) and llama.cpp's
/// `ggml_quantize_chunk` (all six), on the rows of make_quant_reference.py.
#[test]
fn quantizers_match_gguf_py_and_llama_cpp_byte_for_byte() {
    use peft::gguf::{kquantize, quantize};
    let st = Checkpoint::open_files(&[fixture("gguf_export/quant_reference.safetensors")]).unwrap();
    let (x, shape) = st.read_f32("input").unwrap();
    let raw = |name: &str| {
        let e = st.get(name).unwrap_or_else(|| panic!("{name}"));
        st.bytes(e).to_vec()
    };
    let quantizers: [(&str, fn(&[f32]) -> Vec<u8>); 6] = [
        ("q8_0", quantize::quantize_q8_0),
        ("q4_0", quantize::quantize_q4_0),
        ("q5_0", kquantize::quantize_q5_0),
        ("q4_k", kquantize::quantize_q4_k),
        ("q5_k", kquantize::quantize_q5_k),
        ("q6_k", kquantize::quantize_q6_k),
    ];
    for (name, q) in quantizers {
        // Row by row, as the export quantizes each tensor.
        let ours: Vec<u8> = x.chunks(shape[1]).flat_map(q).collect();
        assert_eq!(ours, raw(&format!("{name}.ggml")), "{name} vs llama.cpp");
        if !name.ends_with("_k") {
            assert_eq!(ours, raw(&format!("{name}.gguf_py")), "{name} vs gguf-py");
        }
    }
}

/// `$PEFT_LLAMA_PYTHON`, else the cached venv, if it imports llama_cpp.
pub(super) fn llama_python(test: &str) -> Option<String> {
    python_with_llama_cpp(
        test,
        "PEFT_LLAMA_PYTHON",
        "/var/tmp/peft-cache/llama-venv/bin/python",
        "pip install llama-cpp-python into that venv",
    )
}

/// `$env_var`, else `default`, if that Python imports llama_cpp and numpy; otherwise the test
/// says loudly that it is skipped (`how`: how to make such a venv).
pub(super) fn python_with_llama_cpp(
    test: &str,
    env_var: &str,
    default: &str,
    how: &str,
) -> Option<String> {
    let python = std::env::var(env_var).unwrap_or_else(|_| default.into());
    let works = std::process::Command::new(&python)
        .args(["-c", "import llama_cpp, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(python);
    }
    let message = format!(
        "\n*** {test}: SKIPPED: `{python} -c 'import llama_cpp'` fails ({how}, or set {env_var}) ***\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
    None
}

/// Runs examples/check_gguf_llama_cpp.py on `model` and `adapter`; it must pass.
pub(super) fn check_with_llama_cpp(python: &str, model: &Path, adapter: &Path, work: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/check_gguf_llama_cpp.py");
    let o = std::process::Command::new(python)
        .arg(script)
        .args(["--peft", env!("CARGO_BIN_EXE_peft")])
        .args(["--model", path_str(model)])
        .args(["--adapter", path_str(adapter)])
        .args(["--work", path_str(work)])
        .args(["--json", path_str(&work.join("report.json"))])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// llama.cpp loads every exported variant of the tiny Llama (base f32/f16/q8_0/q4_k_m, merged,
/// base + GGUF LoRA) and agrees with our logits and tokenizer.
#[test]
fn llama_cpp_loads_our_exports_and_agrees_with_our_logits() {
    let Some(python) = llama_python("llama_cpp_loads_our_exports_and_agrees_with_our_logits")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    check_with_llama_cpp(
        &python,
        &fixture("llama-tiny"),
        &fixture("adapters/lora"),
        &tmp.path().join("work"),
    );
}

/// A model with a SentencePiece `tokenizer.model` (the tiny Llama with spm-tiny's BPE model):
/// exported as `tokenizer.ggml.model = llama` with scores and piece types; when llama.cpp is
/// installed, its tokenizer on our file gives sentencepiece's ids (spm-tiny/expected.json, the
/// cases without ChatGLM's out-of-model specials).
#[test]
fn a_sentencepiece_model_exports_a_llama_vocabulary_that_llama_cpp_tokenizes_like_sentencepiece() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("spm-llama");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama-tiny").join(f), model.join(f)).unwrap();
    }
    std::fs::copy(fixture("spm-tiny/bpe.model"), model.join("tokenizer.model")).unwrap();
    let out = tmp.path().join("spm.gguf");
    ok(export(&model, &out, "f32", &[]));
    let (_, g) = parse(&out);
    assert_eq!(
        g.get("tokenizer.ggml.model"),
        Some(&Value::String("llama".into()))
    );
    let tokens = g.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let scores = g.get_array("tokenizer.ggml.scores").unwrap().unwrap();
    let types = g.get_array("tokenizer.ggml.token_type").unwrap().unwrap();
    // 420 pieces, padded to config.json's vocab_size 512.
    assert_eq!((tokens.len(), scores.len(), types.len()), (512, 512, 512));
    assert_eq!(tokens[420], Value::String("[PAD420]".into()));
    let Some(python) = llama_python(
        "a_sentencepiece_model_exports_a_llama_vocabulary_that_llama_cpp_tokenizes_like_sentencepiece",
    ) else {
        return;
    };
    let script = r#"
import json, sys, llama_cpp
cases = [c for c in json.load(open(sys.argv[2]))["bpe"]["cases"] if "<|" not in c["text"] and "[gMASK]" not in c["text"]]
llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
bad = [c["text"] for c in cases if llm.tokenize(c["text"].encode(), add_bos=False, special=False) != c["ids"]]
print(len(cases), "cases;", "differ:", bad)
sys.exit(1 if bad or not cases else 0)
"#;
    let o = std::process::Command::new(python)
        .args(["-c", script, path_str(&out)])
        .arg(fixture("spm-tiny/expected.json"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

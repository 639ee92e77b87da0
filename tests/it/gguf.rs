//! `peft convert gguf`: the tiny fixture made with gguf-py (tests/fixtures/gguf/make_tiny_llama.py)
//! converted and compared tensor by tensor, tokenizer parity with transformers' own GGUF
//! conversion, bad inputs, and the real SmolLM2-135M-Instruct when examples/get_smollm2.sh has
//! fetched it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peft::gguf::{convert_gguf, ConvertOptions};
use rstest::rstest;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");
/// Tensors in the tiny fixture: embeddings, final norm, lm_head, and 9 per layer for 2 layers.
const TINY_TENSORS: usize = 21;

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("the peft binary runs")
}

fn read_json(path: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(path).expect("file exists")).expect("valid JSON")
}

fn f32_values(st: &SafeTensors, name: &str) -> Vec<f32> {
    let view = st.tensor(name).expect("tensor present");
    peft::io::dtype::to_f32(view.dtype(), view.data()).expect("float tensor")
}

fn convert_tiny(out: &Path, dtype: Dtype) {
    convert_gguf(
        &fixture("tiny_llama.gguf"),
        out,
        ConvertOptions {
            dtype,
            force: false,
        },
    )
    .expect("tiny fixture converts");
}

#[test]
fn tiny_fixture_matches_gguf_py_dequantization_tensor_by_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    convert_tiny(&out, Dtype::F32);
    let ours_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let expected_bytes = std::fs::read(fixture("tiny_llama_expected.safetensors")).unwrap();
    let (ours, expected) = (
        SafeTensors::deserialize(&ours_bytes).unwrap(),
        SafeTensors::deserialize(&expected_bytes).unwrap(),
    );
    let mut names = expected.names();
    names.sort();
    let mut ours_names = ours.names();
    ours_names.sort();
    assert_eq!(
        ours_names, names,
        "converted keys differ from the expected Hugging Face keys"
    );
    let mut compared = 0;
    for name in names {
        let (a, b) = (ours.tensor(name).unwrap(), expected.tensor(name).unwrap());
        assert_eq!(a.shape(), b.shape(), "{name}: shape");
        assert_eq!(a.dtype(), Dtype::F32, "{name}: dtype");
        // Bit-exact: both sides compute the same f32 operations (gguf-py quants.py).
        assert_eq!(a.data(), b.data(), "{name}: values differ from gguf-py");
        compared += 1;
    }
    assert_eq!(compared, TINY_TENSORS);
}

#[test]
fn cli_writes_config_and_tokenizer_files_from_the_gguf_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let run = peft(&[
        "convert",
        "gguf",
        fixture("tiny_llama.gguf").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let config = read_json(&out.join("config.json"));
    let expect = [
        ("model_type", Json::from("llama")),
        ("hidden_size", 32.into()),
        ("intermediate_size", 64.into()),
        ("num_hidden_layers", 2.into()),
        ("num_attention_heads", 4.into()),
        ("num_key_value_heads", 2.into()),
        ("head_dim", 8.into()),
        ("vocab_size", 295.into()),
        ("max_position_embeddings", 256.into()),
        ("rms_norm_eps", 1e-5.into()),
        ("rope_theta", 100000.0.into()),
        ("tie_word_embeddings", false.into()),
        ("bos_token_id", 1.into()),
        ("eos_token_id", 2.into()),
        ("pad_token_id", 2.into()),
    ];
    for (key, value) in expect {
        assert_eq!(config[key], value, "config.json `{key}`");
    }
    let tok_config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok_config["bos_token"], "<|im_start|>");
    assert_eq!(tok_config["eos_token"], "<|im_end|>");
    assert_eq!(tok_config["pad_token"], "<|im_end|>");
    assert_eq!(tok_config["add_bos_token"], false);
    assert!(tok_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert!(out.join("tokenizer.json").is_file());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a temporary folder was left behind"
    );
}

#[test]
fn bf16_output_holds_the_rounded_dequantized_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    convert_tiny(&out, Dtype::BF16);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let expected_bytes = std::fs::read(fixture("tiny_llama_expected.safetensors")).unwrap();
    let (ours, expected) = (
        SafeTensors::deserialize(&bytes).unwrap(),
        SafeTensors::deserialize(&expected_bytes).unwrap(),
    );
    let name = "model.layers.1.self_attn.k_proj.weight";
    assert_eq!(ours.tensor(name).unwrap().dtype(), Dtype::BF16);
    let rounded: Vec<f32> = f32_values(&expected, name)
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f32_values(&ours, name), rounded);
    assert_eq!(
        read_json(&out.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
}

#[test]
fn version_2_files_convert_like_version_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = dir.path().join("v2.gguf");
    std::fs::write(&v2, &bytes).unwrap();
    convert_gguf(
        &v2,
        &dir.path().join("v2"),
        ConvertOptions {
            dtype: Dtype::F32,
            force: false,
        },
    )
    .unwrap();
    convert_tiny(&dir.path().join("v3"), Dtype::F32);
    let read = |d: &str| std::fs::read(dir.path().join(d).join("model.safetensors")).unwrap();
    assert_eq!(read("v2"), read("v3"));
}

#[test]
fn reader_decodes_every_metadata_value_type() {
    use peft::gguf::{Gguf, Value};
    let path = fixture("tiny_llama.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let gguf = Gguf::parse(&path, &bytes).unwrap();
    let cases = [
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.f32", Value::F32(0.5)),
        ("test.bool", Value::Bool(true)),
        ("test.string", Value::String("héllo".into())),
        (
            "test.array",
            Value::Array(vec![Value::I32(1), Value::I32(2), Value::I32(3)]),
        ),
        ("test.u64", Value::U64(1 << 63)),
        ("test.i64", Value::I64(-(1 << 62))),
        ("test.f64", Value::F64(-0.25)),
    ];
    for (key, value) in cases {
        assert_eq!(gguf.get(key), Some(&value), "{key}");
    }
    assert_eq!(gguf.alignment, 64);
    assert_eq!(gguf.data_offset % 64, 0);
    assert_eq!(gguf.tensors.len(), TINY_TENSORS);
}

/// Replaces the first occurrence of `from` in `bytes` (same length) with `to`.
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in fixture");
    bytes[at..at + to.len()].copy_from_slice(to);
}

/// The fixture with the UINT32 metadata `key` set to `value`.
fn with_u32_key(mut bytes: Vec<u8>, key: &str, value: u32) -> Vec<u8> {
    // KV: key length u64, key, value type u32 (4 = UINT32), value.
    let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(key.as_bytes());
    pattern.extend_from_slice(&4u32.to_le_bytes());
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .expect("UINT32 key")
        + pattern.len();
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// The fixture with tensor `name`'s type id set to `type_id`.
fn with_tensor_type(mut bytes: Vec<u8>, name: &str, type_id: u32) -> Vec<u8> {
    // Tensor info: name length u64, name, n_dims u32, dims u64 × n_dims, type u32.
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("tensor info")
        + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&type_id.to_le_bytes());
    bytes
}

/// Ways an input file can be wrong.
#[derive(Debug, Clone, Copy)]
enum Bad {
    NotGguf,
    Empty,
    TruncatedHeader,
    TruncatedData,
    UnknownArchitecture,
    UnsupportedTensorType,
    WrongShape,
    HugeBlockCount,
}

fn bad_bytes(kind: Bad) -> Vec<u8> {
    let good = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    match kind {
        Bad::NotGguf => b"{\"model_type\": \"llama\"}\n".to_vec(),
        Bad::Empty => Vec::new(),
        Bad::TruncatedHeader => good[..200].to_vec(),
        Bad::TruncatedData => good[..good.len() - 100].to_vec(),
        Bad::UnknownArchitecture => {
            let mut b = good;
            patch(&mut b, b"llama", b"mamba");
            b
        }
        Bad::UnsupportedTensorType => with_tensor_type(good, "output_norm.weight", 16),
        // llama.feed_forward_length 64 -> 96: the FFN weights no longer fit the config.
        Bad::WrongShape => with_u32_key(good, "llama.feed_forward_length", 96),
        Bad::HugeBlockCount => with_u32_key(good, "llama.block_count", u32::MAX),
    }
}

#[rstest]
#[case(Bad::NotGguf, "not a GGUF file")]
#[case(Bad::Empty, "not a GGUF file")]
#[case(Bad::TruncatedHeader, "truncated or corrupt")]
#[case(Bad::TruncatedData, "truncated or corrupt: data of tensor")]
#[case(Bad::UnknownArchitecture, "unsupported architecture `mamba`")]
#[case(
    Bad::UnsupportedTensorType,
    "tensor `output_norm.weight` has type IQ2_XXS"
)]
#[case(
    Bad::WrongShape,
    "tensor `blk.0.ffn_gate.weight`: shape [64, 32] (as [out, in]), expected [96, 32]"
)]
#[case(
    Bad::HugeBlockCount,
    "llama.block_count 4294967295 needs more than the 21 tensors present"
)]
fn bad_input_fails_clearly_and_writes_nothing(#[case] kind: Bad, #[case] expected_message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.gguf");
    std::fs::write(&input, bad_bytes(kind)).unwrap();
    let out = dir.path().join("out");
    let run = peft(&[
        "convert",
        "gguf",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{kind:?}: succeeded");
    assert!(
        stderr.contains(expected_message),
        "{kind:?}: stderr was {stderr}"
    );
    assert!(
        stderr.contains("input.gguf"),
        "{kind:?}: the error does not name the file: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("input.gguf")],
        "{kind:?}: something was written"
    );
}

#[test]
fn a_file_cut_anywhere_is_an_error_never_a_panic() {
    let good = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("cut.gguf"), dir.path().join("out"));
    let mut tried = 0;
    for len in (0..good.len()).step_by(37) {
        std::fs::write(&input, &good[..len]).unwrap();
        let result = convert_gguf(
            &input,
            &out,
            ConvertOptions {
                dtype: Dtype::F32,
                force: false,
            },
        );
        assert!(result.is_err(), "a file cut at {len} bytes converted");
        assert!(!out.exists(), "a file cut at {len} bytes wrote output");
        tried += 1;
    }
    assert!(tried > 1000);
}

#[test]
fn an_existing_output_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let (input, out_arg) = (
        fixture("tiny_llama.gguf"),
        out.to_str().unwrap().to_string(),
    );
    let base = [
        "convert",
        "gguf",
        input.to_str().unwrap(),
        "--out",
        &out_arg,
    ];
    let refused = peft(&base);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert!(out.join("keep.txt").is_file());
    let forced = peft(&[&base[..], &["--force"]].concat());
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").is_file());
}

/// Encodes every case of a parity file (made by make_tokenizer_parity.py with transformers) with
/// our `tokenizer.json`; returns how many cases were compared.
fn check_tokenizer_parity(tokenizer_json: &Path, parity: &Path) -> usize {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json).expect("tokenizer.json loads");
    let record = read_json(parity);
    let cases = record["cases"].as_array().expect("cases");
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids = |v: &Json| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        };
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(plain.get_ids(), ids(&case["ids"]), "ids of {text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap().get_ids(),
            ids(&case["ids_with_special"]),
            "ids with specials of {text:?}"
        );
        assert_eq!(
            tok.decode(plain.get_ids(), false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
    cases.len()
}

#[test]
fn tiny_tokenizer_encodes_like_transformers_gguf_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    convert_tiny(&out, Dtype::F32);
    let compared = check_tokenizer_parity(
        &out.join("tokenizer.json"),
        &fixture("tiny_llama_tokenizer_parity.json"),
    );
    assert!(compared >= 10, "only {compared} parity cases");
}

#[test]
fn sentencepiece_vocabulary_encodes_like_transformers_gguf_conversion() {
    // A metadata-only GGUF: the tokenizer is built without a model (make_tiny_spm_tokenizer.py).
    let path = fixture("tiny_spm_tokenizer.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let gguf = peft::gguf::Gguf::parse(&path, &bytes).unwrap();
    let files = peft::gguf::tokenizer::build(&gguf, 128).expect("llama-type tokenizer builds");
    assert_eq!(files.tokenizer_config["add_bos_token"], true);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    std::fs::write(&json, files.tokenizer.to_string()).unwrap();
    let compared = check_tokenizer_parity(&json, &fixture("tiny_spm_tokenizer_parity.json"));
    assert!(compared >= 10, "only {compared} parity cases");
}

#[path = "gguf_smollm2.rs"]
mod smollm2;

#[path = "gguf_kquants.rs"]
mod kquants;

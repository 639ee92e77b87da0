//! GGUF k-quants (Q2_K..Q6_K): our dequantizers against gguf-py's on raw super-blocks
//! (tests/fixtures/gguf/make_kquant_blocks.py), a whole k-quant GGUF made with gguf-py's writer
//! converted by the CLI (make_tiny_kquant_llama.py), and truncated or lying k-quant tensors.

use peft::gguf::dequant::{dequantize, GgmlType};
use peft::gguf::{convert_gguf, ConvertOptions, Gguf};
use rstest::rstest;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;

use super::{fixture, peft, read_json, with_tensor_type};

/// FNV-1a 64, as `fnv1a64` in make_tiny_kquant_llama.py.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[rstest]
#[case("Q2_K", 10)]
#[case("Q3_K", 11)]
#[case("Q4_K", 12)]
#[case("Q5_K", 13)]
#[case("Q6_K", 14)]
fn k_quant_blocks_dequantize_bit_for_bit_like_gguf_py(#[case] name: &str, #[case] id: u32) {
    let bytes = std::fs::read(fixture("kquant_blocks.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let blocks = st.tensor(&format!("{name}.blocks")).unwrap();
    let expected = st.tensor(&format!("{name}.expected")).unwrap();
    let ty = GgmlType::from_id(id).expect("a supported type");
    let (block, size) = ty.block();
    assert_eq!(
        (block, size),
        (256, blocks.shape()[1]),
        "{name}: block size"
    );
    assert_eq!(expected.dtype(), Dtype::F32);
    let mut ours = Vec::new();
    dequantize(ty, blocks.data(), &mut ours);
    let theirs = le_f32s(expected.data());
    assert_eq!(ours.len(), theirs.len(), "{name}: value count");
    assert!(theirs.len() >= 4 * 256, "{name}: too few blocks");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{name}: value {i} (block {}, index {}): ours {a:e}, gguf-py {b:e}",
            i / 256,
            i % 256
        );
    }
}

#[test]
fn tiny_k_quant_gguf_converts_with_the_cli_and_matches_gguf_py_tensor_by_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kq");
    let run = peft(&[
        "convert",
        "gguf",
        fixture("tiny_kquant_llama.gguf").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&bytes).unwrap();
    let record = read_json(&fixture("tiny_kquant_llama_expected.json"));
    let expected = record["tensors"].as_object().expect("tensors");
    let mut names = ours.names();
    names.sort();
    let mut expected_names: Vec<&String> = expected.keys().collect();
    expected_names.sort();
    assert_eq!(names, expected_names, "converted keys");
    let mut k_quants = std::collections::BTreeSet::new();
    for (name, want) in expected {
        let t = ours.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}: dtype");
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape.as_slice(), "{name}: shape");
        let first: Vec<f32> = want["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            &le_f32s(t.data())[..first.len()],
            first,
            "{name}: first values"
        );
        assert_eq!(
            format!("{:016x}", fnv1a64(t.data())),
            want["fnv1a64"].as_str().unwrap(),
            "{name}: values differ from gguf-py's dequantization"
        );
        k_quants.insert(want["ggml_type"].as_str().unwrap().to_string());
    }
    let all: Vec<&str> = k_quants.iter().map(String::as_str).collect();
    assert_eq!(all, ["F32", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]);
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["hidden_size"], Json::from(256));
    assert_eq!(config["head_dim"], Json::from(128));
}

/// Runs the CLI on `bytes`; returns stderr, after checking it failed, named the file and wrote
/// nothing.
fn refused(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.gguf");
    std::fs::write(&input, bytes).unwrap();
    let out = dir.path().join("out");
    let run = peft(&[
        "convert",
        "gguf",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success(), "converted: {stderr}");
    assert!(stderr.contains("input.gguf"), "file not named: {stderr}");
    assert!(!out.exists(), "output written");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary left"
    );
    stderr
}

#[test]
fn a_truncated_k_quant_tensor_is_refused_with_the_tensor_name() {
    let path = fixture("tiny_kquant_llama.gguf");
    let good = std::fs::read(&path).unwrap();
    let gguf = Gguf::parse(&path, &good).unwrap();
    // The last tensor in the data section, cut in the middle of its last super-block.
    let last = gguf
        .tensors
        .iter()
        .max_by_key(|t| t.offset)
        .unwrap()
        .clone();
    let ty = GgmlType::from_id(last.ggml_type).unwrap();
    assert_eq!(ty.block().0, 256, "{}: not a k-quant", last.name);
    let end = gguf.data_offset + last.offset + ty.n_bytes(last.n_elements().unwrap()).unwrap();
    let cut = end as usize - ty.block().1 / 2;
    let stderr = refused(&good[..cut]);
    let expected = format!("truncated or corrupt: data of tensor `{}`", last.name);
    assert!(stderr.contains(&expected), "stderr was {stderr}");
}

#[test]
fn a_k_quant_type_on_rows_shorter_than_a_super_block_is_refused() {
    // tiny_llama's attn_norm has 32 elements: a Q4_K header there claims an eighth of a block.
    let good = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    let stderr = refused(&with_tensor_type(good, "blk.0.attn_norm.weight", 12));
    assert!(
        stderr.contains(
            "tensor `blk.0.attn_norm.weight`: rows of 32 elements are not whole Q4_K blocks of 256"
        ),
        "stderr was {stderr}"
    );
}

#[test]
fn a_k_quant_file_cut_anywhere_is_an_error_never_a_panic() {
    let good = std::fs::read(fixture("tiny_kquant_llama.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("cut.gguf"), dir.path().join("out"));
    // Every 997 bytes (a prime, so cuts land at every position inside the blocks), plus one byte short.
    let cuts = (0..good.len()).step_by(997).chain([good.len() - 1]);
    let mut tried = 0;
    for len in cuts {
        std::fs::write(&input, &good[..len]).unwrap();
        let opts = ConvertOptions {
            dtype: Dtype::F32,
            force: false,
        };
        assert!(
            convert_gguf(&input, &out, opts).is_err(),
            "a file cut at {len} bytes converted"
        );
        assert!(!out.exists(), "a file cut at {len} bytes wrote output");
        tried += 1;
    }
    assert!(tried > 300);
}

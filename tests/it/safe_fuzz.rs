//! Issue 15, the fuzz-style layer: property tests that generate configs, adapter configs, option
//! values and byte strings for the readers, and assert "an error or a valid result, never a
//! panic or an abort". Inputs come from `arbitrary::Unstructured` over seeded random bytes, so
//! every case is reproducible from its seed (printed on failure); the whole layer runs in a few
//! seconds of `cargo test`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use arbitrary::Unstructured;
use peft::peft::AdapterConfig;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::common::*;

/// Runs `case` on `n` seeded inputs; a panic fails the test naming the seed.
fn property(name: &str, n: u64, case: impl Fn(&mut Unstructured, u64)) {
    for seed in 0..n {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5afe);
        let bytes: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            case(&mut Unstructured::new(&bytes), seed)
        }));
        assert!(result.is_ok(), "{name}: seed {seed} panicked");
    }
}

/// Numbers users and attackers write: zero, one, small, huge, negative, fractional, the edges.
fn number(u: &mut Unstructured) -> Value {
    let pool = [
        json!(0),
        json!(1),
        json!(2),
        json!(7),
        json!(64),
        json!(-1),
        json!(0.5),
        json!(1.5),
        json!(-0.1),
        json!(1e308),
        json!(u32::MAX),
        json!(1u64 << 40),
        json!(1_000_000_000_000u64),
        json!(u64::MAX),
        json!(i64::MIN),
    ];
    match u.int_in_range(0..=9u8).unwrap_or(0) {
        0 => json!(u.arbitrary::<u64>().unwrap_or(0)),
        1 => json!(u.arbitrary::<i64>().unwrap_or(0)),
        2 => json!("text"),
        3 => Value::Null,
        4 => json!(u.arbitrary::<bool>().unwrap_or(false)),
        _ => pool[u.choose_index(pool.len()).unwrap_or(0)].clone(),
    }
}

/// The tiny Llama's config.json with some fields replaced by generated values.
fn llama_config(u: &mut Unstructured) -> Map<String, Value> {
    let mut map: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama-tiny/config.json")).unwrap())
            .unwrap();
    let keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
    ];
    for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
        let key = keys[u.choose_index(keys.len()).unwrap_or(0)];
        map.insert(key.into(), number(u));
    }
    map
}

#[test]
fn generated_config_json_gives_an_error_or_a_model_of_bounded_size() {
    property("config.json", 400, |u, _| {
        let map = llama_config(u);
        if let Ok(c) = peft::models::llama::LlamaConfig::from_json(&map, Path::new("config.json")) {
            assert!(c.num_hidden_layers <= peft::models::sizes::MAX_LAYERS);
            if c.num_hidden_layers <= 256 {
                let params: u64 = c
                    .linear_shapes()
                    .iter()
                    .map(|(_, i, o, _)| (*i as u64) * (*o as u64))
                    .sum();
                assert!(params <= peft::models::sizes::MAX_PARAMETERS);
            }
        }
    });
}

#[test]
fn generated_adapter_configs_give_an_error_or_values_in_range() {
    let types = [
        "LORA",
        "ADALORA",
        "IA3",
        "PROMPT_TUNING",
        "P_TUNING",
        "PREFIX_TUNING",
        "ADAPTION_PROMPT",
        "X",
    ];
    let keys = [
        "r",
        "lora_alpha",
        "lora_dropout",
        "init_r",
        "target_r",
        "deltaT",
        "beta1",
        "beta2",
        "orth_reg_weight",
        "num_virtual_tokens",
        "encoder_hidden_size",
        "encoder_dropout",
        "adapter_len",
        "adapter_layers",
        "total_step",
        "layers_to_transform",
        "target_modules",
        "rank_pattern",
        "alpha_pattern",
    ];
    property("adapter_config.json", 600, |u, _| {
        let mut raw = Map::new();
        raw.insert(
            "peft_type".into(),
            json!(types[u.choose_index(types.len()).unwrap_or(0)]),
        );
        raw.insert("target_modules".into(), json!(["q_proj", "v_proj"]));
        for _ in 0..u.int_in_range(0..=5u8).unwrap_or(0) {
            let key = keys[u.choose_index(keys.len()).unwrap_or(0)];
            let value = match key {
                "rank_pattern" | "alpha_pattern" => json!({"q_proj": number(u)}),
                "target_modules" => json!([number(u)]),
                _ => number(u),
            };
            raw.insert(key.into(), value);
        }
        if let Ok(c) =
            AdapterConfig::from_json(Value::Object(raw), Path::new("adapter_config.json"))
        {
            if let peft::peft::Method::Lora(o) | peft::peft::Method::AdaLora(o, _) = &c.method {
                assert!(o.lora_alpha.is_finite());
                assert!((0.0..1.0).contains(&o.lora_dropout));
            }
        }
    });
}

/// `valid` with up to four bytes changed, cut short, or extended.
fn mutate(u: &mut Unstructured, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => bytes.truncate(u.choose_index(bytes.len()).unwrap_or(0)),
        1 => bytes.extend(
            (0..u.int_in_range(1..=64u8).unwrap_or(1)).map(|_| u.arbitrary::<u8>().unwrap_or(0xff)),
        ),
        _ => {
            for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
                // Headers hold the interesting fields: aim there most of the time.
                let span = if u.arbitrary::<bool>().unwrap_or(true) {
                    bytes.len().min(512)
                } else {
                    bytes.len()
                };
                let at = u.choose_index(span.max(1)).unwrap_or(0);
                if let Some(b) = bytes.get_mut(at) {
                    *b = u.arbitrary::<u8>().unwrap_or(0xff);
                }
            }
        }
    }
    bytes
}

#[test]
fn mutated_safetensors_files_give_an_error_or_readable_tensors() {
    let valid = std::fs::read(fixture("llama-tiny/model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    property("safetensors", 150, |u, seed| {
        let path = tmp.path().join(format!("{seed}.safetensors"));
        std::fs::write(&path, mutate(u, &valid)).unwrap();
        if let Ok(file) = peft::io::Checkpoint::open_files(&[path.clone()]) {
            let names: Vec<String> = file.entries().map(|e| e.name.clone()).collect();
            for name in names {
                let _ = file.read_f32(&name);
            }
        }
        let _ = std::fs::remove_file(path);
    });
}

#[test]
fn mutated_gguf_files_give_an_error_or_a_parse() {
    let valid = std::fs::read(fixture("gguf/tiny_llama.gguf")).unwrap();
    property("gguf", 300, |u, _| {
        let bytes = mutate(u, &valid);
        let _ = peft::gguf::Gguf::parse(Path::new("fuzz.gguf"), &bytes);
    });
}

#[test]
fn generated_jsonl_lines_give_an_error_or_records() {
    let tokenizer = peft::tokenizer::TextTokenizer::load(&fixture("llama-tiny")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fields = [
        "text",
        "instruction",
        "input",
        "output",
        "messages",
        "conversations",
        "role",
        "content",
    ];
    property("jsonl", 150, |u, seed| {
        let mut lines = Vec::new();
        for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
            let line = match u.int_in_range(0..=3u8).unwrap_or(0) {
                0 => {
                    let n = u.int_in_range(0..=40usize).unwrap_or(0);
                    String::from_utf8_lossy(u.bytes(n).unwrap_or(b"")).replace('\n', " ")
                }
                _ => {
                    let mut m = Map::new();
                    for _ in 0..u.int_in_range(1..=3u8).unwrap_or(1) {
                        let f = fields[u.choose_index(fields.len()).unwrap_or(0)];
                        let v = match u.int_in_range(0..=3u8).unwrap_or(0) {
                            0 => json!(""),
                            1 => json!("hello world"),
                            2 => {
                                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
                            }
                            _ => number(u),
                        };
                        m.insert(f.into(), v);
                    }
                    Value::Object(m).to_string()
                }
            };
            lines.push(line);
        }
        let path = tmp.path().join(format!("{seed}.jsonl"));
        std::fs::write(&path, lines.join("\n")).unwrap();
        for skip in [false, true] {
            let mut config = peft::data::DataConfig::new(path.clone());
            config.skip_bad_records = skip;
            config.max_len = u.int_in_range(1..=64usize).unwrap_or(16);
            let _ = peft::data::prepare(&config, &tokenizer);
        }
    });
}

#[test]
fn generated_train_options_give_an_error_or_a_run_never_a_panic() {
    let flags: [(&str, &[&str]); 12] = [
        ("--lr", &["nan", "inf", "0", "-1", "1e300", "1e-3"]),
        ("--eps", &["nan", "0", "1e-8", "-1"]),
        ("--weight-decay", &["nan", "inf", "0.01"]),
        ("--alpha", &["nan", "-inf", "0", "16"]),
        (
            "--r",
            &["0", "1", "4", "1000000000", "18446744073709551615"],
        ),
        ("--dropout", &["nan", "1", "0.1"]),
        ("--batch-size", &["0", "1", "1000000000"]),
        ("--grad-accum", &["0", "2", "1000000000"]),
        ("--max-len", &["0", "1", "2", "100000000"]),
        ("--warmup-ratio", &["nan", "1", "0.5"]),
        ("--max-grad-norm", &["nan", "inf", "0"]),
        ("--eval-split", &["nan", "0.999", "0.1"]),
    ];
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    for seed in 0..64u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = tmp.path().join(format!("run{seed}"));
        let mut args: Vec<String> = [
            "train",
            "--model",
            path_str(&model),
            "--data",
            data,
            "--out",
            path_str(&out),
            "--max-steps",
            "1",
        ]
        .map(String::from)
        .to_vec();
        for (flag, values) in flags {
            if rng.random_bool(0.3) {
                args.push(format!(
                    "{flag}={}",
                    values[rng.random_range(0..values.len())]
                ));
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_peft(&refs);
        let err = stderr(&o);
        assert_ne!(
            o.status.code(),
            Some(101),
            "seed {seed} panicked: {args:?}\n{err}"
        );
        assert!(
            o.status.code().is_some(),
            "seed {seed} was killed (abort?): {args:?}\n{err}"
        );
        if o.status.success() {
            // A run that succeeds wrote a finite adapter (the writer refuses anything else).
            assert!(out.join("adapter_model.safetensors").is_file());
        }
    }
}

#[test]
fn generated_merge_options_give_an_error_or_a_finite_merge() {
    let scales = ["nan", "inf", "-inf", "1e30", "-1", "0", "0.5", "1"];
    let shards = [
        "0",
        "1B",
        "1",
        "-5GB",
        "99999999999999999999GB",
        "abc",
        "1.5e400MB",
        "2KB",
        "5GB",
    ];
    let dtypes = ["keep", "f16", "bf16", "f32"];
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..32u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = tmp.path().join(format!("merged{seed}"));
        let pick =
            |rng: &mut rand::rngs::StdRng, v: &[&'static str]| v[rng.random_range(0..v.len())];
        let args = [
            "merge".to_string(),
            "--base".into(),
            path_str(&fixture("llama-tiny")).into(),
            "--adapter".into(),
            path_str(&fixture("adapters/lora")).into(),
            "--out".into(),
            path_str(&out).into(),
            format!("--scale={}", pick(&mut rng, &scales)),
            format!("--max-shard-size={}", pick(&mut rng, &shards)),
            format!("--dtype={}", pick(&mut rng, &dtypes)),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_peft(&refs);
        let err = stderr(&o);
        assert_ne!(
            o.status.code(),
            Some(101),
            "seed {seed} panicked: {args:?}\n{err}"
        );
        assert!(
            o.status.code().is_some(),
            "seed {seed} was killed: {args:?}\n{err}"
        );
        if o.status.success() {
            let merged = peft::io::Checkpoint::open_dir(&out).unwrap();
            let names: Vec<String> = merged.entries().map(|e| e.name.clone()).collect();
            for name in names {
                let (v, _) = merged.read_f32(&name).unwrap();
                assert!(
                    v.iter().all(|x| x.is_finite()),
                    "seed {seed}: `{name}` not finite"
                );
            }
        } else {
            assert!(!out.exists(), "seed {seed}: a refused merge left output");
        }
    }
}

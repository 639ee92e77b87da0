//! `peft merge`: parity with PEFT's `merge_and_unload` on the fixtures, layout and dtype
//! preservation, and every refusal (nothing written, messages naming the file or tensor).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peft::io::{Checkpoint, OwnedTensor};
use peft::merge::{MergeOptions, MergePlan, NoProgress, OutFile, Sink};
use rstest::rstest;
use safetensors::Dtype;

/// Merged weights vs PEFT's (f32): max abs diff (fixtures/README.md).
const WEIGHT_TOL: f32 = 1e-6;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("the peft binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn merge_cli(base: &Path, adapters: &[PathBuf], out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "merge".to_string(),
        "--base".into(),
        base.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for a in adapters {
        args.extend(["--adapter".to_string(), a.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    peft(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "peft merge failed: {}", stderr(o));
}

fn assert_refused(o: &Output, out: &Path, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a refusal, got success: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention `{n}`: {err}");
    }
    assert!(
        !out.exists(),
        "a refused merge must leave no output at {}",
        out.display()
    );
}

fn tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<f32>)> {
    let ck = Checkpoint::open_dir(dir).expect("checkpoint opens");
    ck.entries()
        .map(|e| {
            let (v, shape) = ck.read_f32(&e.name).expect("float tensor");
            (e.name.clone(), (e.dtype, shape, v))
        })
        .collect()
}

/// Compares every tensor of `got` with `want` (same names, shapes); returns how many were compared.
fn assert_close(got: &Path, want: &Path, tol: impl Fn(f32) -> f32) -> usize {
    let (got, want) = (tensors(got), tensors(want));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    for (name, (_, shape, w)) in &want {
        let (_, gshape, g) = &got[name];
        assert_eq!(gshape, shape, "{name}: shape");
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| ((a - b).abs(), tol(*b)))
            .find(|(d, t)| d > t);
        assert!(worst.is_none(), "{name}: diff {worst:?} over tolerance");
    }
    assert!(!want.is_empty(), "compared zero tensors");
    want.len()
}

fn changed_tensors(a: &Path, b: &Path) -> usize {
    let (a, b) = (tensors(a), tensors(b));
    a.iter()
        .filter(|(n, (_, _, v))| b.get(*n).is_some_and(|(_, _, w)| v != w))
        .count()
}

#[rstest]
#[case::lora("llama-tiny", "adapters/lora", "merged/lora")]
#[case::rslora_with_rank_and_alpha_patterns(
    "llama-tiny",
    "adapters/lora-rslora-patterns",
    "merged/lora-rslora-patterns"
)]
#[case::regex_targets("llama-tiny", "adapters/lora-regex", "merged/lora-regex")]
#[case::dora("llama-tiny", "adapters/dora", "merged/dora")]
#[case::adalora("llama-tiny", "adapters/adalora", "merged/adalora")]
#[case::ia3("llama-tiny", "adapters/ia3", "merged/ia3")]
#[case::chatglm_fused_query_key_value(
    "chatglm-tiny",
    "chatglm-tiny-lora",
    "chatglm-tiny-lora-merged"
)]
fn merged_checkpoint_matches_peft_merge_and_unload(
    #[case] base: &str,
    #[case] adapter: &str,
    #[case] expected: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    assert_ok(&merge_cli(&fixture(base), &[fixture(adapter)], &out, &[]));
    let compared = assert_close(&out, &fixture(expected), |_| WEIGHT_TOL);
    assert!(compared >= 17, "compared only {compared} tensors");
    assert!(
        changed_tensors(&out, &fixture(base)) > 0,
        "the adapter changed nothing"
    );
    assert!(out.join("config.json").is_file());
    if base == "llama-tiny" {
        for f in [
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ] {
            assert!(out.join(f).is_file(), "{f} not copied");
        }
    }
}

#[test]
fn merging_into_the_bf16_sharded_base_keeps_bf16_and_the_five_shard_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, out) = (
        fixture("llama-tiny-bf16-sharded"),
        tmp.path().join("merged"),
    );
    assert_ok(&merge_cli(&base, &[fixture("adapters/lora")], &out, &[]));
    let index = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(d.join("model.safetensors.index.json")).unwrap())
            .unwrap()
    };
    let (got, want) = (index(&out), index(&base));
    assert_eq!(got["weight_map"], want["weight_map"]);
    assert_eq!(
        got["metadata"]["total_size"],
        want["metadata"]["total_size"]
    );
    for i in 1..=5 {
        let shard = format!("model-0000{i}-of-00005.safetensors");
        let (a, b) = (
            Checkpoint::open_dir(&out).unwrap(),
            Checkpoint::open_files(&[base.join(&shard)]).unwrap(),
        );
        for e in b.entries() {
            let o = a.get(&e.name).unwrap();
            assert_eq!(
                (
                    o.dtype,
                    a.shard_path(o).file_name().unwrap().to_str().unwrap()
                ),
                (Dtype::BF16, shard.as_str())
            );
        }
    }
    // Values: bf16(bf16 base + ΔW), with ΔW from the f32 fixtures; one bf16 ulp of slack.
    let (got, base_bf16, base_f32, merged_f32) = (
        tensors(&out),
        tensors(&base),
        tensors(&fixture("llama-tiny")),
        tensors(&fixture("merged/lora")),
    );
    let mut compared = 0;
    for (name, (_, _, g)) in &got {
        let (b16, b32, m32) = (&base_bf16[name].2, &base_f32[name].2, &merged_f32[name].2);
        for i in 0..g.len() {
            let want = b16[i] + (m32[i] - b32[i]);
            assert!(
                (g[i] - want).abs() <= want.abs() / 128.0 + 1e-6,
                "{name}[{i}]: {} vs {want}",
                g[i]
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 21);
}

#[test]
fn max_shard_size_repacks_into_an_indexed_set_of_shards_with_the_same_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    assert_ok(&merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/lora")],
        &out,
        &["--max-shard-size", "100KB"],
    ));
    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let files: std::collections::BTreeSet<_> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    assert!(files
        .iter()
        .all(|f| f.ends_with(&format!("-of-{:05}.safetensors", files.len()))));
    assert_eq!(index["metadata"]["total_size"], 139584 * 4);
    assert_eq!(
        assert_close(&out, &fixture("merged/lora"), |_| WEIGHT_TOL),
        21
    );
}

#[test]
fn dtype_f16_converts_every_tensor_and_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    assert_ok(&merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/lora")],
        &out,
        &["--dtype", "f16"],
    ));
    assert!(tensors(&out).values().all(|(d, _, _)| *d == Dtype::F16));
    assert_close(&out, &fixture("merged/lora"), |w| w.abs() / 1024.0 + 1e-4);
    let config = fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"dtype\": \"float16\""), "{config}");
}

#[test]
fn scale_weights_the_change_each_adapter_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("half");
    assert_ok(&merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/dora")],
        &out,
        &["--scale", "0.5"],
    ));
    let (got, base, full) = (
        tensors(&out),
        tensors(&fixture("llama-tiny")),
        tensors(&fixture("merged/dora")),
    );
    for (name, (_, _, g)) in &got {
        for ((x, b), f) in g.iter().zip(&base[name].2).zip(&full[name].2) {
            assert!((x - (b + 0.5 * (f - b))).abs() <= WEIGHT_TOL, "{name}");
        }
    }
}

#[test]
fn adalora_with_a_trained_rank_pattern_folds_kept_ranks_and_skips_pruned_modules() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    assert_ok(&merge_cli(
        &fixture("llama-tiny"),
        &[fixture("train/adalora/final")],
        &out,
        &[],
    ));
    let (got, base) = (tensors(&out), tensors(&fixture("llama-tiny")));
    // rank_pattern prunes q_proj to rank 0 in both layers and keeps ranks of v_proj.
    assert_eq!(
        got["model.layers.0.self_attn.q_proj.weight"].2,
        base["model.layers.0.self_attn.q_proj.weight"].2
    );
    assert_ne!(
        got["model.layers.0.self_attn.v_proj.weight"].2,
        base["model.layers.0.self_attn.v_proj.weight"].2
    );
}

/// Writes a safetensors file from f32 tensors.
fn write_f32(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) {
    let owned: Vec<(String, OwnedTensor)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, OwnedTensor::from_f32(s, &v)))
        .collect();
    peft::io::write_safetensors_atomic(path, &owned, None).unwrap();
}

/// A copy of llama-tiny's folder; `keep` filters the tensors, `config` edits config.json.
fn llama_copy(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
    config: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        fs::copy(fixture("llama-tiny").join(f), dir.join(f)).unwrap();
    }
    let kept = tensors(&fixture("llama-tiny"))
        .into_iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, (_, s, v))| (n, s, v))
        .collect();
    write_f32(&dir.join("model.safetensors"), kept);
    let mut c: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config(&mut c);
    fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&c).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A LoRA adapter folder with the given tensors (`r` 2, `lora_alpha` 4).
fn lora_adapter(
    dir: &Path,
    targets: &[&str],
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": targets, "task_type": "CAUSAL_LM"});
    fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    write_f32(&dir.join("adapter_model.safetensors"), tensors);
    dir.to_path_buf()
}

fn filled(shape: &[usize], v: f32) -> (Vec<usize>, Vec<f32>) {
    (
        shape.to_vec(),
        (0..shape.iter().product::<usize>())
            .map(|i| v * ((i % 7) as f32 - 3.0))
            .collect(),
    )
}

fn lora_pair(module: &str, a: &[usize], b: &[usize]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (sa, va) = filled(a, 0.01);
    let (sb, vb) = filled(b, 0.02);
    vec![
        (format!("base_model.model.{module}.lora_A.weight"), sa, va),
        (format!("base_model.model.{module}.lora_B.weight"), sb, vb),
    ]
}

#[test]
fn an_adapter_on_the_tied_head_unties_it_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama_copy(
        &tmp.path().join("tied"),
        |n| n != "lm_head.weight",
        |c| c["tie_word_embeddings"] = true.into(),
    );
    let adapter = lora_adapter(
        &tmp.path().join("head"),
        &["lm_head"],
        lora_pair("lm_head", &[2, 64], &[512, 2]),
    );
    let out = tmp.path().join("merged");
    let o = merge_cli(&base, &[adapter], &out, &[]);
    assert_ok(&o);
    assert!(stderr(&o).contains("untying"), "{}", stderr(&o));
    let (got, embed) = (
        tensors(&out),
        tensors(&base)["model.embed_tokens.weight"].2.clone(),
    );
    assert_eq!(
        got["model.embed_tokens.weight"].2, embed,
        "the input embedding must not change"
    );
    assert_ne!(
        got["lm_head.weight"].2, embed,
        "the head must carry the delta"
    );
    let config = fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        config.contains("\"tie_word_embeddings\": false"),
        "{config}"
    );
}

#[test]
fn tied_embeddings_stay_tied_when_no_adapter_touches_them() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama_copy(
        &tmp.path().join("tied"),
        |n| n != "lm_head.weight",
        |c| c["tie_word_embeddings"] = true.into(),
    );
    let out = tmp.path().join("merged");
    assert_ok(&merge_cli(&base, &[fixture("adapters/lora")], &out, &[]));
    assert!(!tensors(&out).contains_key("lm_head.weight"));
    assert!(fs::read_to_string(out.join("config.json"))
        .unwrap()
        .contains("\"tie_word_embeddings\": true"));
}

#[test]
fn an_adapter_from_another_base_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    // q_proj takes 64 inputs in llama-tiny; this adapter was made for 128.
    let adapter = lora_adapter(
        &tmp.path().join("wide"),
        &["q_proj"],
        lora_pair("model.layers.0.self_attn.q_proj", &[2, 128], &[64, 2]),
    );
    let out = tmp.path().join("merged");
    let o = merge_cli(&fixture("llama-tiny"), &[adapter], &out, &[]);
    assert_refused(
        &o,
        &out,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "lora_A.weight",
            "[2, 128]",
            "[2, 64]",
        ],
    );
}

#[test]
fn an_adapter_for_another_architecture_is_refused_naming_the_missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let o = merge_cli(
        &fixture("llama-tiny"),
        &[fixture("chatglm-tiny-lora")],
        &out,
        &[],
    );
    assert_refused(
        &o,
        &out,
        &[
            "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight",
            "does not have",
        ],
    );
}

#[test]
fn a_base_missing_a_tensor_the_adapter_expects_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama_copy(
        &tmp.path().join("base"),
        |n| n != "model.layers.1.self_attn.v_proj.weight",
        |_| {},
    );
    let out = tmp.path().join("merged");
    let o = merge_cli(&base, &[fixture("adapters/lora")], &out, &[]);
    assert_refused(
        &o,
        &out,
        &[
            "model.layers.1.self_attn.v_proj.weight",
            "adapter_model.safetensors",
        ],
    );
}

#[test]
fn a_missing_shard_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir(&base).unwrap();
    for e in fs::read_dir(fixture("llama-tiny-bf16-sharded")).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with("model-00003-of-00005.safetensors") {
            fs::copy(&p, base.join(p.file_name().unwrap())).unwrap();
        }
    }
    let out = tmp.path().join("merged");
    let o = merge_cli(&base, &[fixture("adapters/lora")], &out, &[]);
    assert_refused(&o, &out, &["model-00003-of-00005.safetensors"]);
}

#[test]
fn out_equal_to_base_is_refused_and_the_base_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama_copy(&tmp.path().join("base"), |_| true, |_| {});
    let before = fs::read(base.join("model.safetensors")).unwrap();
    let o = merge_cli(&base, &[fixture("adapters/lora")], &base, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is the base model folder"),
        "{}",
        stderr(&o)
    );
    let inside = base.join("sub");
    let o = merge_cli(&base, &[fixture("adapters/lora")], &inside, &["--force"]);
    assert_refused(&o, &inside, &["inside or contains the base"]);
    assert_eq!(fs::read(base.join("model.safetensors")).unwrap(), before);
    assert_eq!(
        fs::read_dir(&base).unwrap().count(),
        4,
        "nothing added to the base folder"
    );
}

#[test]
fn an_existing_out_is_refused_without_force_and_replaced_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/lora")],
        &out,
        &[],
    );
    assert!(
        !o.status.success()
            && stderr(&o).contains("already exists")
            && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    assert_ok(&merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/lora")],
        &out,
        &["--force"],
    ));
    assert!(!out.join("keep.txt").exists());
    assert_close(&out, &fixture("merged/lora"), |_| WEIGHT_TOL);
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporary folder left beside --out"
    );
}

#[test]
fn a_prompt_learning_adapter_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let o = merge_cli(
        &fixture("llama-tiny"),
        &[fixture("adapters/prefix")],
        &out,
        &[],
    );
    assert_refused(
        &o,
        &out,
        &["PREFIX_TUNING", "virtual tokens", "no weight to fold into"],
    );
}

/// A sink whose disk "fills up" after `budget` bytes: writes then fail with ENOSPC
/// (`ErrorKind::StorageFull`), exactly what a full file system returns mid-write.
struct FullDisk {
    budget: std::rc::Rc<std::cell::Cell<u64>>,
}

struct Budgeted {
    file: fs::File,
    budget: std::rc::Rc<std::cell::Cell<u64>>,
}

impl Write for Budgeted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        let n = self.file.write(&buf[..buf.len().min(left as usize)])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl OutFile for Budgeted {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl Sink for FullDisk {
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn OutFile>> {
        Ok(Box::new(Budgeted {
            file: fs::File::create(path)?,
            budget: self.budget.clone(),
        }))
    }
}

#[test]
fn a_disk_full_mid_merge_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let options = MergeOptions {
        base: fixture("llama-tiny-bf16-sharded"),
        adapters: vec![fixture("adapters/lora")],
        out: out.clone(),
        dtype: None,
        max_shard_size: None,
        force: false,
        scale: 1.0,
    };
    // The disk fills up in the middle of the third of five shards.
    let budget = std::rc::Rc::new(std::cell::Cell::new(150_000));
    let err = MergePlan::build(options)
        .unwrap()
        .execute(&mut FullDisk { budget }, &mut NoProgress)
        .unwrap_err();
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    assert!(
        chain.join(": ").contains("No space left on device"),
        "{chain:?}"
    );
    assert!(!out.exists());
    let left: HashMap<_, _> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| (e.unwrap().file_name(), ()))
        .collect();
    assert!(left.is_empty(), "partial output left behind: {left:?}");
}

mod loads_in_our_model {
    use peft::models::tensor_util::to_vec;
    use peft::models::ModelDir;
    use rstest::rstest;

    use crate::common::*;

    #[rstest]
    #[case::lora("lora")]
    #[case::dora("dora")]
    #[case::ia3("ia3")]
    #[case::rslora_patterns("lora-rslora-patterns")]
    fn merged_checkpoint_gives_the_adapter_logits_and_verify_agrees(#[case] name: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let o = run_peft(&[
            "merge",
            "--base",
            path_str(&fixture("llama-tiny")),
            "--adapter",
            path_str(&fixture(&format!("adapters/{name}"))),
            "--out",
            path_str(&out),
            "--verify",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("verified"), "{}", stderr(&o));
        let merged = ModelDir::open(&out).unwrap().load(&device()).unwrap();
        let reference = reference(&format!("adapters/{name}"));
        let (diff, compared) =
            reference.compare(&to_vec(merged.forward(&reference.inputs(), None)));
        assert!(compared > 40);
        assert!(
            diff <= LOGITS_TOL,
            "{name}: merged model vs PEFT's base+adapter logits: {diff}"
        );
    }
}

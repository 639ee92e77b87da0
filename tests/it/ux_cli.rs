//! What HF PEFT / Trainer / LLaMA-Factory users expect of `peft train` and `peft eval`: plain log
//! lines without a terminal, HF's file formats beside the adapter, a replayable run.toml, HF
//! flag and config names (issue 16).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::*;

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// `peft train` on the tiny model and the tiny data set, stderr piped (not a terminal).
fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let (model, data) = (fixture("llama-tiny"), repo("datasets/tiny_instruct.jsonl"));
    let mut args = vec!["train", "--model", path_str(&model), "--data", &data];
    args.extend_from_slice(&["--out", path_str(out), "--batch-size", "8", "--seed", "1"]);
    args.extend_from_slice(extra);
    let o = peft_bin()
        .args(&args)
        .env_remove("PEFT_PROGRESS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn metrics(out: &Path) -> Vec<Value> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn without_a_terminal_each_logging_step_and_every_eval_is_one_plain_line() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(
        tmp.path(),
        &[
            "--max-steps",
            "4",
            "--logging-steps",
            "2",
            "--eval-split",
            "0.125",
            "--eval-steps",
            "2",
        ],
    );
    let err = stderr(&o);
    assert!(!err.contains('\x1b'), "ANSI codes in a log file: {err:?}");
    let steps: Vec<&str> = err.lines().filter(|l| l.starts_with("step ")).collect();
    let train_lines: Vec<&&str> = steps.iter().filter(|l| l.contains("| loss ")).collect();
    assert_eq!(train_lines.len(), 2, "one line per logging step: {err}");
    for field in [
        "step 2/4",
        "epoch ",
        "lr ",
        "grad_norm ",
        "tok/s",
        "elapsed ",
        "remaining ",
    ] {
        assert!(
            train_lines[0].contains(field),
            "{field} missing: {}",
            train_lines[0]
        );
    }
    let evals = steps.iter().filter(|l| l.contains("eval_loss")).count();
    assert_eq!(
        evals, 2,
        "eval lines are printed, and the final eval runs once: {err}"
    );
    let eval_entries = metrics(tmp.path())
        .iter()
        .filter(|m| m["split"] == "eval")
        .count();
    assert_eq!(
        eval_entries, 2,
        "max_steps 4 is a multiple of eval_steps 2: one final eval"
    );
}

#[test]
fn logging_steps_log_the_mean_loss_of_their_window() {
    let every = tempfile::tempdir().unwrap();
    train(every.path(), &["--max-steps", "4", "--logging-steps", "1"]);
    let pairs = tempfile::tempdir().unwrap();
    train(pairs.path(), &["--max-steps", "4", "--logging-steps", "2"]);
    let loss = |m: &Vec<Value>, i: usize| m[i]["loss"].as_f64().unwrap();
    let (one, two) = (metrics(every.path()), metrics(pairs.path()));
    assert_eq!((one.len(), two.len()), (4, 2));
    assert!((loss(&two, 0) - (loss(&one, 0) + loss(&one, 1)) / 2.0).abs() < 1e-9);
    assert!((loss(&two, 1) - (loss(&one, 2) + loss(&one, 3)) / 2.0).abs() < 1e-9);
}

#[test]
fn trainer_state_json_holds_exactly_hf_trainer_state_fields() {
    let tmp = tempfile::tempdir().unwrap();
    train(
        tmp.path(),
        &[
            "--max-steps",
            "4",
            "--save-steps",
            "2",
            "--eval-split",
            "0.125",
            "--eval-steps",
            "2",
        ],
    );
    let fields = json(&fixture("train/trainer_state_fields.json"));
    let want: BTreeSet<&str> = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(want.len() > 10, "the fixture lists the dataclass fields");
    for dir in [tmp.path().to_path_buf(), tmp.path().join("checkpoint-2")] {
        let state = json(&dir.join("trainer_state.json"));
        let got: BTreeSet<&str> = state
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got, want, "{}", dir.display());
        assert!(
            dir.join("resume_state.json").is_file(),
            "our resume state beside it"
        );
    }
    let state = json(&tmp.path().join("trainer_state.json"));
    assert_eq!(state["global_step"], 4);
    assert!(state["epoch"].is_f64());
    let history = state["log_history"].as_array().unwrap();
    let train_entry = history.iter().find(|e| e.get("loss").is_some()).unwrap();
    for key in ["loss", "learning_rate", "grad_norm", "epoch", "step"] {
        assert!(
            train_entry.get(key).is_some(),
            "{key} missing: {train_entry}"
        );
    }
    assert!(history.iter().any(|e| e.get("eval_loss").is_some()));
}

#[test]
fn the_adapter_names_its_base_model_and_has_a_peft_model_card() {
    let tmp = tempfile::tempdir().unwrap();
    train(tmp.path(), &["--max-steps", "2"]);
    let config = json(&tmp.path().join("adapter_config.json"));
    assert_eq!(
        config["base_model_name_or_path"],
        path_str(&fixture("llama-tiny"))
    );
    let card = fs::read_to_string(tmp.path().join("README.md")).unwrap();
    let front = card.split("---").nth(1).unwrap();
    assert!(front.contains("library_name: peft"), "{card}");
    assert!(front.contains(&format!("base_model: {}", path_str(&fixture("llama-tiny")))));
    assert!(front.contains("- lora"), "{card}");
    assert!(
        card.contains("- lr: 0.0002") && card.contains("- r: 8"),
        "{card}"
    );
}

#[test]
fn adapter_configs_hold_only_keys_peft_0_13_knows_unless_set() {
    let fields = json(&fixture("adapters/peft-0.13/fields.json"));
    assert_eq!(fields["peft_version"], "0.13.2");
    let mut checked = 0;
    for method in [
        "lora", "dora", "ia3", "adalora", "prompt", "ptuning", "prefix",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        train(tmp.path(), &["--max-steps", "1", "--method", method]);
        let config = json(&tmp.path().join("adapter_config.json"));
        let peft_type = config["peft_type"].as_str().unwrap();
        let known: BTreeSet<&str> = fields[peft_type]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let unknown: Vec<&String> = config
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{method}: PEFT 0.13 fails on {unknown:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn run_toml_replays_the_run_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    train(
        &first,
        &[
            "--max-steps",
            "3",
            "--lr",
            "3e-3",
            "--r",
            "4",
            "--lr-scheduler",
            "cosine",
        ],
    );
    let toml = first.join("run.toml");
    let text = fs::read_to_string(&toml).unwrap();
    assert!(
        text.contains("lr = 0.003") && text.contains("adam-beta1 = 0.9"),
        "{text}"
    );
    let second = tmp.path().join("second");
    let o = peft_bin()
        .args([
            "train",
            "--config",
            path_str(&toml),
            "--out",
            path_str(&second),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = |d: &Path| fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        weights(&first),
        weights(&second),
        "the replay trained a different adapter"
    );
}

#[test]
fn config_files_take_snake_case_and_hf_names_and_suggest_the_nearest_key() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    fs::write(
        &good,
        "max_steps = 2\nlearning_rate = 1e-3\nlora_r = 2\nlogging_steps = 1\nlr_scheduler_type = \"constant_with_warmup\"\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    train(&out, &["--config", path_str(&good)]);
    assert_eq!(json(&out.join("adapter_config.json"))["r"], 2);
    assert_eq!(metrics(&out).len(), 2);
    let bad = tmp.path().join("bad.toml");
    fs::write(&bad, "max_step = 2\n").unwrap();
    let o = run_peft(&["train", "--config", path_str(&bad)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("unknown option `max_step`") && err.contains("did you mean `max-steps`"),
        "{err}"
    );
    assert!(
        err.contains("logging-steps"),
        "lists the accepted keys: {err}"
    );
}

#[test]
fn hf_flag_names_train_as_ours_and_save_total_limit_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(
        tmp.path(),
        &[
            "--max-steps",
            "7",
            "--save-steps",
            "2",
            "--save-total-limit",
            "2",
            "--learning-rate",
            "1e-3",
            "--lora-r",
            "2",
            "--lora-alpha",
            "4",
            "--lora-target",
            "q_proj,v_proj",
            "--cutoff-len",
            "64",
            "--gradient-accumulation-steps",
            "2",
            "--adam-beta1",
            "0.8",
            "--adam-beta2",
            "0.99",
        ],
    );
    let mut kept: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["checkpoint-4", "checkpoint-6"], "{}", stderr(&o));
    let config = json(&tmp.path().join("adapter_config.json"));
    assert_eq!(
        (config["r"].clone(), config["lora_alpha"].clone()),
        (2.into(), 4.0.into())
    );
    let run = fs::read_to_string(tmp.path().join("run.toml")).unwrap();
    for line in [
        "batch-size = 8",
        "grad-accum = 2",
        "adam-beta1 = 0.8",
        "max-len = 64",
    ] {
        assert!(run.contains(line), "{line}: {run}");
    }
    let (model, other) = (fixture("llama-tiny"), tmp.path().join("other"));
    let both = run_peft(&[
        "train",
        "--model",
        path_str(&model),
        "--out",
        path_str(&other),
        "--betas",
        "0.9,0.99",
        "--adam-beta1",
        "0.8",
    ]);
    assert!(stderr(&both).contains("not both"), "{}", stderr(&both));
}

#[test]
fn a_resumed_run_reports_only_the_steps_it_ran() {
    let tmp = tempfile::tempdir().unwrap();
    train(tmp.path(), &["--max-steps", "2", "--save-steps", "1"]);
    let o = train(
        tmp.path(),
        &[
            "--max-steps",
            "3",
            "--resume",
            path_str(&tmp.path().join("checkpoint-1")),
        ],
    );
    assert!(stderr(&o).contains("trained 2 steps"), "{}", stderr(&o));
}

#[test]
fn eval_refuses_training_only_flags_and_limit_scores_the_first_records() {
    let (model, data) = (fixture("llama-tiny"), repo("datasets/tiny_instruct.jsonl"));
    let base = ["eval", "--model", path_str(&model), "--data", &data];
    for extra in [
        ["--eval-split", "0.1"],
        ["--pack", "64"],
        ["--eval-data", &data],
    ] {
        let o = run_peft(&[&base[..], &extra[..]].concat());
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr(&o).contains(extra[0]), "{}", stderr(&o));
    }
    let o = run_peft(&[&base[..], &["--limit", "5", "--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let e: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(e["records"], 5);
}

#[test]
fn eval_without_a_terminal_reports_progress_in_plain_lines() {
    let (model, data) = (fixture("llama-tiny"), repo("datasets/tiny_instruct.jsonl"));
    let args = ["eval", "--model", path_str(&model), "--data", &data];
    let o = run_peft(&[&args[..], &["--batch-size", "1", "--limit", "4"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("batches 4/4 | elapsed"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in a log: {err}");
}

#[test]
fn merge_takes_model_like_every_other_command() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &["--max-steps", "1"]);
    let (merged, model) = (tmp.path().join("merged"), fixture("llama-tiny"));
    let args = [
        "merge",
        "--model",
        path_str(&model),
        "--adapter",
        path_str(&run),
    ];
    let o = run_peft(&[&args[..], &["--out", path_str(&merged)]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(merged.join("config.json").is_file());
}

/// `peft chat` with `input` piped to stdin; its stdout.
fn chat(input: &str, extra: &[&str]) -> String {
    use std::io::Write;
    let model = fixture("llama-tiny");
    let mut child = peft_bin()
        .args([
            "chat",
            "--model",
            path_str(&model),
            "--greedy",
            "--max-new-tokens",
            "5",
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn chat_answers_each_line_remembers_the_conversation_and_reset_forgets_it() {
    let one = chat("hello\n", &["--system", "Be brief."]);
    assert!(!one.trim().is_empty(), "no reply");
    let three = chat(
        "hello\nand then?\n/reset\nhello\n",
        &["--system", "Be brief."],
    );
    assert!(
        three.starts_with(&one),
        "first reply differs: {three:?} vs {one:?}"
    );
    assert!(
        three.ends_with(&one),
        "after /reset the same question gets the first answer"
    );
    assert!(
        three.len() > 2 * one.len(),
        "the second turn got no reply: {three:?}"
    );
    let model = fixture("llama-tiny");
    let generate = run_peft(&[
        "generate",
        "--model",
        path_str(&model),
        "--chat",
        "hello",
        "--system",
        "Be brief.",
        "--greedy",
        "--max-new-tokens",
        "5",
    ]);
    assert_eq!(
        stdout(&generate),
        one,
        "generate --chat --system renders as chat does"
    );
    let alpaca = chat("hello\n", &["--template", "alpaca"]);
    assert!(!alpaca.trim().is_empty());
}

#[test]
fn cutting_more_than_5_percent_of_records_is_warned_with_the_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(tmp.path(), &["--max-steps", "1", "--max-len", "40"]);
    let err = stderr(&o);
    assert!(
        err.contains("records are longer than --max-len 40 and were cut"),
        "{err}"
    );
    let quiet = tempfile::tempdir().unwrap();
    let o = train(quiet.path(), &["--max-steps", "1"]);
    assert!(!stderr(&o).contains("were cut"), "{}", stderr(&o));
}

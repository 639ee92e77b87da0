//! `peft compare` end to end on the tiny fixture model: every method of the fixture adapters (and
//! one without a preset) on a tiny label task, two steps each. Checks the output files, that the
//! trainable-parameter counts equal PEFT's for the same configs (the element counts of PEFT's own
//! saved fixture adapters), and that a method that cannot train is a row with its error.

use std::path::{Path, PathBuf};

use peft::io::Checkpoint;
use serde_json::Value;

use crate::common::{fixture, path_str, peft_bin, stderr};

/// Methods whose fixture adapters PEFT saved for llama-tiny (and whose saved tensors are exactly
/// their trainable weights). Two more have no preset file and train with `--method NAME`:
/// `ptuning` (its built-in defaults) and `no-such-method` (always an error row).
const FIXTURE_METHODS: [&str; 6] = ["lora", "dora", "ia3", "adalora", "prefix", "prompt"];
/// These rows must succeed.
const MUST_TRAIN: [&str; 7] = [
    "lora", "dora", "ia3", "adalora", "prefix", "prompt", "ptuning",
];

/// Trainable parameters as PEFT counts them for the fixture's config: every saved tensor,
/// except AdaLoRA's `ranknum` (a frozen buffer-like parameter PEFT saves but does not train).
fn peft_trainable(method: &str) -> u64 {
    let file = fixture("adapters")
        .join(method)
        .join("adapter_model.safetensors");
    let ckpt = Checkpoint::open_files(&[file]).expect("fixture adapter opens");
    ckpt.entries()
        .filter(|e| !e.name.ends_with(".ranknum"))
        .map(|e| e.shape.iter().product::<usize>() as u64)
        .sum()
}

/// A labels task: 12 training records, 4 held out, answers `yes` or `no`.
fn write_task(dir: &Path) {
    let record = |i: usize| {
        let answer = if i % 2 == 0 { "yes" } else { "no" };
        format!("{{\"instruction\": \"is {i} even?\", \"output\": \"{answer}\"}}\n")
    };
    let train: String = (0..12).map(record).collect();
    let eval: String = (12..16).map(record).collect();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(dir.join("eval.jsonl"), eval).unwrap();
}

fn write_presets(dir: &Path) {
    let mut toml = String::new();
    for m in FIXTURE_METHODS {
        let config = fixture("adapters").join(m).join("adapter_config.json");
        toml += &format!("[{m}]\npreset = \"{}\"\nlr = 1e-3\n", path_str(&config));
    }
    toml += "[ptuning]\npreset = \"ptuning.json\"\nlr = 1e-2\n[no-such-method]\nlr = 1e-3\n";
    std::fs::write(dir.join("compare.toml"), toml).unwrap();
}

#[test]
fn compare_writes_results_and_counts_trainable_parameters_as_peft() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    write_presets(tmp.path());
    let out = tmp.path().join("out");
    let methods = [&FIXTURE_METHODS[..], &["ptuning", "no-such-method"]]
        .concat()
        .join(",");
    let run = peft_bin()
        .args(["compare", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
        .args(["--eval-data", path_str(&tmp.path().join("eval.jsonl"))])
        .args(["--presets", path_str(&tmp.path().join("compare.toml"))])
        .args([
            "--methods",
            &methods,
            "--budget",
            "steps=2",
            "--batch-size",
            "2",
        ])
        .args(["--set", "lora.lr=2e-3", "--out", path_str(&out)])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    for f in [
        "results.json",
        "results.md",
        "loss_curves.svg",
        "metric_vs_params.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["task_metric"], "exact_match");
    let rows = results["methods"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "base",
            "lora",
            "dora",
            "ia3",
            "adalora",
            "prefix",
            "prompt",
            "ptuning",
            "no-such-method"
        ]
    );
    let base = &rows[0]["metrics"];
    assert_eq!(rows[0]["status"], "ok", "{}", rows[0]);
    assert_eq!(base["task_examples"], 4);
    assert!(base["eval_loss"].as_f64().unwrap().is_finite());
    let mut checked = 0;
    for row in &rows[1..] {
        let name = row["method"].as_str().unwrap();
        if row["status"] != "ok" {
            assert!(
                !MUST_TRAIN.contains(&name),
                "{name} failed: {}",
                row["error"]
            );
            assert!(!row["error"].as_str().unwrap_or("").is_empty(), "{row}");
            continue;
        }
        let m = &row["metrics"];
        assert_eq!(m["steps"], 2, "{name}");
        assert_eq!(row["curve"].as_array().unwrap().len(), 2, "{name}");
        let score = m["task_score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{name}: {score}");
        assert!(m["adapter_bytes"].as_u64().unwrap() > 0, "{name}");
        assert!(m["peak_rss_mib"].as_f64().unwrap() > 0.0, "{name}");
        assert!(m["tokens_per_s"].as_f64().unwrap() > 0.0, "{name}");
        if FIXTURE_METHODS.contains(&name) {
            assert_eq!(
                m["trainable_params"].as_u64(),
                Some(peft_trainable(name)),
                "{name}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, FIXTURE_METHODS.len(), "compared {checked} counts");
    assert_eq!(rows[1]["config"]["lr"], 2e-3, "--set lora.lr applies");
    assert_eq!(
        rows[7]["status"], "ok",
        "ptuning trains with its built-in defaults"
    );
    assert_eq!(rows[8]["status"], "error", "no-such-method is an error row");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    // The main table: a header and a row per method (the per-label section follows it).
    let main = md.split("\n## ").next().unwrap_or_default();
    let table: Vec<&str> = main.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table.len(), 1 + rows.len(), "{md}");
    assert!(md.contains("## Right answers per label"), "{md}");
    let loss_svg = std::fs::read_to_string(out.join("loss_curves.svg")).unwrap();
    assert!(loss_svg.matches("<polyline").count() >= MUST_TRAIN.len());
}

#[test]
fn compare_refuses_a_folder_with_results_and_unknown_methods() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    let base_args = |out: &Path, methods: &str, budget: &str| {
        let mut c = peft_bin();
        c.args(["compare", "--model", path_str(&fixture("llama-tiny"))])
            .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
            .args(["--eval-data", path_str(&tmp.path().join("eval.jsonl"))])
            .args([
                "--methods",
                methods,
                "--budget",
                budget,
                "--eval-limit",
                "1",
            ])
            .args(["--out", path_str(out)]);
        c
    };
    let unknown = base_args(&tmp.path().join("x"), "lora,lroa", "steps=1")
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("unknown method `lroa`"),
        "{}",
        stderr(&unknown)
    );
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), "{}").unwrap();
    let refused = base_args(&out, "ia3", "steps=1").output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--overwrite"),
        "{}",
        stderr(&refused)
    );
    let bad_budget = base_args(&tmp.path().join("y"), "ia3", "epochs=2")
        .output()
        .unwrap();
    assert!(!bad_budget.status.success());
    assert!(
        stderr(&bad_budget).contains("steps=N"),
        "{}",
        stderr(&bad_budget)
    );
}

fn read_results(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// Free-text answers (tiny_instruct) with a held-out split, under `budget`.
fn compare_free_text(out: &Path, budget: &str) -> std::process::Output {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    peft_bin()
        .args(["compare", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--data", path_str(&data), "--eval-split", "0.1"])
        .args([
            "--methods",
            "lora,ia3",
            "--budget",
            budget,
            "--eval-limit",
            "2",
        ])
        .args(["--max-new-tokens", "4", "--out", path_str(out)])
        .output()
        .unwrap()
}

#[test]
fn a_token_budget_gives_every_method_the_same_steps_and_free_text_is_scored_by_rouge_l() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = compare_free_text(&out, "tokens=1500");
    assert!(run.status.success(), "{}", stderr(&run));
    let results = read_results(&out);
    assert_eq!(results["task_metric"], "rouge_l");
    let rows = results["methods"].as_array().unwrap();
    let steps: Vec<u64> = rows[1..]
        .iter()
        .map(|r| r["metrics"]["steps"].as_u64().unwrap())
        .collect();
    assert_eq!(steps[0], steps[1]);
    assert_eq!(Some(steps[0]), results["common"]["steps"].as_u64());
    for row in &rows[1..] {
        let tokens = row["metrics"]["train_tokens"].as_u64().unwrap();
        let last_step: u64 = row["curve"].as_array().unwrap().len() as u64;
        assert!(tokens >= 1500, "{tokens}");
        assert_eq!(last_step, steps[0]);
    }
    // A ROUGE-L mean carries the sd of its examples' scores, for its interval in the table.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in rows {
        let name = row["method"].as_str().unwrap();
        let predictions = out.join("logs").join(format!("{name}.predictions.jsonl"));
        let scores: Vec<f64> = std::fs::read_to_string(predictions)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["score"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let var =
            scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (scores.len() - 1) as f64;
        let sd = row["metrics"]["task_score_sd"].as_f64().unwrap();
        assert!(
            (sd - var.sqrt()).abs() < 1e-12,
            "{name}: {sd} vs {}",
            var.sqrt()
        );
        let half = 1.959_963_984_540_054 * sd / (scores.len() as f64).sqrt();
        let cell = format!(
            "| {name} | {} | {mean:.3} [{:.3}, {:.3}] n={} |",
            row["config"]["lr"]
                .as_f64()
                .map_or("–".to_string(), |lr| format!("{lr:.0e}")),
            (mean - half).max(0.0),
            (mean + half).min(1.0),
            scores.len()
        );
        assert!(md.contains(&cell), "{cell} not in\n{md}");
    }
}

#[test]
fn a_minutes_budget_gives_each_method_the_same_step_time_and_scores_its_final_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = compare_free_text(&out, "minutes=0.02");
    assert!(run.status.success(), "{}", stderr(&run));
    let results = read_results(&out);
    assert_eq!(results["common"]["lr_scheduler"], "constant_with_warmup");
    for row in &results["methods"].as_array().unwrap()[1..] {
        assert_eq!(row["status"], "ok", "{row}");
        let steps = row["metrics"]["steps"].as_u64().unwrap();
        assert!(steps >= 1, "{row}");
        let run_dir = out.join("runs").join(row["method"].as_str().unwrap());
        assert!(run_dir.join("adapter_model.safetensors").is_file(), "{row}");
        // The trainer stopped after the step that reached 0.02 minutes of step time.
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join("resume_state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["global_step"].as_u64(), Some(steps), "{row}");
        let seconds = state["train_seconds"].as_f64().unwrap();
        assert!(seconds >= 1.2, "{row}: {seconds} s of steps");
    }
}

/// Per-example `(score, prediction)` of a `peft compare-eval` run (`extra` flags added).
fn scores(tmp: &Path, adapter: &Path, extra: &[&str]) -> Vec<(f64, String)> {
    let predictions = tmp.join("predictions.jsonl");
    let run = peft_bin()
        .args(["compare-eval", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--adapter", path_str(adapter), "--template", "alpaca"])
        .args(["--data", path_str(&tmp.join("train.jsonl"))])
        .args(["--eval-data", path_str(&tmp.join("eval.jsonl"))])
        .args(["--predictions", path_str(&predictions)])
        .args(extra)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| {
            let v = serde_json::from_str::<Value>(l).unwrap();
            let prediction = v["prediction"].as_str().unwrap().to_string();
            (v["score"].as_f64().unwrap(), prediction)
        })
        .collect()
}

#[test]
fn label_answers_read_off_the_teacher_forced_pass_score_as_greedy_generation() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    // The alpaca template ends each answer with EOS, so the tiny model can learn to stop.
    let adapter = tmp.path().join("adapter");
    let train = peft_bin()
        .args(["train", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
        .args(["--template", "alpaca", "--out", path_str(&adapter)])
        .args([
            "--max-steps",
            "80",
            "--lr",
            "1e-2",
            "--lr-scheduler",
            "constant",
        ])
        .output()
        .unwrap();
    assert!(train.status.success(), "{}", stderr(&train));
    let forced = scores(tmp.path(), &adapter, &[]);
    let generated = scores(tmp.path(), &adapter, &["--generate"]);
    assert_eq!(forced.len(), 4);
    // The same scores, and predictions.jsonl shows the real greedy answers, wrong ones included
    // (not the teacher-forced prefix up to the first wrong token).
    assert_eq!(forced, generated);
    assert!(
        forced.iter().map(|(s, _)| s).sum::<f64>() > 0.0,
        "nothing learned: {forced:?}"
    );
}

#[test]
fn cut_label_answers_score_as_greedy_generation_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    // Barely trained: most answers are wrong, so most are cut with no answer shown in full.
    let adapter = tmp.path().join("adapter");
    let train = peft_bin()
        .args(["train", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
        .args(["--template", "alpaca", "--out", path_str(&adapter)])
        .args(["--max-steps", "2"])
        .output()
        .unwrap();
    assert!(train.status.success(), "{}", stderr(&train));
    let cut = scores(tmp.path(), &adapter, &["--shown-answers", "0"]);
    let lines = std::fs::read_to_string(tmp.path().join("predictions.jsonl")).unwrap();
    let marks: Vec<bool> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["cut"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert!(marks.iter().any(|&m| m), "nothing cut: {cut:?}");
    let generated = scores(tmp.path(), &adapter, &["--generate"]);
    let score = |v: &[(f64, String)]| v.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(score(&cut), score(&generated));
    for ((cut, mark), whole) in cut.iter().zip(&marks).zip(&generated) {
        if *mark {
            assert_eq!(cut.0, 0.0);
        } else {
            assert_eq!(cut, whole, "an answer not cut is the generated one");
        }
    }
    // Shown in full (the default: the first five, and the task has four), nothing is cut.
    scores(tmp.path(), &adapter, &[]);
    let lines = std::fs::read_to_string(tmp.path().join("predictions.jsonl")).unwrap();
    assert!(!lines.contains("\"cut\":true"), "{lines}");
}

#[test]
fn no_shuffle_trains_every_method_on_the_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    let run_toml = |extra: &[&str]| {
        let out = tmp.path().join("out");
        let run = peft_bin()
            .args(["compare", "--model", path_str(&fixture("llama-tiny"))])
            .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
            .args(["--eval-data", path_str(&tmp.path().join("eval.jsonl"))])
            .args([
                "--methods",
                "lora",
                "--budget",
                "steps=2",
                "--batch-size",
                "2",
            ])
            .args(["--no-forgetting", "--overwrite", "--out", path_str(&out)])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", stderr(&run));
        let results = read_results(&out);
        let shuffle = results["common"]["shuffle"].clone();
        let toml = std::fs::read_to_string(out.join("runs/lora/run.toml")).unwrap();
        (toml, shuffle)
    };
    let (toml, shuffle) = run_toml(&["--no-shuffle"]);
    assert!(toml.contains("no-shuffle = true"), "{toml}");
    assert_eq!(shuffle, Value::Bool(false));
    let (toml, shuffle) = run_toml(&[]);
    assert!(toml.contains("no-shuffle = false"), "{toml}");
    assert_eq!(shuffle, Value::Bool(true));
}

#[test]
fn balanced_label_batches_reach_every_method_and_an_odd_batch_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    let out = tmp.path().join("out");
    let compare = |batch: &str| {
        peft_bin()
            .args(["compare", "--model", path_str(&fixture("llama-tiny"))])
            .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
            .args(["--eval-data", path_str(&tmp.path().join("eval.jsonl"))])
            .args(["--methods", "lora,ia3", "--budget", "steps=2"])
            .args([
                "--batch-size",
                batch,
                "--balance-labels",
                "--group-by-length",
            ])
            .args(["--no-forgetting", "--overwrite", "--out", path_str(&out)])
            .output()
            .unwrap()
    };
    let odd = compare("3");
    assert!(!odd.status.success());
    let e = stderr(&odd);
    assert!(
        e.contains("--balance-labels: --batch-size 3 is not a multiple of the 2 labels"),
        "{e}"
    );
    assert!(!out.join("runs").exists(), "a method started");
    let run = compare("2");
    assert!(run.status.success(), "{}", stderr(&run));
    let results = read_results(&out);
    assert_eq!(results["common"]["balance_labels"], true);
    // Every row counts its right answers per label over the 4 held-out records (2 yes, 2 no).
    for row in results["methods"].as_array().unwrap() {
        let per = &row["metrics"]["right_per_label"];
        for label in ["yes", "no"] {
            assert_eq!(per[label][1], 2, "{row}");
            assert!(per[label][0].as_u64().unwrap() <= 2, "{row}");
        }
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("## Right answers per label\n\n| method | no | yes |"),
        "{md}"
    );
    for method in ["lora", "ia3"] {
        let toml = std::fs::read_to_string(out.join("runs").join(method).join("run.toml")).unwrap();
        assert!(toml.contains("balance-labels = true"), "{toml}");
    }
}

//! `peft compare`'s protocol on the tiny fixture model: seeds, the learning-rate sweep and its
//! preset file, resume after a kill (children die with the parent), and the forgetting metric
//! against transformers' cross-entropy on a fixture.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{fixture, path_str, peft_bin, stderr, stdout};

/// Cross-entropy agreement with transformers (f32 forward passes, summed over ~150 tokens).
const CE_TOLERANCE: f64 = 1e-4;

/// A labels task: 12 training records, 4 held out, answers `yes` or `no`.
fn write_task(dir: &Path) {
    let record = |i: usize| {
        let answer = if i % 2 == 0 { "yes" } else { "no" };
        format!("{{\"instruction\": \"is {i} even?\", \"output\": \"{answer}\"}}\n")
    };
    std::fs::write(
        dir.join("train.jsonl"),
        (0..12).map(record).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        dir.join("eval.jsonl"),
        (12..16).map(record).collect::<String>(),
    )
    .unwrap();
}

/// The fixture adapters as presets (their configs, lr 1e-3).
fn write_presets(dir: &Path) -> PathBuf {
    let mut toml = String::new();
    for m in ["lora", "ia3"] {
        let config = fixture("adapters").join(m).join("adapter_config.json");
        toml += &format!("[{m}]\npreset = \"{}\"\nlr = 1e-3\n", path_str(&config));
    }
    let path = dir.join("compare.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn compare(dir: &Path, out: &Path) -> Command {
    compare_with(dir, out, &dir.join("compare.toml"))
}

fn compare_with(dir: &Path, out: &Path, presets: &Path) -> Command {
    let mut c = peft_bin();
    c.args(["compare", "--model", path_str(&fixture("llama-tiny"))])
        .args(["--data", path_str(&dir.join("train.jsonl"))])
        .args(["--eval-data", path_str(&dir.join("eval.jsonl"))])
        .args(["--presets", path_str(presets)])
        .args(["--batch-size", "2", "--out", path_str(out)]);
    c
}

fn results(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

#[test]
fn seeds_repeat_every_method_and_the_table_shows_mean_and_sd_with_forgetting() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    write_presets(tmp.path());
    let out = tmp.path().join("out");
    let run = compare(tmp.path(), &out)
        .args(["--methods", "ia3", "--budget", "steps=2", "--seeds", "1,2"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let r = results(&out);
    let rows = r["methods"].as_array().unwrap();
    let seeds: Vec<(&str, &Value)> = rows
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), &r["seed"]))
        .collect();
    assert_eq!(
        seeds,
        [
            ("base", &Value::Null),
            ("ia3", &1.into()),
            ("ia3", &2.into())
        ]
    );
    for sub in ["ia3-seed1", "ia3-seed2"] {
        assert!(out
            .join("runs")
            .join(sub)
            .join("adapter_model.safetensors")
            .is_file());
    }
    // Forgetting against the bundled general text: the base row's CE is the zero point.
    let base_ce = rows[0]["metrics"]["general_ce"].as_f64().unwrap();
    for row in &rows[1..] {
        let m = &row["metrics"];
        assert_eq!(row["status"], "ok", "{row}");
        let ce = m["general_ce"].as_f64().unwrap();
        assert!((m["forgetting"].as_f64().unwrap() - (ce - base_ce)).abs() < 1e-12);
        let (mean, p99, peak) = (
            m["mean_rss_mib"].as_f64().unwrap(),
            m["p99_rss_mib"].as_f64().unwrap(),
            m["peak_rss_mib"].as_f64().unwrap(),
        );
        assert!(0.0 < mean && mean <= p99 && p99 <= peak, "{m}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let ia3 = md.lines().find(|l| l.contains("| ia3 |")).unwrap();
    assert!(ia3.contains(" ± ") && ia3.contains("n=2×4"), "{ia3}");
    assert!(out.join("metric_vs_memory.svg").is_file());
}

#[test]
fn a_sweep_chooses_on_a_validation_split_and_saves_a_preset_that_compare_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    write_presets(tmp.path());
    let (out, preset) = (tmp.path().join("out"), tmp.path().join("chosen.toml"));
    let run = compare(tmp.path(), &out)
        .args([
            "--methods",
            "lora",
            "--budget",
            "steps=4",
            "--lr-sweep",
            "2",
        ])
        .args(["--save-preset", path_str(&preset)])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let r = results(&out);
    let lora = &r["methods"][1];
    let sweep = lora["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2, "{lora}");
    let rates: Vec<f64> = sweep.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
    assert!(
        (rates[0] - 1e-3 / 10f64.sqrt()).abs() < 1e-12 && rates[1] == 1e-3,
        "{rates:?}"
    );
    let chosen = lora["config"]["lr"].as_f64().unwrap();
    assert!(rates.contains(&chosen));
    // The sweep validated on 20% of the 12 training records (2), never the 4 test records.
    for i in 0..2 {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("logs/sweep/lora-lr{i}.eval.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(v["records"], 2, "{v}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("## Learning-rate sweep"), "{md}");
    let text = std::fs::read_to_string(&preset).unwrap();
    let saved: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(saved["lora"]["lr"].as_float(), Some(chosen), "{text}");
    assert_eq!(saved["ia3"]["lr"].as_float(), Some(1e-3), "{text}");
    let again = tmp.path().join("again");
    let run = compare_with(tmp.path(), &again, &preset)
        .args([
            "--methods",
            "lora",
            "--budget",
            "steps=1",
            "--eval-limit",
            "1",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(
        results(&again)["methods"][1]["config"]["lr"].as_f64(),
        Some(chosen)
    );
}

/// Processes whose command line mentions `needle` (Linux /proc).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_comparison_leaves_no_child_and_resumes_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    write_presets(tmp.path());
    let out = tmp.path().join("out");
    let steps = 3000;
    let mut parent = compare(tmp.path(), &out)
        .args(["--methods", "lora", "--budget", &format!("steps={steps}")])
        .args(["--eval-limit", "1", "--no-forgetting"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_dir = out.join("runs").join("lora");
    wait_for("the first checkpoint", Duration::from_secs(300), || {
        std::fs::read_dir(&run_dir).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        })
    });
    parent.kill().unwrap();
    parent.wait().unwrap();
    let needle = path_str(&out).to_string();
    wait_for(
        "the children to die with the parent",
        Duration::from_secs(10),
        || processes_mentioning(&needle).is_empty(),
    );
    assert!(
        !out.join("runs/lora/adapter_model.safetensors").exists(),
        "lora finished before the kill: raise `steps`"
    );
    let before = results(&out);
    assert_eq!(
        before["methods"].as_array().unwrap().len(),
        1,
        "only the base row"
    );
    let resumed = compare(tmp.path(), &out)
        .args(["--methods", "lora", "--budget", &format!("steps={steps}")])
        .args(["--eval-limit", "1", "--no-forgetting", "--resume"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("kept from the earlier run"),
        "{}",
        stderr(&resumed)
    );
    let after = results(&out);
    assert_eq!(
        after["methods"][0], before["methods"][0],
        "the base row is kept as it was"
    );
    let lora = &after["methods"][1];
    assert_eq!(lora["status"], "ok", "{lora}");
    assert_eq!(lora["metrics"]["steps"], steps);
    let log = std::fs::read_to_string(out.join("logs/lora.train.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");
}

/// `peft compare-eval --forgetting-data`: the pooled token cross-entropy of general text under
/// the base model and with PEFT's fixture adapters equals transformers' (make_reference.py).
#[test]
fn general_text_cross_entropy_matches_transformers() {
    let dir = fixture("forgetting");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    let mut compared = 0;
    for adapter in [None, Some("lora"), Some("ia3")] {
        let mut c = peft_bin();
        c.args(["compare-eval", "--model", path_str(&fixture("llama-tiny"))])
            .args(["--data", path_str(&tmp.path().join("train.jsonl"))])
            .args(["--eval-data", path_str(&tmp.path().join("eval.jsonl"))])
            .args(["--forgetting-data", path_str(&dir.join("general.jsonl"))])
            .args(["--task-metric", "none"]);
        if let Some(a) = adapter {
            c.args(["--adapter", path_str(&fixture("adapters").join(a))]);
        }
        let run = c.output().unwrap();
        assert!(run.status.success(), "{}", stderr(&run));
        let v: Value = serde_json::from_str(stdout(&run).trim()).unwrap();
        let key = adapter.unwrap_or("base");
        let (ours, theirs) = (
            v["general_ce"].as_f64().unwrap(),
            reference[key].as_f64().unwrap(),
        );
        assert!(
            (ours - theirs).abs() < CE_TOLERANCE,
            "{key}: {ours} vs {theirs}"
        );
        assert_eq!(v["general_tokens"], reference["tokens"], "{key}");
        compared += 1;
    }
    assert_eq!(compared, 3);
}

#[test]
fn an_overwritten_comparison_trains_afresh_instead_of_resuming_a_leftover_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_task(tmp.path());
    write_presets(tmp.path());
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let o = compare(tmp.path(), &out)
            .args(["--methods", "lora", "--budget", "steps=10"])
            .args(["--eval-limit", "1", "--no-forgetting"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    run(&[]);
    let has_checkpoint = std::fs::read_dir(out.join("runs/lora")).is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
    });
    assert!(has_checkpoint, "the first run leaves a checkpoint behind");
    run(&["--overwrite"]);
    let log = std::fs::read_to_string(out.join("logs/lora.train.log")).unwrap();
    assert!(!log.contains("resuming"), "{log}");
    assert!(log.contains("trained 10 steps"), "{log}");
}

//! examples/balanced_order.py, the training order of the README's main job: every batch holds
//! both labels alike and records of similar length, and a validation split is carved first.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `python3`, if it runs; otherwise the test says loudly that it is skipped.
fn python3(test: &str) -> Option<&'static str> {
    let works = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("\n*** {test}: SKIPPED: `python3 --version` fails (install Python 3) ***\n");
    }
    works.then_some("python3")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/balanced_order.py")
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 12 "a" and 10 "b" records of lengths 1..: a batch of 4 can hold 2 of each 5 times.
fn write_input(path: &Path) {
    let mut text = String::new();
    for i in 0..22 {
        let label = if i % 2 == 0 || i > 19 { "a" } else { "b" };
        let input = "x".repeat(i + 1);
        text +=
            &serde_json::json!({"instruction": "say", "input": input, "output": label}).to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn every_batch_of_the_balanced_order_holds_both_labels_alike_and_similar_lengths() {
    let Some(python) = python3("balanced_order") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in.jsonl"), tmp.path().join("out.jsonl"));
    write_input(&input);
    let o = Command::new(python)
        .arg(script())
        .args([&input, &out])
        .args(["--batch", "4", "--seed", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = records(&out);
    // The surplus of "a" is left out: 5 batches of 2 + 2.
    assert_eq!(rows.len(), 20);
    for batch in rows.chunks(4) {
        let labels: Vec<&str> = batch
            .iter()
            .map(|r| r["output"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["a", "b", "a", "b"]);
        let lens: Vec<usize> = batch
            .iter()
            .map(|r| r["input"].as_str().unwrap().len())
            .collect();
        // The i-th shortest pairs of each label: lengths within a few of each other.
        let spread = lens.iter().max().unwrap() - lens.iter().min().unwrap();
        assert!(spread <= 6, "{lens:?}");
    }
    // The same seed gives the same order.
    let again = tmp.path().join("again.jsonl");
    Command::new(python)
        .arg(script())
        .args([&input, &again])
        .args(["--batch", "4", "--seed", "3"])
        .output()
        .unwrap();
    assert_eq!(records(&again), rows);
}

#[test]
fn the_validation_split_is_carved_per_label_and_never_trained_on() {
    let Some(python) = python3("balanced_order") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let (out, val) = (tmp.path().join("out.jsonl"), tmp.path().join("val.jsonl"));
    write_input(&input);
    let o = Command::new(python)
        .arg(script())
        .args([&input, &out])
        .arg("--val")
        .arg(&val)
        .args(["--val-per-label", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (train, val) = (records(&out), records(&val));
    let count =
        |rows: &[serde_json::Value], l: &str| rows.iter().filter(|r| r["output"] == l).count();
    assert_eq!((count(&val, "a"), count(&val, "b")), (2, 2));
    // 10 "a" and 8 "b" are left: 4 batches of 2 + 2.
    assert_eq!(train.len(), 16);
    assert!(train.iter().all(|r| !val.contains(r)));
}

#[test]
fn an_odd_batch_or_a_third_label_is_refused() {
    let Some(python) = python3("balanced_order") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in.jsonl"), tmp.path().join("out.jsonl"));
    write_input(&input);
    let o = Command::new(python)
        .arg(script())
        .args([&input, &out])
        .args(["--batch", "3"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("two labels and an even batch"));
}

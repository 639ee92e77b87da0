//! Issue 15, classes 6 and 7: one run per `--out` at a time (an advisory lock that a killed run
//! does not leave stuck), and no leftovers: stale temporaries of killed saves are cleaned at
//! start, and `metrics.jsonl` holds every step once after a resume.

use std::fs;
use std::path::Path;

use crate::common::*;
use crate::safe_out::train;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");

/// The PID of a process that has exited (so no process has it, barring reuse).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_second_run_on_a_locked_out_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    fs::create_dir(&out).unwrap();
    let held = peft::io::lock::lock_dir(&out).unwrap();
    let o = train(&fixture("llama-tiny"), Path::new(DATA), &out, &[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("another peft run is writing to this folder"),
        "{err}"
    );
    assert!(!out.join("metrics.jsonl").exists(), "the second run wrote");
    drop(held);
    let o = train(&fixture("llama-tiny"), Path::new(DATA), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_lock_file_left_by_a_killed_run_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    fs::create_dir(&out).unwrap();
    fs::write(out.join(peft::io::lock::LOCK_FILE), dead_pid().to_string()).unwrap();
    let o = train(&fixture("llama-tiny"), Path::new(DATA), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_killed_run_s_temporaries_in_out_are_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let partial = out.join(".checkpoint-5.partial");
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join("adapter_model.safetensors"), vec![0u8; 4096]).unwrap();
    let tmp_file = out.join(format!(".adapter_model.safetensors.tmp-{}", dead_pid()));
    fs::write(&tmp_file, b"half").unwrap();
    fs::write(out.join(".mine.txt"), b"not ours").unwrap();
    let o = train(&fixture("llama-tiny"), Path::new(DATA), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!partial.exists() && !tmp_file.exists());
    assert!(
        out.join(".mine.txt").exists(),
        "a file not of our naming was removed"
    );
}

#[test]
fn a_killed_merge_s_temporary_folder_is_removed_by_the_next_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let stale = tmp.path().join(format!(".merged.merge-tmp-{}", dead_pid()));
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let unrelated = tmp.path().join(".other.merge-tmp-1");
    fs::create_dir(&unrelated).unwrap();
    let o = run_peft(&[
        "merge",
        "--base",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&fixture("adapters/lora")),
        "--out",
        path_str(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "the stale temporary folder is still there");
    assert!(unrelated.exists(), "another output's temporary was removed");
}

fn steps(out: &Path) -> Vec<u64> {
    crate::common::train_metrics(out)
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn metrics_hold_every_step_once_after_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // A finished 2-step run with a checkpoint at step 1 stands for a run killed after step 2.
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--save-steps", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps(&out), [1, 2]);
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--resume", path_str(&out.join("checkpoint-1"))],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps(&out), [1, 2], "duplicate step lines after the resume");
}

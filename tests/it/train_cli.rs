//! `peft train` / `peft eval` from the command line on the tiny model: the whole path, options
//! from TOML, and the bad-input cases of the training issue.

use std::fs;
use std::path::Path;

use crate::common::*;

const DATA: &str = "datasets/tiny_instruct.jsonl";

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture("llama-tiny");
    let data = repo(DATA);
    let mut args = vec![
        "train",
        "--model",
        path_str(&model),
        "--data",
        &data,
        "--out",
        path_str(out),
        "--batch-size",
        "8",
        "--seed",
        "1",
    ];
    if !extra.contains(&"--lr") {
        args.extend_from_slice(&["--lr", "3e-3"]);
    }
    args.extend_from_slice(extra);
    run_peft(&args)
}

fn losses(out: &Path) -> Vec<f64> {
    crate::common::train_losses(out)
}

#[test]
fn train_then_eval_then_generate_with_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(
        &out,
        &[
            "--epochs",
            "2",
            "--eval-split",
            "0.125",
            "--lr-scheduler",
            "cosine",
            "--warmup-steps",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let l = losses(&out);
    assert_eq!(l.len(), 14, "7 batches × 2 epochs, one metrics line each");
    assert!(
        l.last().unwrap() < l.first().unwrap(),
        "loss did not fall: {l:?}"
    );
    let eval = run_peft(&[
        "eval",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&out),
        "--data",
        &repo(DATA),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let e: serde_json::Value = serde_json::from_str(stdout(&eval).trim()).unwrap();
    assert_eq!(e["records"], 64);
    assert!((e["perplexity"].as_f64().unwrap() - e["loss"].as_f64().unwrap().exp()).abs() < 1e-6);
    let base = run_peft(&[
        "eval",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--data",
        &repo(DATA),
        "--json",
    ]);
    let b: serde_json::Value = serde_json::from_str(stdout(&base).trim()).unwrap();
    assert!(
        e["loss"].as_f64() < b["loss"].as_f64(),
        "the adapter did not lower the loss: {e} vs {b}"
    );
    let gen = run_peft(&[
        "generate",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&out),
        "--chat",
        "hello",
        "--greedy",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(gen.status.success(), "{}", stderr(&gen));
}

#[test]
fn options_come_from_toml_and_flags_override_them() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("run.toml");
    fs::write(
        &toml,
        "max-steps = 3\nlr = 1e-3\nr = 2\nmethod = \"dora\"\nlogging-steps = 1\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    let o = train(&out, &["--config", path_str(&toml), "--max-steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        losses(&out).len(),
        2,
        "--max-steps on the command line wins over the file"
    );
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 2);
    assert_eq!(config["use_dora"], true);
}

#[test]
fn an_output_folder_holding_a_run_is_refused_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    assert!(train(&out, &["--max-steps", "1"]).status.success());
    let again = train(&out, &["--max-steps", "1"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a run") && stderr(&again).contains("--overwrite"),
        "{}",
        stderr(&again)
    );
    assert!(train(&out, &["--max-steps", "1", "--overwrite"])
        .status
        .success());
}

#[test]
fn a_malformed_json_line_names_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    fs::write(
        &data,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \n",
    )
    .unwrap();
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--data",
        path_str(&data),
        "--out",
        path_str(&tmp.path().join("run")),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.jsonl:2"), "{}", stderr(&o));
    assert_ne!(o.status.code(), Some(101));
}

#[test]
fn a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Step 1 runs at lr 0 (warm-up); step 2's enormous decay makes the weights infinite, so step 3's
    // loss is NaN: checkpoint-1 is the last good one, checkpoint-2 (the diverged weights) is dropped.
    let o = train(
        &out,
        &[
            "--lr",
            "1e30",
            "--weight-decay",
            "1e30",
            "--warmup-steps",
            "3",
            "--max-grad-norm",
            "0",
            "--max-steps",
            "8",
            "--save-steps",
            "1",
            "--lr-scheduler",
            "constant_with_warmup",
        ],
    );
    assert!(!o.status.success(), "the run should diverge");
    let err = stderr(&o);
    assert!(
        err.contains("loss is NaN at step 3") && err.contains("checkpoint-1"),
        "{err}"
    );
    assert!(
        !out.join("checkpoint-2").exists(),
        "the diverged checkpoint was kept"
    );
    let kept: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    assert!(!kept.is_empty());
    for ckpt in kept {
        assert!(ckpt.path().join("adapter_model.safetensors").is_file());
    }
}

#[test]
fn a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    fs::create_dir_all(&out).unwrap();
    // A file where the step-4 checkpoint's temporary folder must go makes that save fail, as a
    // full disk would; the step-2 checkpoint must survive untouched.
    fs::write(out.join(".checkpoint-4.partial"), b"in the way").unwrap();
    let o = train(&out, &["--max-steps", "6", "--save-steps", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checkpoint"), "{}", stderr(&o));
    let ckpt2 = out.join("checkpoint-2");
    assert!(
        ckpt2.join("adapter_model.safetensors").is_file()
            && ckpt2.join("optimizer.safetensors").is_file()
    );
    assert!(!out.join("checkpoint-4").exists());
    // Once the disk has room again, the run continues from the surviving checkpoint.
    fs::remove_file(out.join(".checkpoint-4.partial")).unwrap();
    let resumed = train(
        &out,
        &[
            "--max-steps",
            "6",
            "--save-steps",
            "2",
            "--resume",
            path_str(&ckpt2),
        ],
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(out.join("adapter_model.safetensors").is_file());
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let model = fixture("llama-tiny");
    let data = repo(DATA);
    let child = peft_bin()
        .args([
            "train",
            "--model",
            path_str(&model),
            "--data",
            &data,
            "--out",
            path_str(&out),
            "--batch-size",
            "8",
            "--max-steps",
            "100000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged, then interrupt as a terminal's Ctrl-C does.
    let metrics = out.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "training never logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "an interrupted run exits non-zero");
    let message = stderr(&o);
    assert!(message.contains("interrupted"), "{message}");
    let ckpt = fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .expect("a checkpoint was saved");
    for file in [
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(file).is_file(), "{file} missing");
    }
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    let step = state["global_step"].as_u64().unwrap();
    assert!(step >= 3);
    let resumed = train(
        &out,
        &[
            "--max-steps",
            &(step + 2).to_string(),
            "--resume",
            path_str(&ckpt),
        ],
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains(&format!("at step {step}")));
}

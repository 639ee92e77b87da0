//! Issue 15, class 8: prompt tuning and P-tuning on `text` data, where the first label is a real
//! token. PEFT prepends −100 labels for the virtual tokens before the shift, so the last virtual
//! token predicts the first real one and it counts in the loss; training and evaluation must
//! count it too (fixtures: tests/fixtures/train/prompt-text/make.py).

use peft::models::ModelDir;
use peft::peft::format::load_adapter;
use peft::train::eval::evaluate;
use peft::train::{train_step, AdamW, AdamWConfig};
use rstest::rstest;

use crate::common::*;
use crate::train::{fixture_batch, fixture_losses};

const LOSS_TOL: f64 = 1e-4;
const RUNS: &str = "train/prompt-text";

fn eval_loss(method: &str) -> f64 {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{RUNS}/{method}/losses.json"))).unwrap(),
    )
    .unwrap();
    json["eval_loss"].as_f64().unwrap()
}

#[rstest]
#[case::prompt_tuning("prompt")]
#[case::ptuning_mlp("ptuning-mlp")]
fn the_first_real_token_counts_in_the_loss_as_in_peft(#[case] method: &str) {
    let batch = fixture_batch(RUNS);
    assert!(
        (0..batch.batch).all(|b| batch.labels[b * batch.seq] != -100),
        "the fixture's first labels must be real tokens"
    );
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let init = fixture(&format!("{RUNS}/{method}/init"));

    // Evaluation (no autodiff), as `peft eval` computes it.
    let mut model = dir.load(&device()).unwrap();
    load_adapter(&mut model, "llama", &init, &device()).unwrap();
    let e = evaluate(&model, std::slice::from_ref(&batch));
    let want = eval_loss(method);
    assert!(
        (e.loss - want).abs() <= LOSS_TOL,
        "{method}: eval loss {} vs PEFT {want}",
        e.loss
    );
    assert_eq!(e.tokens, batch.targets_for(1));

    // Training, step by step.
    let device = device().autodiff();
    let mut model = dir.load(&device).unwrap();
    load_adapter(&mut model, "llama", &init, &device).unwrap();
    let (expected, lr) = fixture_losses(&format!("{RUNS}/{method}"));
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    assert_eq!(expected.len(), 5);
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!(
            (stats.loss - want).abs() <= LOSS_TOL,
            "{method} step {step}: loss {} vs PEFT {want}",
            stats.loss
        );
    }
}

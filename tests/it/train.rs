//! Training parity with PEFT + torch: the fixture's deterministic AdamW run.

use peft::io::Checkpoint;
use peft::models::ModelDir;
use peft::peft::format::{adapter_tensors, load_adapter};
use peft::train::{train_step, AdamW, AdamWConfig, Batch};

use crate::common::*;

/// Per-step loss tolerance and final-tensor relative tolerance (fixtures README).
const LOSS_TOL: f64 = 1e-4;
const FINAL_REL_TOL: f32 = 1e-3;

pub fn fixture_batch(rel: &str) -> Batch {
    let file = Checkpoint::open_files(&[fixture(rel).join("batch.safetensors")]).unwrap();
    let (ids, shape) = file.read_i64("input_ids").unwrap();
    let (mask, _) = file.read_i64("attention_mask").unwrap();
    let (labels, _) = file.read_i64("labels").unwrap();
    Batch {
        ids,
        mask,
        labels,
        batch: shape[0],
        seq: shape[1],
    }
}

pub fn fixture_losses(rel: &str) -> (Vec<f64>, f64) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(rel).join("losses.json")).unwrap())
            .unwrap();
    let losses = json["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (losses, json["optimizer"]["lr"].as_f64().unwrap())
}

/// Max relative difference `|a − b| / max(|b|, 1e-6)`... measured against the tensor's scale.
pub fn max_rel_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f32::max)
}

#[test]
fn lora_training_reproduces_peft_losses_and_final_adapter() {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir.load(&device).unwrap();
    load_adapter(&mut model, "llama", &fixture("train/lora/init"), &device).unwrap();
    let batch = fixture_batch("train/lora");
    let (expected, lr) = fixture_losses("train/lora");
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!(
            (stats.loss - want).abs() <= LOSS_TOL,
            "step {step}: loss {} vs PEFT {want}",
            stats.loss
        );
    }
    let final_file =
        Checkpoint::open_files(&[fixture("train/lora/final/adapter_model.safetensors")]).unwrap();
    let ours = adapter_tensors(&mut model);
    assert_eq!(ours.len(), final_file.entries().count());
    for (name, tensor) in &ours {
        let values = peft::io::dtype::to_f32(tensor.dtype, &tensor.bytes).unwrap();
        let (theirs, _) = final_file.read_f32(name).unwrap();
        let rel = max_rel_diff(&values, &theirs);
        assert!(rel <= FINAL_REL_TOL, "{name}: relative diff {rel}");
    }
}

mod resume {
    use std::path::Path;

    use peft::models::ModelDir;
    use peft::peft::format::load_adapter;
    use peft::peft::AdapterConfig;
    use peft::train::checkpoint::{self, checkpoint_dir};
    use peft::train::run::{run, Run, RunConfig, RunSummary};
    use peft::train::{AdamW, AdamWConfig, ScheduleKind};

    use super::fixture_batch;
    use crate::common::*;

    fn config(save_steps: Option<usize>, max_steps: usize) -> RunConfig {
        RunConfig {
            lr: 1e-2,
            adamw: AdamWConfig::default(),
            scheduler: ScheduleKind::Cosine,
            warmup_steps: 2,
            warmup_ratio: 0.0,
            grad_accum: 2,
            max_grad_norm: Some(1.0),
            epochs: 1,
            max_steps: Some(max_steps),
            logging_steps: 1,
            save_steps,
            eval_steps: None,
            seed: 3,
            save_total_limit: None,
            train_batch_size: None,
            max_train_seconds: None,
        }
    }

    fn train(out: &Path, save_steps: Option<usize>, resume_from: Option<&Path>) -> Vec<u8> {
        let summary = train_with(out, config(save_steps, 20), resume_from);
        assert_eq!(summary.steps, 20);
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    }

    /// The fixture LoRA trained with `config`, from its init or from a checkpoint.
    fn train_with(out: &Path, config: RunConfig, resume_from: Option<&Path>) -> RunSummary {
        let device = device().autodiff();
        let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
        let mut model = dir.load(&device).unwrap();
        let start = resume_from
            .unwrap_or(&fixture("train/lora/init"))
            .to_path_buf();
        load_adapter(&mut model, "llama", &start, &device).unwrap();
        let resume = resume_from.map(|ckpt| {
            let mut optim = AdamW::new(AdamWConfig::default());
            checkpoint::load_optimizer(ckpt, &mut model, &mut optim, &device).unwrap();
            (checkpoint::load_state(ckpt).unwrap(), optim)
        });
        let batch = fixture_batch("train/lora");
        // Three micro-batches per epoch, so steps cross epoch boundaries mid-accumulation.
        let halves = |_epoch: usize| vec![batch.clone(), batch.clone(), batch.clone()];
        run(Run {
            model,
            adapter_config: AdapterConfig::load_dir(&fixture("train/lora/init")).unwrap(),
            out: out.to_path_buf(),
            config,
            train: &halves,
            eval: vec![],
            device: device.clone(),
            resume,
            hook: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn a_time_budget_ends_the_run_with_its_adapter_after_the_step_that_used_it_up() {
        let out = tempfile::tempdir().unwrap();
        let mut limited = config(Some(5), 20);
        limited.max_train_seconds = Some(1e-9);
        let summary = train_with(out.path(), limited, None);
        assert_eq!((summary.steps, summary.interrupted), (1, false));
        assert!(out.path().join("adapter_model.safetensors").is_file());
        let state = checkpoint::load_state(out.path()).unwrap();
        assert_eq!(state.global_step, 1);
        assert!(state.train_seconds > 0.0, "{}", state.train_seconds);
        let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 1, "the last step is logged");
    }

    #[test]
    fn a_resumed_run_trains_only_the_time_its_checkpoint_left() {
        let first = tempfile::tempdir().unwrap();
        let mut c = config(Some(10), 20);
        c.max_steps = Some(11);
        train_with(first.path(), c, None);
        let ckpt = checkpoint_dir(first.path(), 10);
        let spent = checkpoint::load_state(&ckpt).unwrap().train_seconds;
        assert!(spent > 0.0);
        // A budget the checkpoint has used up already: no step more, its weights are the adapter.
        let used_up = tempfile::tempdir().unwrap();
        let mut c = config(None, 20);
        c.max_train_seconds = Some(spent);
        let summary = train_with(used_up.path(), c, Some(&ckpt));
        assert_eq!((summary.steps, summary.steps_run), (10, 0));
        assert_eq!(
            std::fs::read(used_up.path().join("adapter_model.safetensors")).unwrap(),
            std::fs::read(ckpt.join("adapter_model.safetensors")).unwrap()
        );
        // Time left: it trains on, and the state counts both processes' steps.
        let left = tempfile::tempdir().unwrap();
        let mut c = config(None, 20);
        c.max_train_seconds = Some(spent + 3600.0);
        let summary = train_with(left.path(), c, Some(&ckpt));
        assert_eq!((summary.steps, summary.steps_run), (20, 10));
        let total = checkpoint::load_state(left.path()).unwrap().train_seconds;
        assert!(total > spent, "{total} <= {spent}");
    }

    #[test]
    fn a_run_stopped_at_step_10_and_resumed_ends_with_the_same_adapter() {
        let straight = tempfile::tempdir().unwrap();
        let uninterrupted = train(straight.path(), None, None);
        let first = tempfile::tempdir().unwrap();
        let with_checkpoints = train(first.path(), Some(10), None);
        assert_eq!(
            with_checkpoints, uninterrupted,
            "saving checkpoints changed the run"
        );
        let ckpt = checkpoint_dir(first.path(), 10);
        assert!(ckpt.join("optimizer.safetensors").is_file());
        let second = tempfile::tempdir().unwrap();
        let resumed = train(second.path(), None, Some(&ckpt));
        assert_eq!(
            resumed, uninterrupted,
            "resumed run differs from the uninterrupted one"
        );
        let metrics = std::fs::read_to_string(second.path().join("metrics.jsonl")).unwrap();
        assert_eq!(
            metrics.lines().count(),
            10,
            "the resumed run logs steps 11..=20"
        );
    }
}

mod adalora {
    use peft::io::Checkpoint;
    use peft::models::ModelDir;
    use peft::peft::config::Method;
    use peft::peft::format::{load_adapter, save_adapter};
    use peft::peft::rank_allocator::RankAllocator;
    use peft::peft::AdapterConfig;
    use peft::train::{train_step_with, AdamW, AdamWConfig, StepHook};

    use super::{fixture_batch, fixture_losses, max_rel_diff, FINAL_REL_TOL, LOSS_TOL};
    use crate::common::*;

    #[test]
    fn adalora_training_reproduces_peft_losses_rank_pattern_and_final_adapter() {
        let device = device().autodiff();
        let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
        let mut model = dir.load(&device).unwrap();
        let init = fixture("train/adalora/init");
        let (config, _) = load_adapter(&mut model, "llama", &init, &device).unwrap();
        let Method::AdaLora(_, options) = config.method.clone() else {
            panic!("not an AdaLoRA config")
        };
        let total = options.total_step.unwrap();
        let mut hook = StepHook::AdaLora(RankAllocator::new(&mut model, options, total).unwrap());
        let batch = fixture_batch("train/adalora");
        let (expected, lr) = fixture_losses("train/adalora");
        assert_eq!(expected.len(), 30);
        let mut optim = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        });
        for (step, want) in expected.iter().enumerate() {
            let (next, stats) = train_step_with(
                model,
                &mut optim,
                std::slice::from_ref(&batch),
                lr,
                None,
                &mut hook,
            );
            model = next;
            assert!(
                (stats.loss - want).abs() <= LOSS_TOL,
                "step {step}: loss {} vs PEFT {want}",
                stats.loss
            );
        }
        let out = tempfile::tempdir().unwrap();
        save_adapter(&mut model, &config, out.path()).unwrap();
        let ours = AdapterConfig::load_dir(out.path()).unwrap();
        let theirs = AdapterConfig::load_dir(&fixture("train/adalora/final")).unwrap();
        assert_eq!(ours.raw["rank_pattern"], theirs.raw["rank_pattern"]);
        let mine = Checkpoint::open_files(&[out.path().join("adapter_model.safetensors")]).unwrap();
        let reference =
            Checkpoint::open_files(&[fixture("train/adalora/final/adapter_model.safetensors")])
                .unwrap();
        assert_eq!(mine.entries().count(), reference.entries().count());
        for entry in reference.entries() {
            let m = mine.get(&entry.name).expect("tensor saved");
            assert_eq!(m.shape, entry.shape, "{}", entry.name);
            let (a, _) = mine.read_f32(&entry.name).unwrap();
            let (b, _) = reference.read_f32(&entry.name).unwrap();
            let rel = max_rel_diff(&a, &b);
            assert!(rel <= FINAL_REL_TOL, "{}: relative diff {rel}", entry.name);
        }
    }
}

//! The Llama model against transformers' logits and greedy decoding.

use peft::models::tensor_util::to_vec;
use peft::models::Inputs;
use rstest::rstest;

use crate::common::*;

#[rstest]
#[case::f32_single_file("llama-tiny")]
#[case::bf16_shards("llama-tiny-bf16-sharded")]
fn logits_match_transformers_at_every_unmasked_position(#[case] fixture_dir: &str) {
    let model = load_model(fixture_dir);
    let reference = reference(fixture_dir);
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(
        diff <= LOGITS_TOL,
        "{fixture_dir}: max abs diff {diff} > {LOGITS_TOL}"
    );
}

#[test]
fn greedy_continuation_matches_transformers_generate() {
    let (ours, theirs) = reference("llama-tiny").greedy(&load_model("llama-tiny"));
    assert_eq!(ours, theirs);
}

#[test]
fn cached_decoding_gives_the_same_logits_as_a_full_forward() {
    let model = load_model("llama-tiny");
    let ids: Vec<i64> = vec![1, 40, 41, 42, 43, 44, 45, 46];
    let full = to_vec(model.forward(&Inputs::new(ids.clone(), 1, ids.len()), None));
    let mut cache = model.new_cache();
    let _ = model.forward(&Inputs::new(ids[..5].to_vec(), 1, 5), Some(&mut cache));
    let rest = to_vec(model.forward(&Inputs::new(ids[5..].to_vec(), 1, 3), Some(&mut cache)));
    let vocab = model.vocab_size();
    let worst = full[5 * vocab..]
        .iter()
        .zip(&rest)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "cached vs full: {worst}");
}

#[test]
fn left_padding_gives_the_same_logits_as_no_padding() {
    let model = load_model("llama-tiny");
    let ids: Vec<i64> = vec![1, 50, 51, 52];
    let alone = to_vec(model.forward(&Inputs::new(ids.clone(), 1, 4), None));
    // Row 0 is left-padded by two; its positions restart at 0 on the first real token.
    let mut padded = vec![0, 0];
    padded.extend(&ids);
    let mut inputs = Inputs::with_mask(padded, &[0, 0, 1, 1, 1, 1], 1, 6);
    inputs.positions = Some(vec![0, 0, 0, 1, 2, 3]);
    let out = to_vec(model.forward(&inputs, None));
    let vocab = model.vocab_size();
    let worst = alone
        .iter()
        .zip(&out[2 * vocab..])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "left padded vs alone: {worst}");
}

#[test]
fn bf16_decoding_weights_keep_the_logits_close_and_the_greedy_ids() {
    let model = load_model("llama-tiny");
    let mut bf16 = load_model("llama-tiny");
    bf16.cast_decode_weights(burn::tensor::DType::BF16);
    let prompt: Vec<i64> = vec![1, 44, 73, 80, 388];
    let inputs = Inputs::new(prompt.clone(), 1, prompt.len());
    let exact = to_vec(model.forward_last(&inputs, None));
    let cheap = to_vec(bf16.forward_last(&inputs, None));
    let worst = exact
        .iter()
        .zip(&cheap)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // bf16 keeps 8 bits of mantissa: ~4e-3 relative per weight, averaged over each dot product.
    assert!(worst > 0.0, "the weights were not cast");
    assert!(worst < 5e-2, "bf16 logits moved by {worst}");
    let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let cfg = peft::generate::SamplingConfig {
        max_new_tokens: 8,
        stop_at_eos: false,
        ..Default::default()
    };
    let a = peft::generate::generate(&model, &ids, &cfg, &mut |_| {}).expect("f32 generates");
    let b = peft::generate::generate(&bf16, &ids, &cfg, &mut |_| {}).expect("bf16 generates");
    assert_eq!(a, b);
}

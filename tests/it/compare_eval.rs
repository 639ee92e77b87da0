//! `peft compare`'s eval pass (`compare::eval`): the output head run only on the rows a label
//! task reads gives the loss and arg-max answers of the head on every row, and a wrong label
//! answer is cut (not generated) only when no continuation can match.

use burn::tensor::Tensor;
use peft::compare::eval::{cannot_match, forward_pass};
use peft::compare::task::forced_greedy;
use peft::data::{self, BatchConfig, Encoded};
use peft::models::CausalLm;
use peft::peft::format::load_adapter;
use peft::tokenizer::TextTokenizer;
use peft::train::loss::{token_loss_sum_lead, IGNORE_INDEX};

use crate::common::{device, fixture, load_model};

const X: i64 = IGNORE_INDEX;

/// Prompts with a learned response, one with two learned runs, one all learned (a `text`
/// record), of different lengths so the batches pad.
fn records() -> Vec<Encoded> {
    let record = |ids: &[i64], labels: &[i64]| Encoded {
        ids: ids.to_vec(),
        labels: labels.to_vec(),
    };
    vec![
        record(&[5, 9, 13, 40, 41, 2], &[X, X, X, 40, 41, 2]),
        record(&[7, 8, 30, 31, 2], &[X, X, 30, 31, 2]),
        record(&[11, 12, 50, 3, 4, 60, 61, 2], &[X, X, 50, X, X, 60, 61, 2]),
        record(&[20, 21, 22, 23], &[20, 21, 22, 23]),
        record(&[6, 70, 2], &[X, 70, 2]),
    ]
}

fn batch_config(batch_size: usize) -> BatchConfig {
    BatchConfig {
        batch_size,
        seed: 0,
        shuffle: false,
        group_by_length: false,
        balance_labels: false,
        pack: None,
        pad_id: 0,
    }
}

/// The pass with the head on every row: the loss sum, the target count, and every position's
/// arg-max, as `forward_pass` computed them before it ran the head on the read rows only.
fn full_head(
    model: &CausalLm,
    records: &[Encoded],
    config: &BatchConfig,
) -> (f64, usize, Vec<Vec<u32>>) {
    let (mut sum, mut tokens, mut argmax) = (0.0, 0, Vec::new());
    for batch in data::batches(records, config, 0) {
        let lead = model.loss_lead();
        let logits: Tensor<3> = model.forward_for_loss(&batch.inputs());
        let loss = token_loss_sum_lead(logits.clone(), &batch.labels, batch.batch, batch.seq, lead);
        sum += loss.into_scalar::<f32>() as f64;
        tokens += batch.targets_for(lead);
        let [b, t, v] = logits.dims();
        let best = logits
            .slice([0..b, lead..t, 0..v])
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        argmax.extend(
            best.chunks(batch.seq)
                .map(|r| r.iter().map(|&t| t as u32).collect::<Vec<_>>()),
        );
    }
    (sum, tokens, argmax)
}

fn assert_same_numbers(model: &CausalLm, what: &str) {
    let records = records();
    for batch_size in [1, 2, 4] {
        let config = batch_config(batch_size);
        let (ours, answers) = forward_pass(model, &records, &config);
        let (sum, tokens, full) = full_head(model, &records, &config);
        let loss = sum / tokens as f64;
        assert_eq!(ours.tokens, tokens, "{what}");
        assert!(
            (ours.loss - loss).abs() <= 1e-6 * loss.abs().max(1.0),
            "{what}, batch {batch_size}: loss {} against {loss}",
            ours.loss
        );
        for (r, record) in records.iter().enumerate() {
            // Every arg-max an answer reads is the full head's, so the answers are equal.
            let eos = [2];
            assert_eq!(
                forced_greedy(record, &answers[r], &eos),
                forced_greedy(record, &full[r][..record.ids.len()], &eos),
                "{what}, batch {batch_size}, record {r}"
            );
            for (i, &a) in answers[r].iter().enumerate() {
                if a != u32::MAX {
                    assert_eq!(a, full[r][i], "{what}, record {r}, position {i}");
                }
            }
        }
    }
}

#[test]
fn the_head_on_the_read_rows_gives_the_loss_and_answers_of_the_head_on_every_row() {
    assert_same_numbers(&load_model("llama-tiny"), "llama-tiny");
    let mut lora = load_model("llama-tiny");
    load_adapter(&mut lora, "llama", &fixture("adapters/lora"), &device()).unwrap();
    assert_same_numbers(&lora, "llama-tiny + LoRA");
    assert_same_numbers(&load_model("chatglm-tiny"), "chatglm-tiny");
}

#[test]
fn behind_virtual_tokens_the_last_one_predicts_the_first_label_as_before() {
    // Prompt tuning prepends virtual tokens: the loss lead is 1.
    let mut model = load_model("llama-tiny");
    load_adapter(&mut model, "llama", &fixture("adapters/prompt"), &device()).unwrap();
    assert_eq!(model.loss_lead(), 1);
    assert_same_numbers(&model, "llama-tiny + prompt tuning");
}

fn tiny_tokenizer() -> TextTokenizer {
    TextTokenizer::load(&fixture("llama-tiny")).unwrap()
}

#[test]
fn decode_bytes_are_what_decode_turns_into_text() {
    let tokenizer = tiny_tokenizer();
    let text = "正面 负面 mixed ASCII, émigré… 情感倾向：“正面”";
    let ids = tokenizer.encode(text, false).unwrap();
    for end in 0..=ids.len() {
        for skip in [true, false] {
            let bytes = tokenizer.decode_bytes(&ids[..end], skip).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                tokenizer.decode(&ids[..end], skip).unwrap(),
                "first {end} tokens"
            );
        }
    }
    // Special tokens are skipped as decode skips them.
    let eos = tokenizer.eos_id().unwrap();
    let with_eos = [ids.clone(), vec![eos]].concat();
    assert_eq!(
        tokenizer.decode_bytes(&with_eos, true).unwrap(),
        tokenizer.decode_bytes(&ids, true).unwrap()
    );
}

#[test]
fn an_answer_is_cut_only_when_no_continuation_can_match() {
    let tokenizer = tiny_tokenizer();
    let ids = |s: &str| tokenizer.encode(s, false).unwrap();
    let reference = "正面";
    // Every proper prefix of the reference's tokens may still match.
    let full = ids(reference);
    for end in 0..=full.len() {
        assert!(
            !cannot_match(&tokenizer, &full[..end], reference),
            "prefix of {end}"
        );
    }
    // The other label, cut anywhere after its first token (which alone decodes to U+FFFD).
    let other = ids("负面");
    assert!(!tokenizer.decode(&other[..1], true).unwrap().contains('负'));
    for end in 1..=other.len() {
        assert!(
            cannot_match(&tokenizer, &other[..end], reference),
            "负面 to {end}"
        );
    }
    assert!(cannot_match(&tokenizer, &ids("情感倾向"), reference));
    assert!(cannot_match(&tokenizer, &ids("\n 负"), reference));
    // Leading whitespace is trimmed by the exact match, so it may still match.
    assert!(!cannot_match(&tokenizer, &ids("\n 正"), reference));
    // The reference and more: the rest may be whitespace.
    assert!(!cannot_match(&tokenizer, &ids("正面 "), reference));
    // A start that may be non-ASCII whitespace (U+3000, U+00A0, quotes share the lead byte).
    assert!(!cannot_match(&tokenizer, &ids("\u{3000}正面"), reference));
    assert!(!cannot_match(&tokenizer, &ids("“正面”"), reference));
    // Nothing decoded yet.
    assert!(!cannot_match(&tokenizer, &[], reference));
}

//! The SFT data pipeline on the ChatML tokenizer fixture: formats, loss masks, truncation, splits,
//! batches, the committed datasets, and every kind of bad data file.

use std::io::Write;
use std::path::{Path, PathBuf};

use peft::data::{self, BatchConfig, Builtin, DataConfig, Encoded, Format, Template};
use peft::error::DataError;
use peft::tokenizer::TextTokenizer;
use rstest::rstest;

use crate::common::*;

fn tokenizer() -> TextTokenizer {
    TextTokenizer::load(&fixture("tokenizer")).unwrap()
}

/// A data file in a fresh temp dir; the dir lives as long as the returned guard.
fn data_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    (dir, path)
}

fn prepare(bytes: &[u8], edit: impl FnOnce(&mut DataConfig)) -> Result<data::Prepared, DataError> {
    let (_dir, path) = data_file(bytes);
    let mut config = DataConfig::new(&path);
    edit(&mut config);
    data::prepare(&config, &tokenizer())
}

/// The decoded runs of consecutive learned tokens.
fn learned_runs(tokenizer: &TextTokenizer, record: &Encoded) -> Vec<String> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut previous = false;
    for &label in &record.labels {
        let learned = label != -100;
        if learned && !previous {
            runs.push(Vec::new());
        }
        if learned {
            runs.last_mut().unwrap().push(label as u32);
        }
        previous = learned;
    }
    runs.iter()
        .map(|ids| tokenizer.decode(ids, false).unwrap())
        .collect()
}

const MULTI_TURN: &str = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine, thanks."}]}"#;

#[test]
fn labels_cover_exactly_every_assistant_turn_with_its_end_of_turn_token() {
    let prepared = prepare(MULTI_TURN.as_bytes(), |_| {}).unwrap();
    let record = &prepared.train[0];
    assert_eq!(
        learned_runs(&tokenizer(), record),
        ["Hello there<|im_end|>\n", "Fine, thanks.<|im_end|>\n"]
    );
    let text = tokenizer()
        .decode(
            &record.ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            false,
        )
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n\
         <|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\nFine, thanks.<|im_end|>\n"
    );
}

#[test]
fn training_on_the_prompt_learns_every_token() {
    let prepared = prepare(MULTI_TURN.as_bytes(), |c| c.train_on_prompt = true).unwrap();
    let record = &prepared.train[0];
    assert_eq!(record.labels, record.ids);
}

#[test]
fn the_builtin_chatml_template_masks_like_the_tokenizers_own() {
    let own = prepare(MULTI_TURN.as_bytes(), |_| {}).unwrap();
    let builtin = prepare(MULTI_TURN.as_bytes(), |c| {
        c.template = Template::Builtin(Builtin::ChatMl)
    })
    .unwrap();
    assert_eq!(own.train, builtin.train);
}

#[rstest]
#[case::plain("The quick brown fox.", false)]
#[case::with_eos("混合 text, 123", true)]
fn text_records_encode_exactly_as_the_tokenizer_with_its_specials(
    #[case] text: &str,
    #[case] append_eos: bool,
) {
    let line = serde_json::json!({ "text": text }).to_string();
    let prepared = prepare(line.as_bytes(), |c| c.append_eos = append_eos).unwrap();
    let tokenizer = tokenizer();
    let mut expected: Vec<i64> = tokenizer
        .encode(text, true)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    expected.extend(append_eos.then(|| i64::from(tokenizer.eos_id().unwrap())));
    assert_eq!(prepared.train[0].ids, expected);
    assert_eq!(prepared.train[0].labels, expected);
}

#[rstest]
#[case::alpaca(
    r#"{"instruction": "Add", "input": "1+1", "output": "2"}"#,
    "<|im_start|>user\nAdd\n1+1<|im_end|>\n"
)]
#[case::sharegpt(
    r#"{"conversations": [{"from": "human", "value": "Add 1+1"}, {"from": "gpt", "value": "2"}]}"#,
    "<|im_start|>user\nAdd 1+1<|im_end|>\n"
)]
#[case::messages(r#"{"messages": [{"role": "user", "content": "Add 1+1"}, {"role": "assistant", "content": "2"}]}"#, "<|im_start|>user\nAdd 1+1<|im_end|>\n")]
fn each_chat_format_is_detected_and_learns_its_answer(#[case] line: &str, #[case] prompt: &str) {
    let prepared = prepare(line.as_bytes(), |_| {}).unwrap();
    let tokenizer = tokenizer();
    let ids: Vec<u32> = prepared.train[0].ids.iter().map(|&i| i as u32).collect();
    assert!(tokenizer.decode(&ids, false).unwrap().starts_with(prompt));
    assert_eq!(
        learned_runs(&tokenizer, &prepared.train[0]),
        ["2<|im_end|>\n"]
    );
}

#[test]
fn alpaca_history_turns_are_learned_too() {
    let line = r#"{"instruction": "and 2+2?", "output": "4", "history": [["1+1?", "2"]]}"#;
    let prepared = prepare(line.as_bytes(), |_| {}).unwrap();
    assert_eq!(
        learned_runs(&tokenizer(), &prepared.train[0]),
        ["2<|im_end|>\n", "4<|im_end|>\n"]
    );
}

#[test]
fn a_forced_format_overrides_detection() {
    let line = r#"{"text": "plain", "instruction": "x", "output": "y"}"#;
    let prepared = prepare(line.as_bytes(), |c| c.format = Some(Format::Text)).unwrap();
    assert_eq!(
        prepared.train[0].ids,
        tokenizer()
            .encode("plain", true)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_json_array_file_is_read_like_jsonl() {
    let array = format!("[\n{MULTI_TURN},\n{MULTI_TURN}\n]");
    assert_eq!(prepare(array.as_bytes(), |_| {}).unwrap().train.len(), 2);
}

#[test]
fn a_long_instruction_loses_its_tail_and_the_short_response_stays_whole() {
    let long_prompt = "word ".repeat(200);
    let line = serde_json::json!({"instruction": long_prompt, "output": "The answer."}).to_string();
    let prepared = prepare(line.as_bytes(), |c| c.max_len = 32).unwrap();
    let record = &prepared.train[0];
    assert_eq!(record.len(), 32);
    assert_eq!(
        learned_runs(&tokenizer(), record),
        ["The answer.<|im_end|>\n"]
    );
    assert_eq!((prepared.stats.truncated, prepared.stats.dropped), (1, 0));
}

#[test]
fn a_long_response_loses_its_tail_as_llama_factory_cuts_the_target() {
    let fits = r#"{"instruction": "Hi", "output": "Yo"}"#;
    let too_long =
        serde_json::json!({"instruction": "Hi", "output": "word ".repeat(100)}).to_string();
    let prepared = prepare(format!("{fits}\n{too_long}\n").as_bytes(), |c| {
        c.max_len = 24
    })
    .unwrap();
    let stats = &prepared.stats;
    assert_eq!(
        (prepared.train.len(), stats.truncated, stats.dropped),
        (2, 1, 0)
    );
    let cut = &prepared.train[1];
    assert_eq!(cut.len(), 24);
    let learned = learned_runs(&tokenizer(), cut);
    assert!(learned[0].starts_with("word word"), "{learned:?}");
}

#[test]
fn truncation_keeps_the_system_prompt_and_instruction_and_cuts_the_input() {
    let record = serde_json::json!({
        "system": "Be brief.",
        "instruction": "Summarise the text.",
        "input": "filler ".repeat(200),
        "output": "Short.",
    });
    let prepared = prepare(record.to_string().as_bytes(), |c| c.max_len = 64).unwrap();
    let r = &prepared.train[0];
    assert_eq!(r.len(), 64);
    let ids: Vec<u32> = r.ids.iter().map(|&i| i as u32).collect();
    let text = tokenizer().decode(&ids, false).unwrap();
    assert!(
        text.contains("Be brief.") && text.contains("Summarise the text.\nfiller"),
        "{text}"
    );
    assert_eq!(learned_runs(&tokenizer(), r), ["Short.<|im_end|>\n"]);
}

#[test]
fn the_eval_split_is_seeded_and_disjoint() {
    let lines: String = (0..20)
        .map(|i| format!("{{\"instruction\": \"q{i}\", \"output\": \"a{i}\"}}\n"))
        .collect();
    let a = prepare(lines.as_bytes(), |c| c.eval_split = 0.2).unwrap();
    let b = prepare(lines.as_bytes(), |c| c.eval_split = 0.2).unwrap();
    assert_eq!((a.train.len(), a.eval.len()), (16, 4));
    assert_eq!(a.eval, b.eval);
    assert!(a.eval.iter().all(|e| !a.train.contains(e)));
}

#[test]
fn a_separate_eval_file_is_encoded_the_same_way() {
    let (_dir, eval) = data_file(MULTI_TURN.as_bytes());
    let prepared = prepare(MULTI_TURN.as_bytes(), |c| c.eval_data = Some(eval.clone())).unwrap();
    assert_eq!(prepared.eval, prepared.train);
}

#[test]
fn batches_from_prepared_records_are_right_padded_with_the_pad_id() {
    let short = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}"#;
    let lines = format!("{MULTI_TURN}\n{short}\n");
    let prepared = prepare(lines.as_bytes(), |_| {}).unwrap();
    let config = BatchConfig {
        batch_size: 2,
        seed: 1,
        shuffle: true,
        group_by_length: true,
        balance_labels: false,
        pack: None,
        pad_id: prepared.pad_id,
    };
    let batches = data::batches(&prepared.train, &config, 0);
    let pad = i64::from(tokenizer().pad_id().unwrap());
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(
        b.seq,
        prepared.train.iter().map(Encoded::len).max().unwrap()
    );
    for (t, &m) in b.mask.iter().enumerate() {
        assert_eq!(
            m == 0,
            b.ids[t] == pad && b.labels[t] == -100,
            "position {t}"
        );
    }
}

/// Each committed dataset reads, detects its format and encodes on the tiny Llama's tokenizer.
#[rstest]
#[case::tiny_instruct("tiny_instruct.jsonl", 64)]
#[case::sentiment_train("sentiment_zh/train.jsonl", 2000)]
#[case::sentiment_eval("sentiment_zh/eval.jsonl", 200)]
#[case::chatterbot_english("chatterbot/english.jsonl", 874)]
#[case::chatterbot_chinese("chatterbot/chinese.jsonl", 465)]
fn the_committed_datasets_encode_without_loss(#[case] file: &str, #[case] records: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets")
        .join(file);
    let tokenizer = TextTokenizer::load(&fixture("llama-tiny")).unwrap();
    let prepared = data::prepare(
        &DataConfig {
            max_len: 4096,
            ..DataConfig::new(path)
        },
        &tokenizer,
    )
    .unwrap();
    assert_eq!(
        (
            prepared.train.len(),
            prepared.stats.dropped,
            prepared.stats.skipped
        ),
        (records, 0, 0)
    );
    assert!(prepared.train.iter().all(|r| r.targets() > 0));
}

/// Every bad data file fails with a message naming the file (and line) and the problem.
#[rstest]
#[case::malformed_json(b"{\"text\": \"ok\"}\n{\"text\": oops}\n" as &[u8], ":2: invalid JSON: expected value")]
#[case::missing_field(
    b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\"}\n",
    ":2: alpaca record is missing the field `output`"
)]
#[case::unknown_fields(
    b"{\"prompt\": \"a\"}\n",
    ":1: cannot tell the format from the fields [prompt]"
)]
#[case::empty_role(
    b"{\"messages\": [{\"role\": \"\", \"content\": \"a\"}]}\n",
    ":1: message 0 has an empty role"
)]
#[case::no_assistant(
    b"{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}]}\n",
    ":1: the conversation has no assistant turn"
)]
#[case::non_utf8(
    b"{\"text\": \"ok\"}\n{\"text\": \"\xc3\x28\"}\n",
    ":2: not valid UTF-8 (invalid byte at column 11)"
)]
#[case::empty_file(b"\n\n", "no records (the file is empty)")]
fn bad_data_files_are_errors_naming_the_file_line_and_problem(
    #[case] bytes: &[u8],
    #[case] message: &str,
) {
    let (_dir, path) = data_file(bytes);
    let err = data::prepare(&DataConfig::new(&path), &tokenizer())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(err.contains(message), "{err}");
}

#[test]
fn skipping_bad_records_counts_them_and_keeps_the_rest() {
    let bytes = b"{\"text\": \"ok\"}\n{oops\n{\"body\": 1}\n\xff\n{\"text\": \"fine\"}\n";
    let prepared = prepare(bytes, |c| c.skip_bad_records = true).unwrap();
    assert_eq!(
        (
            prepared.train.len(),
            prepared.stats.skipped,
            prepared.stats.records
        ),
        (2, 3, 2)
    );
}

#[test]
fn a_file_of_only_bad_records_is_empty_even_when_skipping() {
    let err = prepare(b"{oops\n", |c| c.skip_bad_records = true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no records (the file is empty, or all 1 were bad and skipped)"),
        "{err}"
    );
}

#[test]
fn a_dataset_where_every_record_is_dropped_is_an_error() {
    // The system prompt is the template's head: kept whole, so nothing of the response fits.
    let line =
        serde_json::json!({"system": "word ".repeat(100), "instruction": "Hi", "output": "Yo"})
            .to_string();
    let err = prepare(line.as_bytes(), |c| c.max_len = 24)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("all 1 records were dropped: none fits in --max-len 24"),
        "{err}"
    );
}

#[test]
fn a_max_len_smaller_than_the_template_is_an_error() {
    let err = prepare(MULTI_TURN.as_bytes(), |c| c.max_len = 8)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--max-len 8 is smaller than the chat template itself"),
        "{err}"
    );
}

#[test]
fn a_chat_file_needs_a_template_when_the_tokenizer_has_none() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tokenizer").join(file), dir.path().join(file)).unwrap();
    }
    let no_template = TextTokenizer::load(dir.path()).unwrap();
    let (_data, path) = data_file(MULTI_TURN.as_bytes());
    let err = data::prepare(&DataConfig::new(&path), &no_template)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("messages records need a chat template, but the tokenizer has none"),
        "{err}"
    );
    let config = DataConfig {
        template: Template::Builtin(Builtin::ChatMl),
        ..DataConfig::new(&path)
    };
    assert_eq!(data::prepare(&config, &no_template).unwrap().train.len(), 1);
}

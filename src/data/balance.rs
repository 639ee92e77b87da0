//! Label-balanced batches (`--balance-labels`) for a classification task trained as text: every
//! batch holds each label's records in equal number, so no step pushes the model towards one
//! answer. On the sentiment task, shuffled batches of 4 let LoRA learn the answer format and give
//! one label to every review; balanced, length-matched ones learned the task (README, "Main job on
//! a real model"). A label is a record's learned tokens (its response), so this needs few
//! distinct responses; records of a label past what the smallest label can match sit out the
//! epoch (a different subset each epoch when shuffling).

use std::collections::BTreeMap;

use crate::error::DataError;

use super::batcher::{shuffle, SplitMix64};
use super::encode::Encoded;

/// At most this many labels: beyond it the responses are free text, not labels (as the task
/// metric's `MAX_LABELS`).
pub const MAX_LABELS: usize = 20;

/// The stream of the per-label shuffles (the batch order uses the epoch's own stream).
const LABEL_STREAM: u64 = u64::MAX - 1;

/// Record indices per label (a label: the record's learned token ids), labels in a fixed order.
pub fn labels(records: &[Encoded]) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<Vec<i64>, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let learned: Vec<i64> = r
            .labels
            .iter()
            .copied()
            .filter(|&l| l != crate::train::loss::IGNORE_INDEX)
            .collect();
        by.entry(learned).or_default().push(i);
    }
    by.into_values().collect()
}

/// Refuses a data set that cannot be batched by label, before any work: more than
/// [`MAX_LABELS`] distinct responses, a batch size that is not a multiple of their number, or a
/// label with fewer records than its share of one batch.
pub fn check(records: &[Encoded], batch_size: usize) -> Result<(), DataError> {
    let labels = labels(records);
    let bad = |why: String| Err(DataError::Option(format!("--balance-labels: {why}")));
    if labels.len() > MAX_LABELS {
        return bad(format!(
            "the training data has {} distinct responses, more than the {MAX_LABELS} a label task can have",
            labels.len()
        ));
    }
    if labels.len() < 2 {
        return bad("the training data has a single response; nothing to balance".into());
    }
    if batch_size % labels.len() != 0 {
        return bad(format!(
            "--batch-size {batch_size} is not a multiple of the {} labels",
            labels.len()
        ));
    }
    let share = batch_size / labels.len();
    let fewest = labels.iter().map(Vec::len).min().unwrap_or(0);
    if fewest < share {
        return bad(format!(
            "a label has {fewest} records, fewer than its {share} per batch"
        ));
    }
    Ok(())
}

/// The epoch's batches as groups of record indices: each label's records (shuffled by
/// `(seed, epoch)` when `shuffle`, else in file order) cut to what the smallest label matches;
/// with `by_length` each label's records sorted by length, so the k-th of every label share a
/// batch and pad little; a batch interleaves the labels; batches shuffled when `shuffle`.
/// [`check`] has passed.
pub fn groups(
    records: &[Encoded],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffled: bool,
    by_length: bool,
) -> Vec<Vec<usize>> {
    let mut labels = labels(records);
    if labels.is_empty() {
        return Vec::new();
    }
    let share = (batch_size / labels.len()).max(1);
    let batches = labels.iter().map(Vec::len).min().unwrap_or(0) / share;
    let mut rng = SplitMix64::new(seed ^ LABEL_STREAM, epoch);
    for label in &mut labels {
        if shuffled {
            shuffle(label, &mut rng);
        }
        label.truncate(batches * share);
        if by_length {
            label.sort_by_key(|&i| records[i].len());
        }
    }
    let mut groups: Vec<Vec<usize>> = (0..batches)
        .map(|b| {
            (0..share)
                .flat_map(|k| labels.iter().map(move |l| l[b * share + k]))
                .collect()
        })
        .collect();
    if shuffled {
        shuffle(&mut groups, &mut SplitMix64::new(seed, epoch));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::IGNORE_INDEX;

    /// A record of `len` prompt tokens answered by `answer`.
    fn record(len: usize, answer: i64) -> Encoded {
        let mut ids: Vec<i64> = (0..len as i64).collect();
        let mut labels = vec![IGNORE_INDEX; len];
        ids.push(answer);
        labels.push(answer);
        Encoded { ids, labels }
    }

    /// 6 records answered 1 and 10 answered 2, of mixed lengths.
    fn task() -> Vec<Encoded> {
        (0..16)
            .map(|i| record(3 + (i * 7) % 16, if i % 3 == 0 { 1 } else { 2 }))
            .collect()
    }

    fn answer(records: &[Encoded], i: usize) -> i64 {
        *records[i].labels.last().unwrap()
    }

    #[test]
    fn every_batch_holds_each_label_equally_and_each_record_at_most_once() {
        let records = task();
        for (shuffled, by_length) in [(false, false), (true, false), (true, true)] {
            for epoch in 0..3 {
                let groups = groups(&records, 4, 7, epoch, shuffled, by_length);
                // 6 records of label 1, two per batch: three batches.
                assert_eq!(groups.len(), 3);
                let mut seen = std::collections::HashSet::new();
                for g in &groups {
                    let ones = g.iter().filter(|&&i| answer(&records, i) == 1).count();
                    assert_eq!((g.len(), ones), (4, 2), "{g:?}");
                    assert!(g.iter().all(|&i| seen.insert(i)), "{g:?}");
                }
            }
        }
    }

    #[test]
    fn without_shuffling_the_file_order_decides_and_with_it_the_epoch_does() {
        let records = task();
        let fixed = groups(&records, 4, 7, 0, false, false);
        assert_eq!(fixed, groups(&records, 4, 7, 5, false, false));
        assert_eq!(fixed[0], vec![0, 1, 3, 2]);
        assert_ne!(
            groups(&records, 4, 7, 0, true, false),
            groups(&records, 4, 7, 1, true, false)
        );
    }

    #[test]
    fn length_matching_puts_records_of_similar_length_in_one_batch() {
        let records = task();
        let spread = |by_length| -> usize {
            groups(&records, 4, 7, 0, false, by_length)
                .iter()
                .map(|g| {
                    let lens = g.iter().map(|&i| records[i].len());
                    lens.clone().max().unwrap() - lens.min().unwrap()
                })
                .sum()
        };
        assert!(
            spread(true) < spread(false),
            "{} vs {}",
            spread(true),
            spread(false)
        );
    }

    #[test]
    fn balanced_batches_are_the_groups_padded() {
        let records = task();
        let config = crate::data::BatchConfig {
            batch_size: 4,
            seed: 7,
            shuffle: true,
            group_by_length: true,
            balance_labels: true,
            pack: None,
            pad_id: 0,
        };
        let batches = crate::data::batches(&records, &config, 2);
        let groups = groups(&records, 4, 7, 2, true, true);
        assert_eq!(batches.len(), groups.len());
        for (batch, group) in batches.iter().zip(&groups) {
            let longest = group.iter().map(|&i| records[i].len()).max().unwrap();
            assert_eq!((batch.batch, batch.seq), (4, longest));
            for (row, &i) in group.iter().enumerate() {
                let ids = &batch.ids[row * batch.seq..][..records[i].len()];
                assert_eq!(ids, records[i].ids.as_slice());
            }
        }
    }

    #[test]
    fn free_text_an_odd_batch_or_a_missing_label_share_is_refused() {
        let records = task();
        assert!(check(&records, 4).is_ok());
        let odd = check(&records, 3).unwrap_err().to_string();
        assert!(
            odd.contains("--batch-size 3 is not a multiple of the 2 labels"),
            "{odd}"
        );
        let big = check(&records, 14).unwrap_err().to_string();
        assert!(big.contains("fewer than its 7 per batch"), "{big}");
        let free: Vec<Encoded> = (0..30).map(|i| record(2, 100 + i)).collect();
        let e = check(&free, 4).unwrap_err().to_string();
        assert!(e.contains("30 distinct responses"), "{e}");
        let one: Vec<Encoded> = (0..4).map(|_| record(2, 5)).collect();
        assert!(check(&one, 4)
            .unwrap_err()
            .to_string()
            .contains("single response"));
    }
}

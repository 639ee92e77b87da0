//! Encoded records → padded micro-batches: seeded shuffling, optional packing, length grouping and
//! right padding. Everything is a pure function of (records, config, epoch), so a resumed run can
//! rebuild the exact batch order and skip to its data position.

use crate::train::loss::IGNORE_INDEX;
use crate::train::step::Batch;

use super::balance;
use super::encode::Encoded;

/// How records become batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle the records each epoch (`--no-shuffle` turns it off).
    pub shuffle: bool,
    /// Put records of similar length together, as transformers' `group_by_length`.
    pub group_by_length: bool,
    /// Every batch holds each label equally ([`super::balance`]); not with `pack`.
    pub balance_labels: bool,
    /// Concatenate short records into rows of at most this many tokens.
    pub pack: Option<usize>,
    pub pad_id: i64,
}

/// The batches of one epoch, in order.
pub fn batches(records: &[Encoded], config: &BatchConfig, epoch: u64) -> Vec<Batch> {
    let size = config.batch_size.max(1);
    if config.balance_labels {
        let groups = balance::groups(
            records,
            size,
            config.seed,
            epoch,
            config.shuffle,
            config.group_by_length,
        );
        return groups
            .iter()
            .map(|g| pad(g.iter().map(|&i| &records[i]), config.pad_id))
            .collect();
    }
    let mut order: Vec<usize> = (0..records.len()).collect();
    if config.shuffle {
        shuffle(&mut order, &mut SplitMix64::new(config.seed, epoch));
    }
    let rows: Vec<Encoded> = match config.pack {
        Some(pack_len) => pack(records, &order, pack_len),
        None => order.iter().map(|&i| records[i].clone()).collect(),
    };
    let groups: Vec<Vec<usize>> = if config.group_by_length {
        length_grouped(&rows, size)
    } else {
        (0..rows.len())
            .collect::<Vec<_>>()
            .chunks(size)
            .map(<[usize]>::to_vec)
            .collect()
    };
    groups
        .iter()
        .map(|group| pad(group.iter().map(|&i| &rows[i]), config.pad_id))
        .collect()
}

/// Greedy packing in the given order: a row takes records until the next would exceed `pack_len`.
/// Records in a row attend to each other (no block-diagonal mask), as LLaMA-Factory's `packing`
/// without `neat_packing`; the first label of each record is ignored, as transformers'
/// `DataCollatorWithFlattening`, so no record learns to predict across a boundary.
fn pack(records: &[Encoded], order: &[usize], pack_len: usize) -> Vec<Encoded> {
    let mut rows = Vec::new();
    let mut row = Encoded {
        ids: Vec::new(),
        labels: Vec::new(),
    };
    for &i in order {
        let record = &records[i];
        if !row.is_empty() && row.len() + record.len() > pack_len {
            rows.push(std::mem::replace(
                &mut row,
                Encoded {
                    ids: Vec::new(),
                    labels: Vec::new(),
                },
            ));
        }
        row.ids.extend(&record.ids);
        let mut labels = record.labels.iter().copied();
        row.labels.extend(labels.next().map(|_| IGNORE_INDEX));
        row.labels.extend(labels);
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

/// transformers' `get_length_grouped_indices`: mega-batches of 50 batches, each sorted by length
/// (longest first) and cut into batches; the batch holding the longest row goes first, so memory
/// runs out on step one rather than hours in.
fn length_grouped(rows: &[Encoded], size: usize) -> Vec<Vec<usize>> {
    let order: Vec<usize> = (0..rows.len()).collect();
    let mut groups = Vec::new();
    for mega in order.chunks(size * 50) {
        let mut mega = mega.to_vec();
        mega.sort_by_key(|&i| std::cmp::Reverse(rows[i].len()));
        groups.extend(mega.chunks(size).map(<[usize]>::to_vec));
    }
    let longest = groups
        .iter()
        .enumerate()
        .max_by_key(|(k, g)| (rows[g[0]].len(), std::cmp::Reverse(*k)))
        .map(|(k, _)| k);
    if let Some(k) = longest {
        groups.swap(0, k);
    }
    groups
}

/// Right-pads rows to the longest: ids `pad_id`, mask 0, labels −100.
/// ids, mask, labels: [batch, seq] row-major.
fn pad<'a>(rows: impl Iterator<Item = &'a Encoded> + Clone, pad_id: i64) -> Batch {
    let seq = rows.clone().map(Encoded::len).max().unwrap_or(0);
    let mut batch = Batch {
        ids: Vec::new(),
        mask: Vec::new(),
        labels: Vec::new(),
        batch: 0,
        seq,
    };
    for row in rows {
        let fill = seq - row.len();
        batch.ids.extend(
            row.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, fill)),
        );
        batch
            .mask
            .extend(std::iter::repeat_n(1, row.len()).chain(std::iter::repeat_n(0, fill)));
        batch.labels.extend(
            row.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(IGNORE_INDEX, fill)),
        );
        batch.batch += 1;
    }
    batch
}

/// Fisher–Yates with our own generator: `rand`'s `StdRng` may change its stream between versions,
/// and a resumed run must see the same order.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast and fully specified.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// One stream per (seed, stream): epochs, the eval split, ... never share one.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize, first: i64) -> Encoded {
        let ids: Vec<i64> = (0..len as i64).map(|t| first + t).collect();
        Encoded {
            labels: ids.clone(),
            ids,
        }
    }

    fn config(batch_size: usize) -> BatchConfig {
        BatchConfig {
            batch_size,
            seed: 7,
            shuffle: false,
            group_by_length: false,
            balance_labels: false,
            pack: None,
            pad_id: 0,
        }
    }

    #[test]
    fn rows_are_right_padded_with_the_pad_id_a_zero_mask_and_ignored_labels() {
        let b = batches(&[record(3, 10), record(1, 20)], &config(2), 0);
        assert_eq!((b.len(), b[0].batch, b[0].seq), (1, 2, 3));
        assert_eq!(b[0].ids, [10, 11, 12, 20, 0, 0]);
        assert_eq!(b[0].mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(b[0].labels, [10, 11, 12, 20, -100, -100]);
    }

    #[test]
    fn shuffling_depends_on_seed_and_epoch_only() {
        let records: Vec<Encoded> = (0..20).map(|i| record(1, i)).collect();
        let cfg = BatchConfig {
            shuffle: true,
            ..config(4)
        };
        let firsts = |epoch| {
            batches(&records, &cfg, epoch)
                .iter()
                .flat_map(|b| b.ids.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(firsts(0), firsts(0));
        assert_ne!(firsts(0), firsts(1));
        let mut sorted = firsts(1);
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn length_grouping_puts_the_longest_batch_first_and_similar_lengths_together() {
        let records: Vec<Encoded> = [1, 5, 2, 6, 1, 5].iter().map(|&n| record(n, 1)).collect();
        let cfg = BatchConfig {
            group_by_length: true,
            ..config(2)
        };
        let seqs: Vec<usize> = batches(&records, &cfg, 0).iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [6, 5, 1]);
        let padding = |cfg: &BatchConfig| -> usize {
            batches(&records, cfg, 0)
                .iter()
                .map(|b| b.mask.iter().filter(|&&m| m == 0).count())
                .sum()
        };
        assert_eq!((padding(&cfg), padding(&config(2))), (4, 12));
    }

    #[test]
    fn packing_fills_rows_up_to_the_limit_and_ignores_each_records_first_label() {
        let records = [record(3, 10), record(2, 20), record(4, 30)];
        let cfg = BatchConfig {
            pack: Some(5),
            ..config(8)
        };
        let b = batches(&records, &cfg, 0);
        assert_eq!((b[0].batch, b[0].seq), (2, 5));
        assert_eq!(&b[0].ids[..5], [10, 11, 12, 20, 21]);
        assert_eq!(&b[0].labels[..5], [-100, 11, 12, -100, 21]);
        assert_eq!(&b[0].mask[5..], [1, 1, 1, 1, 0]);
    }
}

//! The task metric of a comparison: exact-match accuracy when the eval responses are labels (a
//! few distinct short answers, e.g. 正面/负面), ROUGE-L F1 otherwise, none for plain text. Each
//! eval record is split into the prompt (everything before its last learned run of tokens: the
//! chat template's generation prompt included) and the reference (that run, decoded).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::data::Encoded;
use crate::train::loss::IGNORE_INDEX;

/// Labels are few: at most this many distinct responses...
const MAX_LABELS: usize = 20;
/// ...each at most this many characters.
const MAX_LABEL_CHARS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskMetric {
    /// Share of predictions equal to the reference (both trimmed).
    ExactMatch,
    /// Mean ROUGE-L F1 (longest common subsequence of words; CJK characters count as words).
    RougeL,
}

impl TaskMetric {
    pub fn name(self) -> &'static str {
        match self {
            TaskMetric::ExactMatch => "exact_match",
            TaskMetric::RougeL => "rouge_l",
        }
    }

    /// Exact match when the references look like labels, ROUGE-L otherwise.
    pub fn choose(references: &[String]) -> TaskMetric {
        let distinct: HashSet<&str> = references.iter().map(|r| r.trim()).collect();
        let labels = references.len() >= 2
            && distinct.len() <= MAX_LABELS.min(references.len() / 2)
            && distinct
                .iter()
                .all(|r| r.chars().count() <= MAX_LABEL_CHARS);
        if labels {
            TaskMetric::ExactMatch
        } else {
            TaskMetric::RougeL
        }
    }

    /// One prediction's score in [0, 1].
    pub fn score(self, prediction: &str, reference: &str) -> f64 {
        match self {
            TaskMetric::ExactMatch => f64::from(u8::from(prediction.trim() == reference.trim())),
            TaskMetric::RougeL => rouge_l(prediction, reference),
        }
    }
}

impl fmt::Display for TaskMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskMetric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" | "exact_match" | "exact-match" | "accuracy" => Ok(TaskMetric::ExactMatch),
            "rouge-l" | "rouge_l" | "rougel" => Ok(TaskMetric::RougeL),
            _ => Err(format!(
                "unknown task metric `{s}` (expected exact-match or rouge-l)"
            )),
        }
    }
}

/// A record's prompt ids and the ids of its last learned run (the response to generate);
/// `None` when nothing is learned or nothing precedes the response.
pub fn split_response(record: &Encoded) -> Option<(Vec<u32>, Vec<u32>)> {
    let learned = |t: usize| record.labels[t] != IGNORE_INDEX;
    let end = (0..record.labels.len()).rev().find(|&t| learned(t))? + 1;
    let start = (0..end).rev().find(|&t| !learned(t)).map_or(0, |t| t + 1);
    if start == 0 {
        return None;
    }
    let ids = |r: std::ops::Range<usize>| record.ids[r].iter().map(|&i| i as u32).collect();
    Some((ids(0..start), ids(start..end)))
}

/// Greedy decoding's answer to a record, read off one teacher-forced forward pass: `argmax[t]` is
/// the model's arg-max token after seeing `ids[..=t]`. Greedy decoding stops at the first token in
/// `eos`, so it reproduces the response exactly when the arg-max equals every response token up to
/// and including the first end-of-sequence token; when the response holds none (a template whose
/// end-of-turn token is not a stop token), the arg-max after its last token must be one. Decoding
/// diverges at the first mismatch, so the tokens it produces start with the matching prefix and
/// the mismatched token. Returns those tokens and whether they are the whole answer; `None` for
/// records without a response.
///
/// Equal to exact match of real greedy generation except when the model would spell the same text
/// with other tokens (counted wrong here), at the cost of one forward pass instead of one per
/// generated token.
pub fn forced_greedy(record: &Encoded, argmax: &[u32], eos: &[u32]) -> Option<(Vec<u32>, bool)> {
    let learned = |t: usize| record.labels[t] != IGNORE_INDEX;
    let end = (0..record.labels.len()).rev().find(|&t| learned(t))? + 1;
    let start = (0..end).rev().find(|&t| !learned(t)).map_or(0, |t| t + 1);
    if start == 0 || argmax.len() < end {
        return None;
    }
    let mut produced = Vec::new();
    for t in start..end {
        let (want, got) = (record.ids[t] as u32, argmax[t - 1]);
        produced.push(got);
        if got != want {
            return Some((produced, false));
        }
        if eos.contains(&want) {
            return Some((produced, true));
        }
    }
    let next = argmax[end - 1];
    produced.push(next);
    Some((produced, eos.contains(&next)))
}

/// Words for ROUGE-L: runs of alphanumeric ASCII, lower-cased; every other non-space character
/// (CJK, punctuation) on its own, as character-level Chinese ROUGE does.
fn units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// ROUGE-L F1 (Lin 2004, beta = 1): LCS length over the unit counts of both texts.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (units(prediction), units(reference));
    if p.is_empty() || r.is_empty() {
        return f64::from(u8::from(p.is_empty() && r.is_empty()));
    }
    // Classic O(|p|·|r|) dynamic programme, one row at a time.
    let mut prev = vec![0usize; r.len() + 1];
    for pw in &p {
        let mut row = vec![0usize; r.len() + 1];
        for (j, rw) in r.iter().enumerate() {
            row[j + 1] = if pw == rw {
                prev[j] + 1
            } else {
                row[j].max(prev[j + 1])
            };
        }
        prev = row;
    }
    let lcs = prev[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / p.len() as f64, lcs / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_choose_exact_match_and_free_text_rouge_l() {
        let labels = strings(&["正面", "负面", "正面", "负面", "正面"]);
        assert_eq!(TaskMetric::choose(&labels), TaskMetric::ExactMatch);
        let free = strings(&["I loved it.", "Not much.", "Hello there", "Yes"]);
        assert_eq!(TaskMetric::choose(&free), TaskMetric::RougeL);
        assert_eq!(TaskMetric::choose(&strings(&["x"])), TaskMetric::RougeL);
    }

    #[test]
    fn exact_match_ignores_surrounding_whitespace_only() {
        let m = TaskMetric::ExactMatch;
        assert_eq!(m.score(" 正面\n", "正面"), 1.0);
        assert_eq!(m.score("正面。", "正面"), 0.0);
    }

    #[test]
    fn rouge_l_matches_hand_computed_values() {
        // LCS("the cat sat", "the cat was here") = 2: P = 2/3, R = 2/4, F = 4/7.
        assert!((rouge_l("The cat sat", "the cat was here") - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(rouge_l("正面", "正面"), 1.0);
        // Characters: LCS("很好吃", "很好") = 2: P = 2/3, R = 1, F = 0.8.
        assert!((rouge_l("很好吃", "很好") - 0.8).abs() < 1e-12);
        assert_eq!(rouge_l("abc", "xyz"), 0.0);
        assert_eq!(rouge_l("", "x"), 0.0);
    }

    #[test]
    fn the_response_is_the_last_learned_run() {
        let record = Encoded {
            ids: vec![1, 2, 3, 4, 5, 6, 7, 8],
            labels: vec![-100, -100, 3, -100, -100, 6, 7, -100],
        };
        let (prompt, response) = split_response(&record).unwrap();
        assert_eq!((prompt, response), (vec![1, 2, 3, 4, 5], vec![6, 7]));
        let nothing = Encoded {
            ids: vec![1, 2],
            labels: vec![-100, -100],
        };
        assert!(split_response(&nothing).is_none());
    }

    #[test]
    fn forced_greedy_stops_at_the_first_mismatch_or_end_of_sequence() {
        // Prompt 1 2 3, response 6 7 (7 = end of sequence) then 8 (learned, after it).
        let record = Encoded {
            ids: vec![1, 2, 3, 6, 7, 8],
            labels: vec![-100, -100, -100, 6, 7, 8],
        };
        // argmax[t] predicts ids[t + 1].
        let right = [0, 0, 6, 7, 5, 0];
        assert_eq!(
            forced_greedy(&record, &right, &[7]),
            Some((vec![6, 7], true))
        );
        let wrong = [0, 0, 6, 9, 8, 0];
        assert_eq!(
            forced_greedy(&record, &wrong, &[7]),
            Some((vec![6, 9], false))
        );
        // No stop token in the response: the token after it must be one, else decoding goes on.
        let stops = [0, 0, 6, 7, 8, 2];
        assert_eq!(
            forced_greedy(&record, &stops, &[2]),
            Some((vec![6, 7, 8, 2], true))
        );
        let goes_on = [0, 0, 6, 7, 8, 6];
        assert_eq!(
            forced_greedy(&record, &goes_on, &[2]),
            Some((vec![6, 7, 8, 6], false))
        );
    }
}

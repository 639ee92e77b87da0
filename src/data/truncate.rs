//! Truncation that keeps the task: a conversation longer than `max_len` keeps the template's head
//! (BOS, system prompt, earlier turns) and the instruction, and is cut in the *input* first: the
//! last user message after its first line (alpaca's `instruction\ninput` keeps `instruction`).
//! If that is not enough, the response loses its tail, as LLaMA-Factory's `cutoff_len` splits the
//! budget between source and target (`processor_utils.infer_seqlen`). A record that keeps no
//! response token is dropped.

use crate::error::LoadError;
use crate::tokenizer::TextTokenizer;

use super::encode::{encode_segments, Fit, Tokens};
use super::template::Segment;

/// `segments` with the last user message's content split out of the prompt segment holding it:
/// `[.., before, first line, rest, after, ..]`; returns the segments and the index of `rest`.
fn split_input(segments: &[Segment], input: &str) -> Option<(Vec<Segment>, usize)> {
    let response = segments.iter().rposition(|s| s.learn)?;
    let (at, start) = segments[..response]
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, s)| !s.learn)
        .find_map(|(i, s)| s.text.rfind(input).map(|p| (i, p)))?;
    let text = &segments[at].text;
    let first_line = input.find('\n').map_or(input.len(), |n| n + 1);
    let pieces = [
        &text[..start],
        &input[..first_line],
        &input[first_line..],
        &text[start + input.len()..],
    ];
    let mut out = segments[..at].to_vec();
    out.extend(pieces.iter().map(|p| Segment {
        text: p.to_string(),
        learn: false,
    }));
    out.extend_from_slice(&segments[at + 1..]);
    Some((out, at + 2))
}

/// Where each segment's tokens end in the encoded sequence.
fn segment_ends(tokenizer: &TextTokenizer, segments: &[Segment]) -> Result<Vec<usize>, LoadError> {
    let mut ends = Vec::with_capacity(segments.len());
    let mut total = 0;
    for s in segments {
        total += tokenizer.encode(&s.text, false)?.len();
        ends.push(total);
    }
    Ok(ends)
}

/// Fits a conversation (already known to exceed `max_len`) as the module says, cutting in turn
/// (1) the input after the instruction, (2) the response tail down to half of `max_len`,
/// (3) the instruction's tail, (4) the response tail down to one token. `input` is the content of
/// the last user message (None: no user turn).
pub fn fit_chat_task(
    tokenizer: &TextTokenizer,
    segments: &[Segment],
    input: Option<&str>,
    max_len: usize,
) -> Result<Fit, LoadError> {
    let split = input
        .filter(|i| !i.is_empty())
        .and_then(|i| split_input(segments, i));
    let (segments, rest) = match split {
        Some((s, rest)) => (s, Some(rest)),
        None => (segments.to_vec(), None),
    };
    let mut tokens = encode_segments(tokenizer, &segments)?;
    let mut over = tokens.ids.len().saturating_sub(max_len);
    // Token ranges of the instruction (first line) and the rest of the input; every later cut is
    // after them, so they stay valid.
    let ranges = match rest {
        Some(rest) => {
            let ends = segment_ends(tokenizer, &segments)?;
            Some((
                (ends[rest - 2], ends[rest - 1]),
                (ends[rest - 1], ends[rest]),
            ))
        }
        None => None,
    };
    if let Some((_, input)) = ranges {
        over -= cut_range_tail(&mut tokens, input, over);
    }
    let response = tokens.ids.len() - tokens.response_start;
    let spare = response.saturating_sub(response.min(max_len / 2));
    let answer = (tokens.response_start, tokens.ids.len());
    over -= cut_range_tail(&mut tokens, answer, over.min(spare));
    if let Some((instruction, _)) = ranges {
        over -= cut_range_tail(&mut tokens, instruction, over);
    }
    // The response keeps at least one token (its first, predicted from the prompt).
    if over >= tokens.ids.len() - tokens.response_start {
        return Ok(Fit::Dropped);
    }
    let answer = (tokens.response_start, tokens.ids.len());
    cut_range_tail(&mut tokens, answer, over);
    Ok(Fit::Truncated(tokens))
}

/// Removes up to `n` tokens from the end of `[start, end)`; returns how many.
fn cut_range_tail(tokens: &mut Tokens, (start, end): (usize, usize), n: usize) -> usize {
    let n = n.min(end - start);
    remove(tokens, end - n, end);
    n
}

/// Removes positions `[from, to)`, moving `response_start` when it lies after them.
fn remove(tokens: &mut Tokens, from: usize, to: usize) {
    tokens.ids.drain(from..to);
    tokens.learn.drain(from..to);
    if tokens.response_start >= to {
        tokens.response_start -= to - from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str, learn: bool) -> Segment {
        Segment {
            text: text.into(),
            learn,
        }
    }

    #[test]
    fn the_input_is_split_out_of_the_prompt_after_its_first_line() {
        let segments = [
            seg("<s>System. User: do this\nlong input\nAssistant:", false),
            seg("answer", true),
        ];
        let (split, rest) = split_input(&segments, "do this\nlong input").unwrap();
        let texts: Vec<&str> = split.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "<s>System. User: ",
                "do this\n",
                "long input",
                "\nAssistant:",
                "answer"
            ]
        );
        assert_eq!(rest, 2);
        assert!(split[4].learn && !split[2].learn);
    }

    #[test]
    fn an_input_found_nowhere_in_the_prompt_splits_nothing() {
        let segments = [seg("prompt", false), seg("answer", true)];
        assert!(split_input(&segments, "missing").is_none());
    }

    #[test]
    fn removing_tokens_before_the_response_moves_its_start() {
        let mut t = Tokens {
            ids: vec![1, 2, 3, 4, 5],
            learn: vec![false, false, false, true, true],
            response_start: 3,
        };
        remove(&mut t, 1, 3);
        assert_eq!((t.ids, t.response_start), (vec![1, 4, 5], 1));
    }
}

//! Segments → token ids and labels (−100 where nothing is learned); plain text truncation to
//! `max_len` (conversations: [`super::truncate`]).
//!
//! Each segment is tokenized on its own without added specials, as LLaMA-Factory encodes each
//! template slot (`template.py: _convert_elements_to_ids`); the chat template supplies BOS/EOS.
//! Plain text is encoded as transformers' `tokenizer(text)`, with the tokenizer's own specials.

use crate::error::LoadError;
use crate::tokenizer::TextTokenizer;
use crate::train::loss::IGNORE_INDEX;

use super::template::Segment;

/// One encoded record: `labels[t]` is the token learned at position `t` (the loss shifts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens that count in the loss (after the shift: position 0 is never a target).
    pub fn targets(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// Ids with their learn flags, and where the final response starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    pub learn: Vec<bool>,
    /// Index of the first token of the last learned segment (0 for plain text).
    pub response_start: usize,
}

impl Tokens {
    /// Labels are the ids where learned (everywhere with `train_on_prompt`), −100 elsewhere.
    pub fn into_encoded(self, train_on_prompt: bool) -> Encoded {
        let labels = self
            .ids
            .iter()
            .zip(&self.learn)
            .map(|(&id, &l)| {
                if l || train_on_prompt {
                    id
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Encoded {
            ids: self.ids,
            labels,
        }
    }
}

/// Tokenizes chat segments, each on its own and without added specials.
pub fn encode_segments(
    tokenizer: &TextTokenizer,
    segments: &[Segment],
) -> Result<Tokens, LoadError> {
    let mut tokens = Tokens {
        ids: Vec::new(),
        learn: Vec::new(),
        response_start: 0,
    };
    for segment in segments {
        let ids = tokenizer.encode(&segment.text, false)?;
        if segment.learn {
            tokens.response_start = tokens.ids.len();
        }
        tokens
            .learn
            .extend(std::iter::repeat_n(segment.learn, ids.len()));
        tokens.ids.extend(ids.into_iter().map(i64::from));
    }
    Ok(tokens)
}

/// `text` as `tokenizer(text)` encodes it (BOS etc. from the tokenizer), plus EOS on request; all
/// learned.
pub fn encode_text(
    tokenizer: &TextTokenizer,
    text: &str,
    eos: Option<u32>,
) -> Result<Tokens, LoadError> {
    let mut ids: Vec<i64> = tokenizer
        .encode(text, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    ids.extend(eos.map(i64::from));
    Ok(Tokens {
        learn: vec![true; ids.len()],
        ids,
        response_start: 0,
    })
}

/// What truncation did to a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    Whole(Tokens),
    Truncated(Tokens),
    /// Not even one response token fits after the prompt.
    Dropped,
}

/// Plain text is cut on the right, as transformers' `truncation=True` does by default.
pub fn fit_text(mut tokens: Tokens, max_len: usize) -> Fit {
    if tokens.ids.len() <= max_len {
        return Fit::Whole(tokens);
    }
    tokens.ids.truncate(max_len);
    tokens.learn.truncate(max_len);
    Fit::Truncated(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i64], response_start: usize) -> Tokens {
        let learn = (0..ids.len()).map(|i| i >= response_start).collect();
        Tokens {
            ids: ids.to_vec(),
            learn,
            response_start,
        }
    }

    #[test]
    fn labels_are_ignored_outside_learned_tokens_unless_training_on_the_prompt() {
        let t = tokens(&[1, 5, 6, 7], 2);
        assert_eq!(t.clone().into_encoded(false).labels, [-100, -100, 6, 7]);
        assert_eq!(t.into_encoded(true).labels, [1, 5, 6, 7]);
    }

    #[test]
    fn text_is_cut_on_the_right() {
        let Fit::Truncated(t) = fit_text(tokens(&[1, 2, 3, 4], 0), 3) else {
            panic!("not truncated")
        };
        assert_eq!(t.ids, [1, 2, 3]);
    }
}

//! The output's shard layout and tied embeddings.
//!
//! By default every input shard becomes one output shard with the same file name and the same
//! tensors in the same order; `--max-shard-size` repacks tensors, in input order, into
//! `model-0000i-of-0000N.safetensors` files no larger than the limit (a larger single tensor gets
//! a shard of its own), as transformers' `save_pretrained` does.

use safetensors::Dtype;
use serde_json::Value;

use crate::io::checkpoint::SINGLE_FILE;
use crate::io::{Checkpoint, TensorEntry};
use crate::merge::patches::BaseLookup;

/// One tensor of the output: written under `name`, read from base tensor `source`.
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: String,
    pub source: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn byte_len(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8) as u64
    }
}

/// One output file.
#[derive(Debug, Clone)]
pub struct OutShard {
    pub file: String,
    pub tensors: Vec<OutTensor>,
}

/// (input embedding, output head) weight names of the families we know.
const TIED_PAIRS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "lm_head.weight"),
    (
        "transformer.embedding.word_embeddings.weight",
        "transformer.output_layer.weight",
    ),
];

/// A model whose config says `tie_word_embeddings: true`.
#[derive(Debug, Clone)]
pub struct Tie {
    pub input: String,
    pub output: String,
    /// Whether the checkpoint stores the output head too (many tied checkpoints do not).
    pub output_stored: bool,
}

/// Finds the tied pair, if the config ties embeddings and the checkpoint has the input embedding.
pub fn detect_tie(config: Option<&Value>, base: &Checkpoint) -> Option<Tie> {
    let tied = config
        .and_then(|c| c.get("tie_word_embeddings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !tied {
        return None;
    }
    TIED_PAIRS
        .iter()
        .find(|(input, _)| base.contains(input))
        .map(|(input, output)| Tie {
            input: input.to_string(),
            output: output.to_string(),
            output_stored: base.contains(output),
        })
}

/// Looks tensors up in the base checkpoint; an unstored tied head resolves to the input embedding.
pub struct Lookup<'a> {
    pub base: &'a Checkpoint,
    pub tie: Option<&'a Tie>,
}

impl BaseLookup for Lookup<'_> {
    fn lookup(&self, tensor: &str) -> Option<&TensorEntry> {
        match (self.base.get(tensor), self.tie) {
            (Some(e), _) => Some(e),
            (None, Some(t)) if tensor == t.output && !t.output_stored => self.base.get(&t.input),
            _ => None,
        }
    }
}

fn out_tensor(e: &TensorEntry, dtype: Option<Dtype>) -> OutTensor {
    let float = matches!(e.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64);
    let dtype = if float {
        dtype.unwrap_or(e.dtype)
    } else {
        e.dtype
    };
    OutTensor {
        name: e.name.clone(),
        source: e.name.clone(),
        dtype,
        shape: e.shape.clone(),
    }
}

/// Input tensors grouped by shard, each in file order.
fn input_shards(base: &Checkpoint) -> Vec<Vec<&TensorEntry>> {
    let mut shards: Vec<Vec<&TensorEntry>> = vec![Vec::new(); base.shard_paths().len()];
    for e in base.entries() {
        shards[e.shard].push(e);
    }
    for s in &mut shards {
        s.sort_by_key(|e| e.range.start);
    }
    shards
}

/// The output layout. `untie` adds the tied head (a copy of the input embedding) right after it.
pub fn plan_layout(
    base: &Checkpoint,
    dtype: Option<Dtype>,
    untie: Option<&Tie>,
    max_shard_size: Option<u64>,
) -> Vec<OutShard> {
    let names: Vec<String> = base
        .shard_paths()
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || SINGLE_FILE.to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let mut shards: Vec<OutShard> = input_shards(base)
        .into_iter()
        .zip(names)
        .map(|(entries, file)| OutShard {
            file,
            tensors: entries.into_iter().map(|e| out_tensor(e, dtype)).collect(),
        })
        .collect();
    if let Some(tie) = untie.filter(|t| !t.output_stored) {
        for shard in &mut shards {
            if let Some(i) = shard.tensors.iter().position(|t| t.name == tie.input) {
                let mut head = shard.tensors[i].clone();
                head.name = tie.output.clone();
                shard.tensors.insert(i + 1, head);
                break;
            }
        }
    }
    match max_shard_size {
        Some(limit) => repack(shards.into_iter().flat_map(|s| s.tensors).collect(), limit),
        None => shards,
    }
}

/// Packs tensors in order into shards of at most `limit` bytes each.
fn repack(tensors: Vec<OutTensor>, limit: u64) -> Vec<OutShard> {
    let mut groups: Vec<Vec<OutTensor>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in tensors {
        let len = t.byte_len();
        if size + len > limit && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(g) = groups.last_mut() {
            g.push(t);
        }
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| {
            let file = if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            };
            OutShard { file, tensors }
        })
        .collect()
}

/// Parses a shard size as transformers does: `5GB` = 5·10⁹ bytes, `5GiB` = 5·2³⁰, `200MB`,
/// `10KB`, or a plain byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024f64.powi(2),
        "GIB" => 1024f64.powi(3),
        "TIB" => 1024f64.powi(4),
        _ => return None,
    };
    let bytes = value * mult;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100 KB"), Some(100_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("5 parsecs"), None);
        assert_eq!(parse_size("0"), None);
    }

    #[test]
    fn repacking_never_splits_a_tensor_and_names_shards_of_n() {
        let t = |n: &str, len: usize| OutTensor {
            name: n.into(),
            source: n.into(),
            dtype: Dtype::F32,
            shape: vec![len],
        };
        let shards = repack(vec![t("a", 10), t("b", 10), t("c", 40), t("d", 1)], 80);
        let files: Vec<_> = shards
            .iter()
            .map(|s| (s.file.as_str(), s.tensors.len()))
            .collect();
        assert_eq!(
            files,
            [
                ("model-00001-of-00003.safetensors", 2),
                ("model-00002-of-00003.safetensors", 1),
                ("model-00003-of-00003.safetensors", 1)
            ]
        );
    }
}

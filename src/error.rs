//! Library errors. Every message names the file, key or tensor it is about; the CLI adds context
//! with `anyhow` and maps them to a non-zero exit code.

use std::path::PathBuf;

/// Shapes printed as `[64, 128]`.
fn shape(s: &[usize]) -> String {
    format!("{s:?}")
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: missing {what}", path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{}: invalid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: unsupported model_type `{model_type}` (supported: {supported})", path.display())]
    UnknownModelType {
        path: PathBuf,
        model_type: String,
        supported: &'static str,
    },
    #[error("{}: only pytorch_model*.bin weights found; pickle checkpoints are not supported, convert them to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)` in transformers)", dir.display())]
    PickleCheckpoint { dir: PathBuf },
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}` appears twice", path.display())]
    DuplicateTensor { path: PathBuf, tensor: String },
    #[error("{}: the index maps `{tensor}` to `{file}`, but that file does not hold it", index.display())]
    IndexMismatch {
        index: PathBuf,
        tensor: String,
        file: String,
    },
    #[error("tensor `{tensor}` is missing from the checkpoint")]
    MissingTensor { tensor: String },
    #[error("checkpoint is missing {} expected tensor(s): {}", tensors.len(), list(tensors))]
    MissingTensors { tensors: Vec<String> },
    #[error(transparent)]
    Memory(#[from] crate::io::budget::MemoryError),
    #[error("{}: tensor `{tensor}` has unsupported dtype {dtype} (expected F32, F16 or BF16)", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error(
        "tensor `{tensor}`: expected shape {}, found {}",
        shape(expected),
        shape(actual)
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template: {message}")]
    Template { message: String },
    #[error("input of {len} tokens exceeds max_position_embeddings = {context}{}", if *reserved > 0 { format!(" less the adapter's {reserved} virtual positions") } else { String::new() })]
    TooLong {
        len: usize,
        context: usize,
        reserved: usize,
    },
    #[error("empty prompt: nothing to generate from")]
    EmptyPrompt,
    #[error("device `{name}`: {message}")]
    Device { name: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("target_modules {patterns} matched no module; available paths include: {}", sample_paths.join(", "))]
    NoMatchingTarget {
        patterns: String,
        sample_paths: Vec<String>,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("unsupported adapter option: {0}")]
    Unsupported(String),
    #[error("invalid regex `{pattern}`: {message}")]
    Regex { pattern: String, message: String },
    #[error(
        "adapter tensor `{tensor}`: expected shape {}, found {}",
        shape(expected),
        shape(actual)
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("adapter tensor `{tensor}` names module `{module}`, which the model does not have (is the adapter for another architecture?)")]
    UnknownModule { tensor: String, module: String },
    #[error("adapter is missing tensor `{tensor}`")]
    MissingTensor { tensor: String },
    #[error(transparent)]
    Write(#[from] WriteError),
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("loss is {loss} at step {step}: training stopped; the last good checkpoint is kept{}", last_checkpoint.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    NonFiniteLoss {
        step: usize,
        loss: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("{}: already holds a run (pass --overwrite to replace it, or --resume to continue it)", path.display())]
    OutputExists { path: PathBuf },
    #[error("invalid training option: {0}")]
    Option(String),
    #[error("no training batches: {0}")]
    NoData(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: tensor `{tensor}` has non-finite values (NaN or infinity) in {dtype}; nothing was written", path.display())]
    NonFinite {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
}

/// Errors of `peft merge`. Everything but `Io`/`Write` is raised while planning, before the first
/// byte of output is written.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {peft_type} adapters cannot be merged: {reason}", dir.display())]
    NotMergeable {
        dir: PathBuf,
        peft_type: String,
        reason: &'static str,
    },
    #[error("{}: adapter tensor `{key}` is not a LoRA, AdaLoRA, DoRA or IA3 parameter this merge understands", file.display())]
    UnknownAdapterKey { file: PathBuf, key: String },
    #[error("{}: module `{module}` is missing its `{missing}` tensor", file.display())]
    IncompleteModule {
        file: PathBuf,
        module: String,
        missing: String,
    },
    #[error("{}: adapter tensor `{key}` adapts `{tensor}`, which the base checkpoint does not have (is the adapter for another model?)", file.display())]
    MissingBaseTensor {
        file: PathBuf,
        key: String,
        tensor: String,
    },
    #[error("{}: adapter tensor `{key}` has shape {}, but base tensor `{tensor}` {} needs {} (is the adapter for another base model?)", file.display(), shape(actual), shape(base), shape(expected))]
    ShapeMismatch {
        file: PathBuf,
        key: String,
        tensor: String,
        base: Vec<usize>,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{}: tensor `{tensor}` has dtype {dtype}; only F32, F16 and BF16 tensors can be merged", file.display())]
    NotFloat {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error(
        "merged tensor `{tensor}` has non-finite values (NaN or infinity){}; nothing was written", dtype.as_ref().map(|d| format!(" in {d} (out of its range: lower --scale or keep a wider --dtype)")).unwrap_or_default()
    )]
    NonFinite {
        tensor: String,
        dtype: Option<String>,
    },
    #[error("--out {} is the base model folder; the input is never modified, choose another folder", path.display())]
    OutIsBase { path: PathBuf },
    #[error("--out {} is inside or contains the base folder {}; choose a folder outside it", out.display(), base.display())]
    OutOverlapsBase { out: PathBuf, base: PathBuf },
    #[error("--out {} already exists (pass --force to replace it)", path.display())]
    OutExists { path: PathBuf },
    #[error("invalid merge option: {0}")]
    Option(String),
    #[error(transparent)]
    Path(#[from] crate::io::paths::PathError),
    #[error("the base checkpoint lacks {} tensor(s) its config.json needs (a missing shard, or an index that omits one?): {}", tensors.len(), list(tensors))]
    IncompleteBase { tensors: Vec<String> },
}

/// The first names of a long list, and how many more.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Errors of `peft convert gguf`: reading a llama.cpp GGUF file and writing a Hugging Face folder.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// `cause`, not `source`: the message already shows it, and `{:#}` would print it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")", path.display())]
    NotGguf { path: PathBuf, magic: Vec<u8> },
    #[error("{}: GGUF version {version} is not supported (supported: 2, 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: truncated or corrupt: {what} (at byte {offset})", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: missing metadata key `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata `{key}` should be {expected}, found {found}", path.display())]
    WrongKeyType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{}: unsupported architecture `{architecture}` (supported: {supported})", path.display())]
    UnknownArchitecture {
        path: PathBuf,
        architecture: String,
        supported: &'static str,
    },
    #[error("{}: tensor `{tensor}` has type {type_name}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)", path.display())]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        type_name: String,
    },
    #[error("{}: tensor `{tensor}` has no Hugging Face Llama equivalent", path.display())]
    UnknownTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{}: missing {} tensor(s): {}", path.display(), tensors.len(), tensors.join(", "))]
    MissingTensors { path: PathBuf, tensors: Vec<String> },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}: already exists and is not empty (pass --force to replace it)", path.display())]
    OutputExists { path: PathBuf },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Path(#[from] crate::io::paths::PathError),
}

/// What is wrong with one record of a data file. Wrapped in [`DataError::Record`] with the file and
/// line; `--skip-bad-records` skips and counts records with any of these instead of stopping.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordProblem {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("not valid UTF-8 (invalid byte at column {column})")]
    NotUtf8 { column: usize },
    #[error("a record must be a JSON object, found {found}")]
    NotObject { found: &'static str },
    #[error("cannot tell the format from the fields [{fields}]; expected `instruction`+`output` (alpaca), `conversations` (sharegpt), `messages` or `text` (or pass --format)")]
    UnknownFormat { fields: String },
    #[error("{format} record is missing the field `{field}`")]
    MissingField { format: &'static str, field: String },
    #[error("field `{field}` should be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("message {index} has an empty role")]
    EmptyRole { index: usize },
    #[error("message {index} has the role `{role}`; expected one of {expected}")]
    UnknownRole {
        index: usize,
        role: String,
        expected: &'static str,
    },
    #[error("the conversation has no assistant turn, so there is nothing to learn")]
    NoAssistantTurn,
    #[error("chat template: {0}")]
    Template(String),
}

/// Errors of the SFT data pipeline (`peft::data`).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}:{line}: {problem}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
        problem: RecordProblem,
    },
    #[error("{}: no records (the file is empty{})", path.display(), if *skipped > 0 { format!(", or all {skipped} were bad and skipped") } else { String::new() })]
    Empty { path: PathBuf, skipped: usize },
    #[error("{}: all {dropped} records were dropped: none fits in --max-len {max_len} with its full response (raise --max-len)", path.display())]
    AllDropped {
        path: PathBuf,
        dropped: usize,
        max_len: usize,
    },
    #[error("--max-len {max_len} is smaller than the chat template itself ({overhead} tokens for one empty user/assistant exchange)")]
    MaxLenBelowTemplate { max_len: usize, overhead: usize },
    #[error("{}: {format} records need a chat template, but the tokenizer has none; pass a built-in one with --template (alpaca, chatml, llama2, llama3, chatglm3, qwen)", path.display())]
    NoChatTemplate { path: PathBuf, format: &'static str },
    #[error("invalid data option: {0}")]
    Option(String),
}

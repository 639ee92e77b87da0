//! Tokenizer and chat template, from the files transformers saves: `tokenizer.json` (through the
//! `tokenizers` crate), `tokenizer_config.json` (special tokens, `chat_template`) and
//! `chat_template.jinja` (transformers ≥ 4.43 writes the template there). Templates are rendered
//! with minijinja and HF's variables: `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value;

use crate::error::LoadError;

/// One chat message, as in HF's `messages`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    /// Embedding rows of the model in the same folder (`vocab_size` / `padded_vocab_size` in
    /// config.json): an id at or beyond it would index past the embedding table.
    vocab_limit: Option<usize>,
}

/// GPT-2's `bytes_to_unicode` inverted: the character a byte-level BPE vocabulary writes for
/// each byte (printable Latin-1 bytes stand for themselves, the others for U+0100 onwards, in
/// byte order), back to the byte.
fn byte_level_chars() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (c, b)
            }
        })
        .collect()
}

/// The model's embedding rows from `dir/config.json`, when there is one.
fn vocab_limit(dir: &Path) -> Option<usize> {
    let config: serde_json::Map<String, Value> =
        crate::io::json::read_json(&dir.join("config.json")).ok()?;
    ["padded_vocab_size", "vocab_size"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Value::as_u64))
        .and_then(|n| usize::try_from(n).ok())
}

/// A special token in tokenizer_config.json: `"</s>"` or `{"content": "</s>", ...}`.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(m)) => m.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// `chat_template` may be a string or a list of `{name, template}` (the `default` one is used).
fn template_from_config(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(String::from),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja` when present).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        // `--model file.gguf`: the tokenizer built from the file's metadata (`gguf::base`).
        if crate::gguf::base::is_gguf_file(dir) {
            let prepared =
                crate::gguf::base::prepare_folder(dir).map_err(|e| LoadError::Tokenizer {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?;
            return Self::load(&prepared);
        }
        let path = dir.join("tokenizer.json");
        let spm_path = dir.join("tokenizer.model");
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Map<String, Value> = if config_path.is_file() {
            crate::io::json::read_json(&config_path)?
        } else {
            Default::default()
        };
        let chatglm = !path.is_file() && spm_path.is_file() && is_chatglm(dir, &config);
        let (inner, path) = if path.is_file() {
            let inner =
                tokenizers::Tokenizer::from_file(&path).map_err(|e| LoadError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            (inner, path)
        } else if spm_path.is_file() {
            (crate::tokenizer_spm::load(&spm_path, chatglm)?, spm_path)
        } else {
            return Err(LoadError::MissingFile {
                path,
                what: "tokenizer.json (or a SentencePiece tokenizer.model)",
            });
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|source| LoadError::Io {
                    path: jinja,
                    source,
                })?,
            )
        } else {
            template_from_config(config.get("chat_template"))
        };
        let chat_template =
            chat_template.or_else(|| chatglm.then(|| crate::chat_templates::CHATGLM3.to_string()));
        let eos_default = chatglm.then(|| "</s>".to_string());
        Ok(Self {
            inner,
            path,
            chat_template,
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")).or(eos_default),
            pad_token: token_string(config.get("pad_token")),
            vocab_limit: vocab_limit(dir),
        })
    }

    /// Whether `id` indexes a row of the model's embedding table.
    fn in_vocab(&self, id: u32) -> bool {
        self.vocab_limit.is_none_or(|n| (id as usize) < n)
    }

    fn err(&self, message: impl ToString) -> LoadError {
        LoadError::Tokenizer {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Encodes text; `add_special` adds the tokenizer's own specials (e.g. BOS), as transformers'
    /// `tokenizer(text)` does.
    /// Every id is checked against the model's embedding rows: a tokenizer with tokens the
    /// model has no embedding for is refused here, not by an out-of-bounds panic in a gather.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, LoadError> {
        let ids = self
            .inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| self.err(e))?;
        if let Some(&id) = ids.iter().find(|&&id| !self.in_vocab(id)) {
            let token = self.inner.id_to_token(id).unwrap_or_default();
            return Err(self.err(format!(
                "token {token:?} has id {id}, beyond the model's {} embedding rows (vocab_size in config.json): the tokenizer does not match the model",
                self.vocab_limit.unwrap_or(0)
            )));
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, LoadError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.err(e))
    }

    /// The bytes [`Self::decode`] turns into text with its lossy UTF-8 step, when the decoder is
    /// byte-level (GPT-2, Llama 3, SmolLM2): tokenizers' `ByteLevel::decode_chain` maps each
    /// token's characters back through GPT-2's byte table (a token with a character outside it,
    /// an added token, as its own UTF-8) and concatenates. Tokens are looked up and special ones
    /// skipped as `Tokenizer::decode` does. `None` for other decoders, whose text need not be a
    /// concatenation of per-token bytes; unknown ids are skipped, as `decode` skips them.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Option<Vec<u8>> {
        if !matches!(
            self.inner.get_decoder(),
            Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_))
        ) {
            return None;
        }
        let special: std::collections::HashSet<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .map(|t| t.content)
            .collect();
        let table = byte_level_chars();
        let mut out = Vec::new();
        for token in ids.iter().filter_map(|&id| self.inner.id_to_token(id)) {
            if skip_special && special.contains(&token) {
                continue;
            }
            let mapped: Option<Vec<u8>> = token.chars().map(|c| table.get(&c).copied()).collect();
            out.extend(mapped.unwrap_or_else(|| token.as_bytes().to_vec()));
        }
        Some(out)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The EOS id named in tokenizer_config.json, if any.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .filter(|&id| self.in_vocab(id))
    }

    /// The pad id, only when the model has an embedding for it (padding is masked, but still
    /// looked up).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .filter(|&id| self.in_vocab(id))
    }

    /// Renders `messages` with the tokenizer's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, LoadError> {
        let template = self.chat_template.as_deref().ok_or_else(|| LoadError::Template {
            message: format!("{}: the tokenizer has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json)", self.path.display()),
        })?;
        render_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }
}

/// ChatGLM's remote-code tokenizer (`tokenizer_class: ChatGLMTokenizer`), or a folder whose
/// config.json says `model_type: chatglm`.
fn is_chatglm(dir: &Path, tokenizer_config: &serde_json::Map<String, Value>) -> bool {
    let class = tokenizer_config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    if class.starts_with("ChatGLM") {
        return true;
    }
    let config = dir.join("config.json");
    config.is_file()
        && crate::io::json::read_json::<serde_json::Map<String, Value>>(&config)
            .is_ok_and(|c| c.get("model_type").and_then(Value::as_str) == Some("chatglm"))
}

/// Renders a HF chat template with minijinja (Python string methods through `pycompat`).
pub fn render_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, LoadError> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| LoadError::Template {
            message: e.to_string(),
        })?;
    let tmpl = env.get_template("chat").map_err(|e| LoadError::Template {
        message: e.to_string(),
    })?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
    .map_err(|e| LoadError::Template {
        message: e.to_string(),
    })
}

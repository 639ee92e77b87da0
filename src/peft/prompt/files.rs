//! Prompt encoders in and out: fresh (PEFT's initialisations), from PEFT's files, and into them.
//!
//! PEFT saves prompt-learning adapters in inference mode: `adapter_model.safetensors` holds only
//! `prompt_embeddings`, the encoder *output* (PEFT.md §1.9(6)); it refuses to reload MLP / LSTM /
//! projection weights for training. So we also write `prompt_encoder.safetensors`, the full
//! trainable encoder under PEFT's submodule names, which our loader prefers: a run resumes from
//! exactly the weights it saved. ChatGLM's native P-tuning v2 keeps THUDM's
//! `prefix_encoder.safetensors` + `ptuning_config.json` beside PEFT's files for the same reason.

use std::path::Path;

use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::error::AdapterError;
use crate::io::Checkpoint;
use crate::models::layers::Embedding;
use crate::models::tensor_util::{tensor2, trainable};
use crate::models::CausalLm;
use crate::peft::chatglm_prefix::{self, PrefixEncoder, PrefixMlp, PrefixShape};
use crate::peft::config::{AdapterConfig, WEIGHTS_FILE};
use crate::peft::prompt::encoders::{
    AdaptionPrompts, Dims, HostTensors, KvShape, PTuningEncoder, PrefixTuning,
};
use crate::peft::prompt::init::{fresh_host, normals, torch_linear};
use crate::peft::prompt::{PromptEncoder, PromptKind, PromptOptions};
use crate::peft::walker::InjectionReport;

/// PEFT's tensor key for prompt-learning adapters.
pub const PEFT_KEY: &str = "prompt_embeddings";
/// Our resumable copy of the full trainable encoder.
pub const ENCODER_FILE: &str = "prompt_encoder.safetensors";
/// Name prefix of the encoder's tensors in [`ENCODER_FILE`] and in optimizer state.
pub const ENCODER_PREFIX: &str = "prompt_encoder.";

fn err(path: &Path, message: impl Into<String>) -> AdapterError {
    AdapterError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The sizes of a Llama-family model; ChatGLM takes only its native prefix encoder.
fn llama_dims(model: &CausalLm, what: &str) -> Result<Dims, AdapterError> {
    match model {
        CausalLm::Llama(m) => {
            let c = &m.config;
            Ok(Dims {
                hidden: c.hidden_size,
                layers: c.num_hidden_layers,
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                vocab: c.vocab_size,
            })
        }
        CausalLm::ChatGlm(_) => Err(AdapterError::Unsupported(format!(
            "{what} on ChatGLM: ChatGLM supports P-tuning v2 (PREFIX_TUNING, its native `prefix_encoder`) among the prompt-learning methods"
        ))),
    }
}

fn chatglm_only_prefix(opts: &PromptOptions) -> AdapterError {
    AdapterError::Unsupported(format!(
        "{} on ChatGLM: ChatGLM supports P-tuning v2 (PREFIX_TUNING, its native `prefix_encoder`) among the prompt-learning methods",
        opts.peft_type.as_str()
    ))
}

/// `(num_layers, token_dim, num_attention_heads)` as PEFT records them for this method and model
/// (`_prepare_prompt_learning_config`: for PREFIX_TUNING on GQA models token_dim =
/// kv_heads · head_dim and heads = kv_heads; ChatGLM's prefix uses its key/value groups).
fn recorded_dims(model: &CausalLm, opts: &PromptOptions) -> (usize, usize, usize) {
    match model {
        CausalLm::ChatGlm(m) => {
            let c = &m.config;
            (c.num_layers, c.kv_groups * c.kv_channels, c.kv_groups)
        }
        CausalLm::Llama(m) => {
            let c = &m.config;
            match opts.kind {
                PromptKind::Prefix { .. } => (
                    c.num_hidden_layers,
                    c.num_key_value_heads * c.head_dim,
                    c.num_key_value_heads,
                ),
                _ => (c.num_hidden_layers, c.hidden_size, c.num_attention_heads),
            }
        }
    }
}

/// `config` with the fields PEFT fills from the model (`num_layers`, `token_dim`,
/// `num_attention_heads`, `encoder_hidden_size`), as `save_pretrained` writes them.
pub fn complete_config(
    model: &CausalLm,
    config: &AdapterConfig,
    opts: &PromptOptions,
) -> AdapterConfig {
    let mut out = config.clone();
    if matches!(opts.kind, PromptKind::Adaption { .. }) {
        return out;
    }
    let (layers, token_dim, heads) = recorded_dims(model, opts);
    out.raw.insert("num_layers".into(), json!(layers));
    out.raw.insert("token_dim".into(), json!(token_dim));
    out.raw.insert("num_attention_heads".into(), json!(heads));
    out.raw
        .insert("num_virtual_tokens".into(), json!(opts.num_virtual_tokens));
    out.raw
        .insert("num_transformer_submodules".into(), json!(1));
    if let CausalLm::ChatGlm(m) = model {
        // The native projection's hidden size (THUDM `PrefixEncoder.trans`).
        out.raw
            .insert("encoder_hidden_size".into(), json!(m.config.hidden_size));
    } else if matches!(
        opts.kind,
        PromptKind::PTuning { .. } | PromptKind::Prefix { .. }
    ) && out
        .raw
        .get("encoder_hidden_size")
        .is_none_or(Value::is_null)
    {
        out.raw
            .insert("encoder_hidden_size".into(), json!(token_dim));
    }
    out
}

/// Refuses a config whose recorded sizes do not fit the model.
fn check_recorded(
    model: &CausalLm,
    config: &AdapterConfig,
    opts: &PromptOptions,
    path: &Path,
) -> Result<(), AdapterError> {
    if matches!(opts.kind, PromptKind::Adaption { .. }) {
        return Ok(());
    }
    let (layers, token_dim, heads) = recorded_dims(model, opts);
    for (key, want) in [
        ("num_layers", layers),
        ("token_dim", token_dim),
        ("num_attention_heads", heads),
    ] {
        if let Some(v) = config.raw.get(key).and_then(Value::as_u64) {
            if v as usize != want {
                return Err(err(path, format!("`{key}` is {v} but this model needs {want} (is the adapter for another model?)")));
            }
        }
    }
    Ok(())
}

pub(crate) fn kv_shape(dims: Dims) -> KvShape {
    KvShape {
        layers: dims.layers,
        kv_heads: dims.kv_heads,
        head_dim: dims.head_dim,
    }
}

/// The Llama encoder from named tensors (fresh, PEFT's output, or our encoder file).
fn build(
    opts: &PromptOptions,
    dims: Dims,
    host: &HostTensors,
    device: &Device,
) -> Result<PromptEncoder, AdapterError> {
    let n = opts.num_virtual_tokens;
    Ok(match &opts.kind {
        PromptKind::PromptTuning { .. } => {
            PromptEncoder::Embedding(host.embedding("embedding.weight", n, dims.hidden, device)?)
        }
        PromptKind::PTuning {
            encoder_num_layers,
            encoder_dropout,
            ..
        } => PromptEncoder::PTuning(PTuningEncoder::read(
            host,
            n,
            dims.hidden,
            *encoder_num_layers,
            *encoder_dropout,
            device,
        )?),
        PromptKind::Prefix { .. } => {
            PromptEncoder::Prefix(PrefixTuning::read(host, n, kv_shape(dims), device)?)
        }
        PromptKind::Adaption {
            adapter_len,
            adapter_layers,
        } => {
            if *adapter_layers > dims.layers {
                return Err(AdapterError::Unsupported(format!(
                    "adapter_layers {adapter_layers} exceeds the model's {} layers (set --adapter-layers to at most that)",
                    dims.layers
                )));
            }
            PromptEncoder::Adaption(AdaptionPrompts::read(
                host,
                *adapter_len,
                *adapter_layers,
                dims,
                device,
            )?)
        }
    })
}

/// ChatGLM's native prefix encoder from THUDM-named tensors (`embedding.weight`, `trans.N`).
fn build_chatglm(
    model: &CausalLm,
    n: usize,
    host: &HostTensors,
    device: &Device,
) -> Result<PrefixEncoder, AdapterError> {
    let CausalLm::ChatGlm(m) = model else {
        return Err(AdapterError::Unsupported("not a ChatGLM model".into()));
    };
    let shape = PrefixShape::of(&m.config);
    let (kv, h) = (shape.kv_size(), shape.hidden_size);
    let values = host.get("embedding.weight", &[n, kv])?;
    let trans = if host.contains("trans.0.weight") {
        Some(PrefixMlp {
            trans_0: host.linear("trans.0", kv, h, device)?,
            trans_2: host.linear("trans.2", h, kv, device)?,
        })
    } else {
        None
    };
    Ok(PrefixEncoder {
        embedding: Embedding {
            weight: trainable(tensor2(values, [n, kv], device)),
        },
        trans,
        dropout: burn::nn::DropoutConfig::new(0.1).init(),
        shape,
    })
}

fn report(model: &mut CausalLm, encoder: &PromptEncoder) -> InjectionReport {
    let trainable = encoder.num_params();
    let matched = match encoder {
        PromptEncoder::Adaption(a) => (a.first_layer..a.num_layers)
            .map(|l| format!("model.layers.{l}.self_attn"))
            .collect(),
        PromptEncoder::ChatGlm(_) => vec!["transformer.prefix_encoder".to_string()],
        _ => vec!["prompt_encoder".to_string()],
    };
    InjectionReport {
        matched,
        trainable,
        total: model.base_params() + trainable,
    }
}

fn attach(model: &mut CausalLm, encoder: PromptEncoder) -> InjectionReport {
    let r = report(model, &encoder);
    *model.prompt_encoder_mut() = Some(encoder);
    r
}

/// Attaches a freshly initialised encoder for training.
pub fn inject(
    model: &mut CausalLm,
    opts: &PromptOptions,
    seed: u64,
    device: &Device,
) -> Result<InjectionReport, AdapterError> {
    check_size(model, opts)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let encoder = if let CausalLm::ChatGlm(m) = model {
        let PromptKind::Prefix {
            prefix_projection,
            encoder_hidden_size,
            ..
        } = opts.kind
        else {
            return Err(chatglm_only_prefix(opts));
        };
        let shape = PrefixShape::of(&m.config);
        let (n, kv, h) = (opts.num_virtual_tokens, shape.kv_size(), shape.hidden_size);
        // ChatGLM's `PrefixEncoder.trans` is sized by the model's hidden_size, nothing else.
        if prefix_projection && encoder_hidden_size.is_some_and(|e| e != h) {
            return Err(AdapterError::Unsupported(format!(
                "encoder_hidden_size {} on ChatGLM: its native prefix projection has the model's hidden_size ({h})",
                encoder_hidden_size.unwrap_or(0)
            )));
        }
        let mut host = HostTensors::default();
        host.insert("embedding.weight", vec![n, kv], normals(n * kv, &mut rng));
        if prefix_projection {
            torch_linear(&mut host, "trans.0", kv, h, &mut rng);
            torch_linear(&mut host, "trans.2", h, kv, &mut rng);
        }
        PromptEncoder::ChatGlm(build_chatglm(model, n, &host, device)?)
    } else {
        let dims = llama_dims(model, opts.peft_type.as_str())?;
        build(
            opts,
            dims,
            &fresh_host(model, opts, dims, &mut rng)?,
            device,
        )?
    };
    Ok(attach(model, encoder))
}

/// Refuses, before allocating, virtual tokens that cannot fit in the context and prompt tensors
/// larger than the machine's memory. Upper bound per virtual token: a key and a value for every
/// layer plus the token itself (`(2·layers + 1)·hidden`), and the encoder's hidden layer.
fn check_size(model: &CausalLm, opts: &PromptOptions) -> Result<(), AdapterError> {
    let n = opts.num_virtual_tokens;
    let context = model.max_positions();
    let key = match opts.kind {
        PromptKind::Adaption { .. } => "adapter_len",
        _ => "num_virtual_tokens",
    };
    if !matches!(opts.kind, PromptKind::Adaption { .. }) && n >= context {
        return Err(AdapterError::Unsupported(format!(
            "{key} = {n} virtual tokens leave no room in the model's context of {context} positions"
        )));
    }
    let (hidden, layers) = match model {
        CausalLm::Llama(m) => (m.config.hidden_size, m.config.num_hidden_layers),
        CausalLm::ChatGlm(m) => (m.config.hidden_size, m.config.num_layers),
    };
    let encoder = match opts.kind {
        PromptKind::PTuning {
            encoder_hidden_size,
            ..
        }
        | PromptKind::Prefix {
            encoder_hidden_size,
            ..
        } => encoder_hidden_size.unwrap_or(hidden),
        _ => 0,
    } as u64;
    let width = (2 * layers as u64 + 1) * hidden as u64;
    let params = (n as u64)
        .checked_mul(width)
        .and_then(|p| p.checked_add(encoder.checked_mul(width.checked_add(hidden as u64)?)?));
    crate::io::budget::check(
        "the prompt-learning adapter (weights, gradients, optimizer moments)",
        &format!("`{key}` (--num-virtual-tokens / --adapter-len) or `encoder_hidden_size`"),
        params.and_then(|p| p.checked_mul(16)),
    )
    .map_err(crate::error::LoadError::from)?;
    Ok(())
}

/// Loads a prompt-learning adapter folder: our full encoder file when present, else PEFT's
/// `adapter_model.safetensors` (the encoder output, or LLaMA-Adapter's prompts and gates).
pub fn load(
    model: &mut CausalLm,
    config: &AdapterConfig,
    opts: &PromptOptions,
    dir: &Path,
    device: &Device,
) -> Result<InjectionReport, AdapterError> {
    let config_path = dir.join(crate::peft::config::CONFIG_FILE);
    if model.prompt_encoder_mut().is_some() {
        return Err(err(
            &config_path,
            "a prompt-learning adapter is already attached; only one at a time can enter the model",
        ));
    }
    check_recorded(model, config, opts, &config_path)?;
    let chatglm = match &*model {
        CausalLm::ChatGlm(m) if matches!(opts.kind, PromptKind::Prefix { .. }) => {
            Some(if dir.join(chatglm_prefix::WEIGHTS_FILE).is_file() {
                PrefixEncoder::load_dir(dir, &m.config, device)?
            } else {
                PrefixEncoder::from_peft_dir(dir, &m.config, device)?
            })
        }
        _ => None,
    };
    if let Some(encoder) = chatglm {
        return Ok(attach(model, PromptEncoder::ChatGlm(encoder)));
    }
    let dims = llama_dims(model, opts.peft_type.as_str())?;
    let own = dir.join(ENCODER_FILE);
    let reparameterised = matches!(
        opts.kind,
        PromptKind::PTuning { .. }
            | PromptKind::Prefix {
                prefix_projection: true,
                ..
            }
    );
    if reparameterised && !own.is_file() {
        tracing::warn!(
            "{}: only the encoder output (`prompt_embeddings`) is saved; it is used as is, and further training updates it directly (PEFT cannot invert the MLP / LSTM / projection either)",
            dir.display()
        );
    }
    let host = if own.is_file() && !matches!(opts.kind, PromptKind::Adaption { .. }) {
        HostTensors::from_checkpoint(&Checkpoint::open_files(&[own])?, ENCODER_PREFIX)?
    } else {
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(err(&path, "missing adapter_model.safetensors"));
        }
        let file = Checkpoint::open_files(&[path])?;
        let all = HostTensors::from_checkpoint(&file, "")?;
        if matches!(opts.kind, PromptKind::Adaption { .. }) {
            all
        } else {
            let (shape, values) =
                all.map
                    .get(PEFT_KEY)
                    .cloned()
                    .ok_or_else(|| AdapterError::MissingTensor {
                        tensor: PEFT_KEY.into(),
                    })?;
            let mut host = HostTensors::default();
            host.insert("embedding.weight", shape, values);
            host
        }
    };
    let encoder = build(opts, dims, &host, device).map_err(|e| match e {
        // PEFT's name for what the file holds.
        AdapterError::ShapeMismatch {
            tensor,
            expected,
            actual,
        } if tensor == "embedding.weight" && !dir.join(ENCODER_FILE).is_file() => {
            AdapterError::ShapeMismatch {
                tensor: PEFT_KEY.into(),
                expected,
                actual,
            }
        }
        other => other,
    })?;
    Ok(attach(model, encoder))
}

/// Writes PEFT's `adapter_config.json` + `adapter_model.safetensors` and our resumable encoder
/// (`prompt_encoder.safetensors`; ChatGLM: THUDM's `prefix_encoder.safetensors` +
/// `ptuning_config.json`).
pub fn save(
    model: &mut CausalLm,
    config: &AdapterConfig,
    opts: &PromptOptions,
    dir: &Path,
) -> Result<(), AdapterError> {
    let completed = complete_config(model, config, opts);
    let Some(encoder) = model.prompt_encoder_mut().as_ref() else {
        return Err(AdapterError::Unsupported(
            "no prompt encoder is attached to save".into(),
        ));
    };
    let peft = encoder.peft_tensors().to_owned_tensors("");
    crate::io::write_safetensors_atomic(&dir.join(WEIGHTS_FILE), &peft, None)?;
    match encoder {
        PromptEncoder::ChatGlm(c) => c.save_dir(dir)?,
        PromptEncoder::Adaption(_) => {}
        other => {
            let tensors = other.encoder_tensors().to_owned_tensors(ENCODER_PREFIX);
            crate::io::write_safetensors_atomic(&dir.join(ENCODER_FILE), &tensors, None)?;
        }
    }
    completed.save_dir(dir)?;
    Ok(())
}

/// A folder in ChatGLM's own P-tuning v2 layout (`ptuning_config.json` +
/// `prefix_encoder.safetensors`, THUDM's ptuning scripts), without PEFT's config: loaded as the
/// PREFIX_TUNING adapter it is.
pub fn load_chatglm_native(
    model: &mut CausalLm,
    dir: &Path,
    device: &Device,
) -> Result<(AdapterConfig, InjectionReport), AdapterError> {
    let CausalLm::ChatGlm(m) = &*model else {
        return Err(err(
            &dir.join(chatglm_prefix::CONFIG_FILE),
            "a ChatGLM P-tuning v2 prefix needs a ChatGLM model",
        ));
    };
    let encoder = PrefixEncoder::load_dir(dir, &m.config, device)?;
    let config = AdapterConfig::from_json(
        json!({
            "peft_type": "PREFIX_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": encoder.pre_seq_len(),
            "prefix_projection": encoder.trans.is_some(),
        }),
        &dir.join(chatglm_prefix::CONFIG_FILE),
    )?;
    if model.prompt_encoder_mut().is_some() {
        return Err(err(
            dir,
            "a prompt-learning adapter is already attached; only one at a time can enter the model",
        ));
    }
    Ok((config, attach(model, PromptEncoder::ChatGlm(encoder))))
}

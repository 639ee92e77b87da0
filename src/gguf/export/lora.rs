//! `--lora-only`: a PEFT LoRA adapter → a GGUF LoRA adapter, as llama.cpp's
//! `convert_lora_to_gguf.py` writes it: `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, and per adapted weight `NAME.lora_a` (PyTorch `[r, in]`) and
//! `NAME.lora_b` (`[out, r]`), with `attn_q`/`attn_k`'s B rows permuted like the base weights
//! (`LoraTorchTensor.reshape/swapaxes` act on B). llama.cpp applies `alpha / r · B·A` with r read
//! from each tensor (llama-graph.cpp `build_lora_mm`); PEFT's scale `s` may differ (rsLoRA,
//! `rank_pattern`, `alpha_pattern`), so B is written as `B · s · r / alpha`, which is B itself
//! for a plain LoRA. Tensors are F32: the adapter is small and stays exact.

use super::arch::Arch;
use super::error::ExportError;
use super::metadata::general_keys;
use super::plan::permute_rows;
use super::{check_out, io_err, model_name, modelfile, read_config, source, stream_err};
use super::{ExportOptions, ExportReport};
use crate::gguf::reader::Value;
use crate::gguf::writer::{write_gguf, GgufLayout, TensorSpec};
use crate::merge::patches::Fold;
use crate::peft::config::Method;

/// One adapted weight: its GGUF name, A [r, in] and the rescaled, permuted B [out, r].
struct Pair {
    name: String,
    r: usize,
    cols: usize,
    rows: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn refuse(opts: &ExportOptions, message: String) -> ExportError {
    ExportError::LoraOnly {
        dir: opts.adapters.first().cloned().unwrap_or_default(),
        message,
    }
}

pub fn export_lora(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    if opts.adapters.len() != 1 {
        return Err(ExportError::Option(format!(
            "--lora-only writes one adapter; {} --adapter given",
            opts.adapters.len()
        )));
    }
    check_out(opts)?;
    let (config_path, config) = read_config(&opts.model)?;
    let arch = Arch::from_config(&config_path, &config)?;
    let src = source::Source::open(&opts.model, &opts.adapters, &config)?;
    let adapter = &src.adapters[0];
    let alpha = match &adapter.config.method {
        Method::Lora(o) if !o.use_dora => o.lora_alpha as f32,
        Method::Lora(_) => {
            return Err(refuse(opts, "DoRA adapters have no GGUF LoRA form (llama.cpp applies plain B·A); export the merged model instead (without --lora-only)".into()))
        }
        _ => {
            return Err(refuse(opts, format!("a {} adapter has no GGUF LoRA form (llama.cpp applies LoRA only); export the merged model instead (without --lora-only)", adapter.config.peft_type.as_str())))
        }
    };
    let pairs = pairs(opts, &src, &arch, alpha)?;
    let mut layout = GgufLayout {
        metadata: general_keys(arch.name(), &model_name(&opts.adapters[0]), "adapter", None),
        tensors: Vec::new(),
    };
    layout.metadata.extend([
        ("adapter.type".to_string(), Value::String("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha)),
    ]);
    for p in &pairs {
        let f32_spec = |suffix: &str, dims: Vec<u64>, n: usize| TensorSpec {
            name: format!("{}.{suffix}", p.name),
            dims,
            ggml_type: 0,
            n_bytes: 4 * n as u64,
        };
        layout.tensors.push(f32_spec(
            "lora_a",
            vec![p.cols as u64, p.r as u64],
            p.a.len(),
        ));
        layout.tensors.push(f32_spec(
            "lora_b",
            vec![p.r as u64, p.rows as u64],
            p.b.len(),
        ));
    }
    write_gguf(&opts.out, &layout, |i, out| {
        let p = &pairs[i / 2];
        let values = if i % 2 == 0 { &p.a } else { &p.b };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io_err(&opts.out))
    })
    .map_err(stream_err)?;
    let tok = super::vocab::read(&opts.model, &arch, &config).ok();
    let base = format!("./{}.gguf", model_name(&opts.model));
    let modelfile = modelfile::write(
        &opts.out,
        tok.as_ref().and_then(|t| t.chat_template.as_deref()),
        tok.as_ref().and_then(|t| t.eos.as_deref()),
        Some(&base),
    )?;
    Ok(ExportReport {
        out: opts.out.clone(),
        modelfile,
        tensors: layout.tensors.len(),
        bytes: layout.file_size(),
        types: [("F32".to_string(), layout.tensors.len())].into(),
        tokenizer: String::new(),
        merged: pairs.len(),
    })
}

/// Every LoRA pair of the adapter, checked against the base, B rescaled and permuted.
fn pairs(
    opts: &ExportOptions,
    src: &source::Source,
    arch: &Arch,
    alpha: f32,
) -> Result<Vec<Pair>, ExportError> {
    let adapter = &src.adapters[0];
    let mut pairs = Vec::new();
    for (tensor, patches) in &src.patches {
        let (name, rows_kind) = arch
            .gguf_name(tensor)
            .ok_or_else(|| refuse(opts, format!("`{tensor}` has no llama.cpp tensor to adapt")))?;
        if tensor == "lm_head.weight" && arch.tied() {
            // convert_lora_to_gguf.py refuses it too: the head is token_embd in the base GGUF.
            return Err(refuse(opts, "the adapter changes lm_head, which the base GGUF shares with token_embd (tied embeddings); export the merged model instead".into()));
        }
        for patch in patches {
            let Fold::LowRank { a, b, s } = &patch.fold else {
                return Err(refuse(opts, format!("`{tensor}`: only LoRA on linear layers has a GGUF LoRA form (embedding LoRA is not exported)")));
            };
            let (a_vals, mut b_vals) = (adapter.read(a)?, adapter.read(b)?);
            let (a_shape, b_shape) = (adapter.shape(a), adapter.shape(b));
            let (r, cols, rows) = (a_shape[0], a_shape[1], b_shape[0]);
            let factor = if alpha != 0.0 {
                s * r as f32 / alpha
            } else {
                *s
            };
            if factor != 1.0 {
                b_vals.iter_mut().for_each(|v| *v *= factor);
            }
            if let Some(heads) = arch.heads(rows_kind) {
                b_vals = permute_rows(&b_vals, rows, r, heads as usize).ok_or_else(|| {
                    refuse(
                        opts,
                        format!("`{b}`: {rows} rows do not split into {heads} heads"),
                    )
                })?;
            }
            pairs.push(Pair {
                name: name.clone(),
                r,
                cols,
                rows,
                a: a_vals,
                b: b_vals,
            });
        }
    }
    if pairs.is_empty() {
        return Err(refuse(opts, "the adapter has no LoRA weights".into()));
    }
    Ok(pairs)
}

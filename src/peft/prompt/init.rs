//! Fresh prompt encoders, initialised as PEFT does in training mode: embeddings ~ N(0, 1)
//! (`nn.Embedding`), Linears and LSTMs with torch's default uniform inits, prompt tuning from
//! text or sampled vocabulary rows, LLaMA-Adapter gates at zero.

use rand::rngs::StdRng;
use rand::Rng;

use crate::error::AdapterError;
use crate::models::tensor_util::{ids_tensor, to_vec};
use crate::models::CausalLm;
use crate::peft::build::{normal, uniform};
use crate::peft::prompt::encoders::{Dims, HostTensors};
use crate::peft::prompt::files::kv_shape;
use crate::peft::prompt::{PromptInit, PromptKind, PromptOptions, Reparam};

/// Rows `ids` of the model's word embeddings: [ids.len() · hidden] (detached copies).
fn word_rows(model: &CausalLm, ids: &[i64]) -> Vec<f32> {
    let weight = match model {
        CausalLm::Llama(m) => m.model.embed_tokens.weight.val(),
        CausalLm::ChatGlm(m) => m.transformer.embedding.word_embeddings.weight.val(),
    };
    let device = weight.device();
    to_vec(burn::tensor::module::embedding(
        weight,
        ids_tensor(ids, 1, ids.len(), &device),
    ))
}

pub(crate) fn normals(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| normal(rng)).collect()
}

/// torch.nn.Linear's default init: weight and bias ~ U(±1/√fan_in) (kaiming_uniform, a = √5).
pub(crate) fn torch_linear(
    host: &mut HostTensors,
    name: &str,
    d_in: usize,
    d_out: usize,
    rng: &mut StdRng,
) {
    let bound = 1.0 / (d_in as f32).sqrt();
    host.insert(
        &format!("{name}.weight"),
        vec![d_out, d_in],
        uniform(d_out * d_in, bound, rng),
    );
    host.insert(
        &format!("{name}.bias"),
        vec![d_out],
        uniform(d_out, bound, rng),
    );
}

/// Prompt tuning's initial embeddings (prompt_tuning/model.py `PromptEmbedding.__init__`).
fn prompt_init(
    model: &CausalLm,
    init: &PromptInit,
    n: usize,
    d: usize,
    rng: &mut StdRng,
) -> Result<Vec<f32>, AdapterError> {
    Ok(match init {
        PromptInit::Random => normals(n * d, rng),
        PromptInit::SampleVocab => {
            let vocab = model.vocab_size() as i64;
            let ids: Vec<i64> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
            word_rows(model, &ids)
        }
        PromptInit::Text { text, ids } => {
            let ids = ids.as_ref().filter(|i| !i.is_empty()).ok_or_else(|| {
                AdapterError::Unsupported(format!(
                    "prompt_tuning_init TEXT: the text {text:?} was not tokenized (no token ids)"
                ))
            })?;
            // Repeated ceil(n / len) times and cut to n, or cut when longer.
            let ids: Vec<i64> = ids.iter().cycle().take(n).copied().collect();
            word_rows(model, &ids)
        }
    })
}

/// Fresh tensors for a Llama model, as PEFT initialises them in training mode.
pub(crate) fn fresh_host(
    model: &CausalLm,
    opts: &PromptOptions,
    dims: Dims,
    rng: &mut StdRng,
) -> Result<HostTensors, AdapterError> {
    let n = opts.num_virtual_tokens;
    let d = dims.hidden;
    let mut host = HostTensors::default();
    match &opts.kind {
        PromptKind::PromptTuning { init } => {
            host.insert(
                "embedding.weight",
                vec![n, d],
                prompt_init(model, init, n, d, rng)?,
            );
        }
        PromptKind::PTuning {
            reparam,
            encoder_hidden_size,
            encoder_num_layers,
            ..
        } => {
            let h = encoder_hidden_size.unwrap_or(d);
            host.insert("embedding.weight", vec![n, d], normals(n * d, rng));
            match reparam {
                Reparam::Mlp => {
                    torch_linear(&mut host, "mlp_head.0", d, h, rng);
                    torch_linear(&mut host, "mlp_head.2", h, h, rng);
                    torch_linear(&mut host, "mlp_head.4", h, d, rng);
                }
                Reparam::Lstm => {
                    // torch.nn.LSTM: every weight and bias ~ U(±1/√hidden).
                    let bound = 1.0 / (h as f32).sqrt();
                    for k in 0..*encoder_num_layers {
                        let input = if k == 0 { d } else { 2 * h };
                        for suffix in ["", "_reverse"] {
                            for (w, b, i) in
                                [("weight_ih", "bias_ih", input), ("weight_hh", "bias_hh", h)]
                            {
                                host.insert(
                                    &format!("lstm_head.{w}_l{k}{suffix}"),
                                    vec![4 * h, i],
                                    uniform(4 * h * i, bound, rng),
                                );
                                host.insert(
                                    &format!("lstm_head.{b}_l{k}{suffix}"),
                                    vec![4 * h],
                                    uniform(4 * h, bound, rng),
                                );
                            }
                        }
                    }
                    torch_linear(&mut host, "mlp_head.0", 2 * h, 2 * h, rng);
                    torch_linear(&mut host, "mlp_head.2", 2 * h, d, rng);
                }
            }
        }
        PromptKind::Prefix {
            prefix_projection,
            encoder_hidden_size,
            zero_init,
        } => {
            let shape = kv_shape(dims);
            let token_dim = dims.kv_heads * dims.head_dim;
            if *prefix_projection {
                let h = encoder_hidden_size.unwrap_or(token_dim);
                host.insert(
                    "embedding.weight",
                    vec![n, token_dim],
                    normals(n * token_dim, rng),
                );
                torch_linear(&mut host, "transform.0", token_dim, h, rng);
                torch_linear(&mut host, "transform.2", h, shape.flat(), rng);
                if *zero_init {
                    host.insert(
                        "transform.2.weight",
                        vec![shape.flat(), h],
                        vec![0.0; shape.flat() * h],
                    );
                    host.insert(
                        "transform.2.bias",
                        vec![shape.flat()],
                        vec![0.0; shape.flat()],
                    );
                }
            } else {
                let values = if *zero_init {
                    vec![0.0; n * shape.flat()]
                } else {
                    normals(n * shape.flat(), rng)
                };
                host.insert("embedding.weight", vec![n, shape.flat()], values);
            }
        }
        PromptKind::Adaption {
            adapter_len,
            adapter_layers,
        } => {
            let first = dims.layers.checked_sub(*adapter_layers).ok_or_else(|| {
                AdapterError::Unsupported(format!(
                    "adapter_layers {adapter_layers} exceeds the model's {} layers (set --adapter-layers to at most that)",
                    dims.layers
                ))
            })?;
            for l in first..dims.layers {
                let p = format!("base_model.model.model.layers.{l}.self_attn.");
                host.insert(
                    &format!("{p}adaption_prompt"),
                    vec![1, *adapter_len, d],
                    normals(adapter_len * d, rng),
                );
                host.insert(&format!("{p}adaption_gate"), vec![1], vec![0.0]);
            }
        }
    }
    Ok(host)
}

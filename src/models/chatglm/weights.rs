//! Loading a ChatGLM2/3 checkpoint through the shared tensor [`Reader`]: every expected key is
//! read, shape-checked, widened to f32 and (linear weights) transposed to burn's `[in, out]`.
//! `transformer.rotary_pos_emb.inv_freq` (a buffer some exports keep) is recomputed, not read;
//! `transformer.prefix_encoder.*` belongs to P-tuning v2 (`peft::chatglm_prefix`).

use burn::tensor::Device;

use crate::error::LoadError;
use crate::gguf::base::GgufBase;
use crate::io::Checkpoint;
use crate::models::layers::{Embedding, RmsNorm};
use crate::models::llama::weights::Reader;

use super::model::{
    ChatGlmModel, GlmBlock, GlmEmbedding, GlmRope, GlmTransformer, Mlp, SelfAttention,
};
use super::{ChatGlmConfig, ChatGlmForConditionalGeneration};

fn norm(r: &mut Reader, c: &ChatGlmConfig, name: String) -> Result<RmsNorm, LoadError> {
    Ok(RmsNorm {
        weight: r.vector(&name, c.hidden_size)?,
        eps: c.layernorm_epsilon,
    })
}

fn layer(r: &mut Reader, c: &ChatGlmConfig, l: usize) -> Result<GlmBlock, LoadError> {
    let p = format!("transformer.encoder.layers.{l}");
    let (h, f) = (c.hidden_size, c.ffn_hidden_size);
    let proj = c.num_attention_heads * c.kv_channels;
    let bias = c.add_bias_linear;
    Ok(GlmBlock {
        input_layernorm: norm(r, c, format!("{p}.input_layernorm.weight"))?,
        self_attention: SelfAttention {
            query_key_value: r.linear(
                &format!("{p}.self_attention.query_key_value"),
                h,
                c.qkv_size(),
                bias || c.add_qkv_bias,
            )?,
            dense: r.linear(&format!("{p}.self_attention.dense"), proj, h, bias)?,
        },
        post_attention_layernorm: norm(r, c, format!("{p}.post_attention_layernorm.weight"))?,
        mlp: Mlp {
            dense_h_to_4h: r.linear(&format!("{p}.mlp.dense_h_to_4h"), h, 2 * f, bias)?,
            dense_4h_to_h: r.linear(&format!("{p}.mlp.dense_4h_to_h"), f, h, bias)?,
        },
    })
}

/// Builds the model from a checkpoint on `device`.
pub fn load(
    config: ChatGlmConfig,
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<ChatGlmForConditionalGeneration, LoadError> {
    load_with_base_dtype(config, checkpoint, device, burn::tensor::DType::F32)
}

/// As `load`, with the frozen linear and embedding weights stored in `base_dtype`.
pub fn load_with_base_dtype(
    config: ChatGlmConfig,
    checkpoint: &Checkpoint,
    device: &Device,
    base_dtype: burn::tensor::DType,
) -> Result<ChatGlmForConditionalGeneration, LoadError> {
    load_base(config, checkpoint, device, base_dtype, None)
}

/// As `load_with_base_dtype`, the frozen linear weights quantized with `quant` (`--quantize-base`).
pub fn load_base(
    config: ChatGlmConfig,
    checkpoint: &Checkpoint,
    device: &Device,
    base_dtype: burn::tensor::DType,
    quant: Option<crate::quant::BaseQuant>,
) -> Result<ChatGlmForConditionalGeneration, LoadError> {
    let r = Reader::new(checkpoint, device)
        .with_base_dtype(base_dtype)
        .with_quant(quant);
    assemble(r, config, checkpoint)
}

/// The model from a GGUF file read in place (`--model file.gguf`, llama.cpp's `chatglm`
/// architecture): its block-quantized linear weights stay quantized, as the Llama path keeps
/// them; `quant` (`--quantize-base`) quantizes the ones stored as F32/F16/BF16.
pub fn load_gguf(
    config: ChatGlmConfig,
    base: &GgufBase,
    device: &Device,
    base_dtype: burn::tensor::DType,
    quant: Option<crate::quant::BaseQuant>,
) -> Result<ChatGlmForConditionalGeneration, LoadError> {
    let empty = Checkpoint::empty();
    let r = Reader::new(&empty, device)
        .with_base_dtype(base_dtype)
        .with_quant(quant)
        .with_gguf(base);
    assemble(r, config, &empty)
}

fn assemble(
    mut r: Reader,
    config: ChatGlmConfig,
    checkpoint: &Checkpoint,
) -> Result<ChatGlmForConditionalGeneration, LoadError> {
    let word_embeddings = Embedding {
        weight: r.matrix(
            "transformer.embedding.word_embeddings.weight",
            config.padded_vocab_size,
            config.hidden_size,
        )?,
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for l in 0..config.num_layers {
        layers.push(layer(&mut r, &config, l)?);
    }
    let final_layernorm = if config.post_layer_norm {
        Some(norm(
            &mut r,
            &config,
            "transformer.encoder.final_layernorm.weight".into(),
        )?)
    } else {
        None
    };
    let output_layer = r.linear(
        "transformer.output_layer",
        config.hidden_size,
        config.padded_vocab_size,
        false,
    )?;
    for buffer in ["transformer.rotary_pos_emb.inv_freq"] {
        if checkpoint.contains(buffer) {
            r.used.insert(buffer.into());
        }
    }
    r.finish()?;
    let rope = GlmRope::new(&config);
    let transformer = ChatGlmModel {
        embedding: GlmEmbedding { word_embeddings },
        encoder: GlmTransformer {
            layers,
            final_layernorm,
        },
        output_layer,
        prefix_encoder: None,
    };
    Ok(ChatGlmForConditionalGeneration {
        transformer,
        config,
        rope,
        gradient_checkpointing: false,
    })
}

//! A model folder as users have it (`config.json`, safetensors weights, tokenizer files) and the
//! causal LM it holds: a closed enum over the supported families.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};
use serde_json::{Map, Value};

use crate::error::AdapterError;
use crate::error::LoadError;
use crate::io::Checkpoint;
use crate::kernels::cross_entropy::linear_cross_entropy;
use crate::models::cache::KvCache;
use crate::models::chatglm::{self, ChatGlmConfig, ChatGlmForConditionalGeneration};
use crate::models::linear::{ComputeDtype, Linear};
use crate::models::llama::{self, LlamaConfig, LlamaForCausalLm};
use crate::models::mask::Inputs;
use crate::models::prompt::PromptState;
use crate::peft::adapter::LinearAdapter;
use crate::train::loss::{shifted_targets, token_loss_sum_lead};

/// A model folder with its parsed `config.json`.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config_json: Map<String, Value>,
    pub family: Family,
}

/// The family-specific config: a closed enum.
#[derive(Debug, Clone)]
pub enum Family {
    Llama(LlamaConfig),
    ChatGlm(ChatGlmConfig),
}

/// One module users can target: its path (the checkpoint key without `.weight`), kind and shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModulePath {
    pub path: String,
    pub kind: &'static str,
    #[serde(rename = "in")]
    pub d_in: usize,
    #[serde(rename = "out")]
    pub d_out: usize,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        // `--model file.gguf`: the file's config and tokenizer in a prepared folder, its weights
        // read in place at load (`gguf::base`).
        if crate::gguf::base::is_gguf_file(dir) {
            let prepared =
                crate::gguf::base::prepare_folder(dir).map_err(|e| LoadError::Config {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?;
            return Self::open(&prepared);
        }
        if !dir.is_dir() {
            return Err(LoadError::MissingFile {
                path: dir.to_path_buf(),
                what: "model folder",
            });
        }
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(LoadError::MissingFile {
                path,
                what: "config.json",
            });
        }
        let config_json: Map<String, Value> = crate::io::json::read_json(&path)?;
        let model_type = config_json
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let family = match model_type {
            "llama" | "mistral" | "qwen2" => {
                Family::Llama(LlamaConfig::from_json(&config_json, &path)?)
            }
            chatglm::config::MODEL_TYPE => {
                Family::ChatGlm(ChatGlmConfig::from_json(&config_json, &path)?)
            }
            other => {
                return Err(LoadError::UnknownModelType {
                    path,
                    model_type: other.to_string(),
                    supported: "llama, mistral, qwen2, chatglm",
                })
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config_json,
            family,
        })
    }

    /// The GGUF file this folder stands for (`--model file.gguf`), if it is a prepared one.
    pub fn gguf_file(&self) -> Option<PathBuf> {
        crate::gguf::base::marked_file(&self.dir)
    }

    pub fn model_type(&self) -> &str {
        match &self.family {
            Family::Llama(c) => &c.model_type,
            Family::ChatGlm(_) => chatglm::config::MODEL_TYPE,
        }
    }

    /// EOS ids from config.json (`eos_token_id` may be a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.family {
            Family::Llama(c) => c.eos_token_ids.clone(),
            Family::ChatGlm(c) => c.eos_token_ids.clone(),
        }
    }

    /// Key facts of the config, for `peft inspect`.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        match &self.family {
            Family::Llama(c) => vec![
                ("vocab_size", c.vocab_size.to_string()),
                ("hidden_size", c.hidden_size.to_string()),
                ("intermediate_size", c.intermediate_size.to_string()),
                ("num_hidden_layers", c.num_hidden_layers.to_string()),
                ("num_attention_heads", c.num_attention_heads.to_string()),
                ("num_key_value_heads", c.num_key_value_heads.to_string()),
                ("head_dim", c.head_dim.to_string()),
                ("rope_theta", c.rope_theta.to_string()),
                ("rope_scaling", format!("{:?}", c.rope_scaling)),
                (
                    "max_position_embeddings",
                    c.max_position_embeddings.to_string(),
                ),
                ("tie_word_embeddings", c.tie_word_embeddings.to_string()),
            ],
            Family::ChatGlm(c) => vec![
                ("padded_vocab_size", c.padded_vocab_size.to_string()),
                ("hidden_size", c.hidden_size.to_string()),
                ("ffn_hidden_size", c.ffn_hidden_size.to_string()),
                ("num_layers", c.num_layers.to_string()),
                ("num_attention_heads", c.num_attention_heads.to_string()),
                ("multi_query_group_num", c.kv_groups.to_string()),
                ("kv_channels", c.kv_channels.to_string()),
                ("rope_ratio", c.rope_ratio.to_string()),
                ("seq_length", c.seq_length.to_string()),
                ("pre_seq_len", format!("{:?}", c.pre_seq_len)),
            ],
        }
    }

    /// Every tensor name the checkpoint must hold, in checkpoint order.
    pub fn expected_tensors(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (embedding, layers, norms, final_norm, head): (
            &str,
            usize,
            [&str; 2],
            Option<&str>,
            Option<&str>,
        ) = match &self.family {
            Family::Llama(c) => (
                "model.embed_tokens.weight",
                c.num_hidden_layers,
                ["input_layernorm", "post_attention_layernorm"],
                Some("model.norm.weight"),
                (!c.tie_word_embeddings).then_some("lm_head.weight"),
            ),
            Family::ChatGlm(c) => (
                "transformer.embedding.word_embeddings.weight",
                c.num_layers,
                ["input_layernorm", "post_attention_layernorm"],
                c.post_layer_norm
                    .then_some("transformer.encoder.final_layernorm.weight"),
                Some("transformer.output_layer.weight"),
            ),
        };
        let layer_prefix = match &self.family {
            Family::Llama(_) => "model.layers",
            Family::ChatGlm(_) => "transformer.encoder.layers",
        };
        out.push(embedding.to_string());
        let linears = match &self.family {
            Family::Llama(c) => c.linear_shapes(),
            Family::ChatGlm(c) => c.linear_shapes(),
        };
        for (path, _, _, bias) in linears {
            out.push(format!("{path}.weight"));
            if bias {
                out.push(format!("{path}.bias"));
            }
        }
        for l in 0..layers {
            for norm in norms {
                out.push(format!("{layer_prefix}.{l}.{norm}.weight"));
            }
        }
        out.extend(final_norm.map(String::from));
        out.extend(head.map(String::from));
        out
    }

    /// Refuses, before allocating anything, a checkpoint that lacks tensors the config needs
    /// (a config declaring more layers than the checkpoint has would otherwise be zero-filled up
    /// to the end) and a model larger than the machine's available memory.
    pub fn check_loadable(&self, checkpoint: &Checkpoint) -> Result<(), LoadError> {
        self.check_loadable_as(checkpoint, 4.0, "f32 weights")
    }

    /// As `check_loadable`, the weights taking `bytes_per_param` each (a narrow or quantized base).
    fn check_loadable_as(
        &self,
        checkpoint: &Checkpoint,
        bytes_per_param: f64,
        what: &str,
    ) -> Result<(), LoadError> {
        let bytes = Some((self.num_parameters() as f64 * bytes_per_param).ceil() as u64);
        let setting = match &self.family {
            Family::Llama(_) => "the sizes in config.json (num_hidden_layers, hidden_size, intermediate_size, vocab_size)",
            Family::ChatGlm(_) => "the sizes in config.json (num_layers, hidden_size, ffn_hidden_size, padded_vocab_size)",
        };
        crate::io::budget::check(
            &format!("the model in {} ({what})", self.dir.display()),
            setting,
            bytes,
        )?;
        let missing: Vec<String> = self
            .expected_tensors()
            .into_iter()
            .filter(|n| !checkpoint.contains(n))
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::MissingTensors { tensors: missing });
        }
        Ok(())
    }

    /// Loads the weights onto `device`.
    pub fn load(&self, device: &Device) -> Result<CausalLm, LoadError> {
        self.load_with_base_dtype(device, DType::F32)
    }

    /// Loads the weights onto `device`, the frozen linear and embedding weights stored in
    /// `base_dtype` (f32, bf16 or f16; narrowed tensor by tensor, so no f32 copy of the base is
    /// ever held). Norms and biases stay f32, and every product computes in f32.
    pub fn load_with_base_dtype(
        &self,
        device: &Device,
        base_dtype: DType,
    ) -> Result<CausalLm, LoadError> {
        self.load_base(device, base_dtype, None)
    }

    /// As `load_with_base_dtype`, the frozen linear weights also quantized with `quant`
    /// (`--quantize-base`), tensor by tensor as they load: no f32 copy of the whole model.
    pub fn load_base(
        &self,
        device: &Device,
        base_dtype: DType,
        quant: Option<crate::quant::BaseQuant>,
    ) -> Result<CausalLm, LoadError> {
        if let Some(file) = self.gguf_file() {
            let base = crate::gguf::base::GgufBase::open(&file).map_err(|e| LoadError::Config {
                path: file.clone(),
                message: e.to_string(),
            })?;
            return match &self.family {
                Family::Llama(c) => Ok(CausalLm::Llama(llama::weights::load_gguf(
                    c.clone(),
                    &base,
                    device,
                    base_dtype,
                    quant,
                )?)),
                Family::ChatGlm(c) => Ok(CausalLm::ChatGlm(chatglm::weights::load_gguf(
                    c.clone(),
                    &base,
                    device,
                    base_dtype,
                    quant,
                )?)),
            };
        }
        let checkpoint = Checkpoint::open_dir(&self.dir)?;
        // Quantized linears take a block's bytes per value (Q8_0 34/32, Q4_0 18/32, NF4 36/64);
        // embeddings stay in the base dtype, so this undercounts them: a first refusal only.
        let (per, what) = match (quant, base_dtype) {
            (Some(q), _) => (
                match q {
                    crate::quant::BaseQuant::Int8 => 34.0 / 32.0,
                    crate::quant::BaseQuant::Int4 => 18.0 / 32.0,
                    crate::quant::BaseQuant::Nf4 => 36.0 / 64.0,
                },
                "quantized weights",
            ),
            (None, DType::BF16 | DType::F16) => (2.0, "16-bit weights"),
            _ => (4.0, "f32 weights"),
        };
        self.check_loadable_as(&checkpoint, per, what)?;
        match &self.family {
            Family::Llama(c) => Ok(CausalLm::Llama(llama::weights::load_base(
                c.clone(),
                &checkpoint,
                device,
                base_dtype,
                quant,
            )?)),
            Family::ChatGlm(c) => Ok(CausalLm::ChatGlm(chatglm::weights::load_base(
                c.clone(),
                &checkpoint,
                device,
                base_dtype,
                quant,
            )?)),
        }
    }

    /// Every linear and embedding module, with shapes, in checkpoint order.
    pub fn module_paths(&self) -> Vec<ModulePath> {
        match &self.family {
            Family::Llama(c) => {
                let mut out = vec![ModulePath {
                    path: "model.embed_tokens".into(),
                    kind: "embedding",
                    d_in: c.vocab_size,
                    d_out: c.hidden_size,
                }];
                out.extend(c.linear_shapes().into_iter().map(|(path, d_in, d_out, _)| {
                    ModulePath {
                        path,
                        kind: "linear",
                        d_in,
                        d_out,
                    }
                }));
                if !c.tie_word_embeddings {
                    out.push(ModulePath {
                        path: "lm_head".into(),
                        kind: "linear",
                        d_in: c.hidden_size,
                        d_out: c.vocab_size,
                    });
                }
                out
            }
            Family::ChatGlm(c) => {
                let mut out = vec![ModulePath {
                    path: "transformer.embedding.word_embeddings".into(),
                    kind: "embedding",
                    d_in: c.padded_vocab_size,
                    d_out: c.hidden_size,
                }];
                out.extend(c.linear_shapes().into_iter().map(|(path, d_in, d_out, _)| {
                    ModulePath {
                        path,
                        kind: "linear",
                        d_in,
                        d_out,
                    }
                }));
                out.push(ModulePath {
                    path: "transformer.output_layer".into(),
                    kind: "linear",
                    d_in: c.hidden_size,
                    d_out: c.padded_vocab_size,
                });
                out
            }
        }
    }

    /// Total parameters as stored in the checkpoint (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        match &self.family {
            Family::Llama(c) => {
                let linear: usize = c
                    .linear_shapes()
                    .iter()
                    .map(|(_, i, o, bias)| i * o + if *bias { *o } else { 0 })
                    .sum();
                let head = if c.tie_word_embeddings {
                    0
                } else {
                    c.hidden_size * c.vocab_size
                };
                let norms = c.hidden_size * (2 * c.num_hidden_layers + 1);
                c.vocab_size * c.hidden_size + linear + head + norms
            }
            Family::ChatGlm(c) => c.num_parameters(),
        }
    }
}

/// A loaded causal language model.
#[derive(Module, Debug)]
pub enum CausalLm {
    Llama(LlamaForCausalLm),
    ChatGlm(ChatGlmForConditionalGeneration),
}

impl CausalLm {
    /// Logits for every position: [batch, seq, vocab].
    pub fn forward(&self, inputs: &Inputs, cache: Option<&mut KvCache>) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.forward(inputs, cache, None),
            Self::ChatGlm(m) => m.forward(inputs, cache, None),
        }
    }

    /// Logits for every real position with an explicit prompt-learning state (instead of the
    /// attached encoder's): [batch, seq, vocab]. ChatGLM takes key/value prefixes only.
    pub fn forward_with_prompt(
        &self,
        inputs: &Inputs,
        cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
    ) -> Result<Tensor<3>, AdapterError> {
        match (self, prompt) {
            (Self::ChatGlm(_), Some(p)) if p.input_embeds.is_some() || p.adaption.is_some() => {
                Err(AdapterError::Unsupported(
                    "ChatGLM takes key/value prefixes (P-tuning v2) only, not virtual input embeddings or adaption prompts".into(),
                ))
            }
            (Self::Llama(m), p) => Ok(m.forward(inputs, cache, p)),
            (Self::ChatGlm(m), p) => Ok(m.forward(inputs, cache, p)),
        }
    }

    /// Logit positions in front of the first real token that the loss uses. PEFT prepends
    /// −100 labels for prompt tuning's and P-tuning's virtual tokens before the shift
    /// (peft_model.py, `PeftModelForCausalLM.forward`), so the last virtual token predicts the
    /// first real one and that label counts: 1 for those methods, 0 otherwise.
    pub fn loss_lead(&self) -> usize {
        match self {
            Self::Llama(m) => m
                .prompt_encoder
                .as_ref()
                .is_some_and(|e| e.prepends_tokens())
                .into(),
            Self::ChatGlm(_) => 0,
        }
    }

    /// Logits for the loss: [batch, lead + seq, vocab] with `lead` = [`Self::loss_lead`]; the
    /// first `lead` rows are the last virtual positions.
    pub fn forward_for_loss(&self, inputs: &Inputs) -> Tensor<3> {
        match self {
            Self::Llama(m) if self.loss_lead() > 0 => {
                m.logits(m.hidden_states_keeping(inputs, None, None, self.loss_lead()))
            }
            _ => self.forward(inputs, None),
        }
    }

    /// Extra positions the attached prompt encoder takes from the context (virtual tokens or
    /// key/value prefixes); 0 without one.
    pub fn prompt_positions(&self) -> usize {
        let encoder = match self {
            Self::Llama(m) => m.prompt_encoder.as_ref(),
            Self::ChatGlm(m) => m.transformer.prefix_encoder.as_ref(),
        };
        encoder.map_or(0, |e| e.positions())
    }

    /// The slot of the prompt-learning encoder (PEFT's `prompt_encoder`; ChatGLM's
    /// `transformer.prefix_encoder`).
    pub fn prompt_encoder_mut(&mut self) -> &mut Option<crate::peft::prompt::PromptEncoder> {
        match self {
            Self::Llama(m) => &mut m.prompt_encoder,
            Self::ChatGlm(m) => &mut m.transformer.prefix_encoder,
        }
    }

    /// The hidden states [`Self::forward_for_loss`] puts through the output head:
    /// [batch, lead + seq, hidden] with `lead` = [`Self::loss_lead`]. With
    /// [`Self::logits_of`] on a few of its rows, an evaluation pays the [vocab × hidden] head
    /// only where a label is read (`compare::eval::forward_pass`).
    pub fn hidden_for_loss(&self, inputs: &Inputs) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.hidden_states_keeping(inputs, None, None, self.loss_lead()),
            Self::ChatGlm(m) => m.hidden_states(inputs, None, None),
        }
    }

    /// The output head on hidden states: [batch, seq, hidden] -> [batch, seq, vocab].
    pub fn logits_of(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.logits(hidden),
            Self::ChatGlm(m) => m.logits(hidden),
        }
    }

    /// The summed loss of `labels` [batch, seq] (shifted, −100 ignored, the first label
    /// counted after virtual tokens as [`Self::loss_lead`] says) of one forward: the output head
    /// fused with the cross-entropy (`kernels::cross_entropy`) when it is a frozen plain linear
    /// or a tied embedding, so the [batch, seq, vocab] logits are never held; the plain logits +
    /// log-softmax otherwise (an adapted or trainable head). -> [1]
    pub fn token_loss_sum(&self, inputs: &Inputs, labels: &[i64]) -> Tensor<1> {
        let (batch, seq) = (inputs.batch, inputs.seq);
        let lead = self.loss_lead();
        let (hidden, head) = match self {
            Self::Llama(m) => (
                m.hidden_states_keeping(inputs, None, None, lead),
                m.output_head(),
            ),
            Self::ChatGlm(m) => (m.hidden_states(inputs, None, None), m.output_head()),
        };
        match head {
            Some((weight, layout)) => {
                let [b, s, h] = hidden.dims();
                let targets = shifted_targets(labels, batch, seq, lead);
                linear_cross_entropy(hidden.reshape([b * s, h]), weight, layout, &targets)
            }
            None => {
                let logits = match self {
                    Self::Llama(m) => m.logits(hidden),
                    Self::ChatGlm(m) => m.logits(hidden),
                };
                token_loss_sum_lead(logits, labels, batch, seq, lead)
            }
        }
    }

    /// `--gradient-checkpointing`: every decoder layer recomputes its forward in the backward,
    /// keeping only its input between forward and backward (`models::checkpointing`).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Self::Llama(m) => m.gradient_checkpointing = on,
            Self::ChatGlm(m) => m.gradient_checkpointing = on,
        }
    }

    /// Sets what every linear's frozen-weight products compute in (`--compute-dtype`): bf16
    /// takes effect for bf16-stored weights (`--base-dtype bf16`) on flex on a CPU with
    /// avx512bf16 (`kernels::bf16_gemm::supported`); the caller checks those.
    pub fn set_compute_dtype(&mut self, compute: ComputeDtype) {
        for (_, linear) in self.linears_mut() {
            linear.compute = compute;
        }
    }

    /// Stores the frozen linear and embedding weights in `dtype` (bf16 for decoding: half the
    /// bytes each generated token reads; every product still computes in f32). Norms and adapter
    /// tensors keep f32, and so do DoRA-adapted layers (their weight norm is computed from the
    /// weight). Inference only: call it after the adapters are loaded.
    ///
    /// A linear's narrow copy is stored `[out, in]` (PyTorch's orientation) and kept as its
    /// `[in, out]` transposed view: a decoding step's few-row product then reads each output's
    /// weights as one contiguous row (`kernels::gemv`), and every other product sees the usual
    /// `[in, out]` tensor.
    pub fn cast_decode_weights(&mut self, dtype: DType) {
        fn cast<const D: usize>(param: &mut Param<Tensor<D>>, dtype: DType) {
            let device = param.val().device();
            let placeholder = Param::from_tensor(Tensor::zeros([1; D], &device));
            let old = std::mem::replace(param, placeholder);
            *param = old.map(|t| t.cast(dtype));
        }
        fn cast_rows_out(param: &mut Param<Tensor<2>>, dtype: DType) {
            let device = param.val().device();
            let placeholder = Param::from_tensor(Tensor::zeros([1, 1], &device));
            let old = std::mem::replace(param, placeholder);
            *param = old.map(|t| {
                // Through host data: a contiguous [out, in] whatever the backend does with views.
                let rows_out = t.transpose().cast(dtype).into_data();
                let options =
                    burn::tensor::TensorCreationOptions::new(device.clone()).with_dtype(dtype);
                Tensor::<2>::from_data(rows_out, options).transpose()
            });
        }
        for (_, linear) in self.linears_mut() {
            let dora =
                matches!(&linear.adapter, Some(LinearAdapter::Lora(l)) if l.magnitude.is_some());
            if !dora && linear.quant.is_none() {
                cast_rows_out(&mut linear.weight, dtype);
            }
        }
        match self {
            Self::Llama(m) => cast(&mut m.model.embed_tokens.weight, dtype),
            Self::ChatGlm(m) => cast(&mut m.transformer.embedding.word_embeddings.weight, dtype),
        }
    }

    /// Logits of the last position only: [batch, vocab] (generation never needs the others).
    pub fn forward_last(&self, inputs: &Inputs, cache: Option<&mut KvCache>) -> Tensor<2> {
        match self {
            Self::Llama(m) => {
                let hidden = m.hidden_states(inputs, cache, None);
                let [b, s, h] = hidden.dims();
                let last = hidden.slice([0..b, s - 1..s, 0..h]);
                m.logits(last).squeeze_dim::<2>(1)
            }
            Self::ChatGlm(m) => {
                let hidden = m.hidden_states(inputs, cache, None);
                let [b, s, h] = hidden.dims();
                m.logits(hidden.slice([0..b, s - 1..s, 0..h]))
                    .squeeze_dim::<2>(1)
            }
        }
    }

    pub fn new_cache(&self) -> KvCache {
        match self {
            Self::Llama(m) => KvCache::new(m.config.num_hidden_layers),
            Self::ChatGlm(m) => KvCache::new(m.config.num_layers),
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.max_position_embeddings,
            Self::ChatGlm(m) => m.config.seq_length,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.vocab_size,
            Self::ChatGlm(m) => m.config.padded_vocab_size,
        }
    }

    /// The token embedding's module path.
    pub fn embedding_path(&self) -> &'static str {
        match self {
            Self::Llama(_) => "model.embed_tokens",
            Self::ChatGlm(_) => "transformer.embedding.word_embeddings",
        }
    }

    /// The output head path, which `"all-linear"` never targets.
    pub fn output_head(&self) -> &'static [&'static str] {
        match self {
            Self::Llama(_) => &["lm_head"],
            Self::ChatGlm(_) => &["transformer.output_layer"],
        }
    }

    /// The base model's parameter count: the module's, plus the quantized weights held beside it
    /// (`Linear::quant`, which `Module::num_params` sees as `[1, 1]` placeholders).
    pub fn base_params(&mut self) -> usize {
        let outside: usize = self
            .linears_mut()
            .iter()
            .map(|(_, l)| l.params_outside_module())
            .sum();
        burn::module::Module::num_params(self) + outside
    }

    /// Every linear layer with its module path, in checkpoint order.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match self {
            Self::Llama(m) => {
                let mut out = Vec::new();
                for (l, layer) in m.model.layers.iter_mut().enumerate() {
                    let p = format!("model.layers.{l}");
                    let (a, f) = (&mut layer.self_attn, &mut layer.mlp);
                    out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
                    out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
                    out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
                    out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
                    out.push((format!("{p}.mlp.gate_proj"), &mut f.gate_proj));
                    out.push((format!("{p}.mlp.up_proj"), &mut f.up_proj));
                    out.push((format!("{p}.mlp.down_proj"), &mut f.down_proj));
                }
                if let Some(head) = &mut m.lm_head {
                    out.push(("lm_head".into(), head));
                }
                out
            }
            Self::ChatGlm(m) => {
                let mut out = Vec::new();
                for (l, layer) in m.transformer.encoder.layers.iter_mut().enumerate() {
                    let p = format!("transformer.encoder.layers.{l}");
                    let (a, f) = (&mut layer.self_attention, &mut layer.mlp);
                    out.push((
                        format!("{p}.self_attention.query_key_value"),
                        &mut a.query_key_value,
                    ));
                    out.push((format!("{p}.self_attention.dense"), &mut a.dense));
                    out.push((format!("{p}.mlp.dense_h_to_4h"), &mut f.dense_h_to_4h));
                    out.push((format!("{p}.mlp.dense_4h_to_h"), &mut f.dense_4h_to_h));
                }
                out.push((
                    "transformer.output_layer".into(),
                    &mut m.transformer.output_layer,
                ));
                out
            }
        }
    }
}

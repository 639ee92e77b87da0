//! `peft export gguf --model DIR [--adapter A ...] --out FILE.gguf --type T [--lora-only] [--force]`,
//! and the hidden `peft export logits` that examples/check_gguf_llama_cpp.py compares llama.cpp with.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use peft::gguf::export::{export_gguf, ExportOptions, ExportType};

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Write a GGUF file that llama.cpp, Ollama and LM Studio load: the model with the adapters
    /// folded in (or, with --lora-only, the adapter as a GGUF LoRA), tokenizer and chat template
    /// embedded, and an Ollama NAME.Modelfile beside it. Llama or ChatGLM2/3 architecture.
    Gguf {
        /// Hugging Face model folder (required; for --lora-only, the base the adapter was
        /// trained on).
        #[arg(long)]
        model: PathBuf,
        /// PEFT adapter folder, folded into the weights in the order given (repeatable; default:
        /// none, the base model).
        #[arg(long)]
        adapter: Vec<PathBuf>,
        /// The .gguf file to write, under a temporary name until complete (required).
        #[arg(long)]
        out: PathBuf,
        /// Tensor type: f32, f16, bf16 (as convert_hf_to_gguf.py --outtype), q8_0, q4_0, q4_k_m
        /// (as llama-quantize; norms stay f32).
        #[arg(long = "type", default_value = "f16")]
        ty: String,
        /// Write the one --adapter as a GGUF LoRA (llama-cli --lora, Ollama ADAPTER) instead of
        /// a merged model.
        #[arg(long)]
        lora_only: bool,
        /// Replace --out if it exists (default: refuse).
        #[arg(long)]
        force: bool,
    },
    /// Token ids and all-position logits of texts, for comparing with llama.cpp (internal).
    #[command(hide = true)]
    Logits {
        #[command(flatten)]
        model: super::common::ModelArgs,
        /// A text to score (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// Token ids to score, comma-separated (repeatable; after the texts).
        #[arg(long)]
        ids: Vec<String>,
        /// Writes OUT (JSON: ids, vocab) and OUT.f32 (logits, little-endian, text by text).
        #[arg(long)]
        out: PathBuf,
        /// Round the inputs of every product as llama.cpp's CPU backend does for the weight's
        /// type (f16 for F16 weights, Q8_0 blocks for Q8_0/Q4_0): the logits a GGUF file defines
        /// when llama.cpp runs it (`models::ggml_activations`; a comparison mode only).
        #[arg(long)]
        ggml_activations: bool,
    },
}

pub fn run(cmd: ExportCommand) -> anyhow::Result<()> {
    match cmd {
        ExportCommand::Gguf {
            model,
            adapter,
            out,
            ty,
            lora_only,
            force,
        } => {
            let ty = ExportType::parse(&ty)?;
            peft::io::leftovers::clean_siblings(&out);
            let opts = ExportOptions {
                model,
                adapters: adapter,
                out,
                ty,
                force,
                lora_only,
            };
            let r = export_gguf(&opts).context("export refused or failed; nothing was written")?;
            let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            println!(
                "wrote {} ({:.1} MiB, {} tensors: {}; {} tensors adapted{}) and {}",
                r.out.display(),
                r.bytes as f64 / (1024.0 * 1024.0),
                r.tensors,
                types.join(", "),
                r.merged,
                if r.tokenizer.is_empty() {
                    String::new()
                } else {
                    format!("; tokenizer {}", r.tokenizer)
                },
                r.modelfile.display()
            );
            Ok(())
        }
        ExportCommand::Logits {
            model,
            text,
            ids,
            out,
            ggml_activations,
        } => {
            peft::models::ggml_activations::set(ggml_activations);
            if ggml_activations {
                peft::models::ggml_activations::set_tied_head_q8_0(tied_head_takes_q8_0(
                    &model.model,
                ));
            }
            logits(model, &text, &ids, &out)
        }
    }
}

/// Whether `path` is a GGUF file without `output.weight` whose `token_embd` (the tied head) is
/// Q8_0 or Q4_0, products llama.cpp computes on Q8_0 activations.
fn tied_head_takes_q8_0(path: &std::path::Path) -> bool {
    use peft::gguf::reader::Gguf;
    if !peft::gguf::base::is_gguf_file(path) {
        return false;
    }
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(g) = Gguf::parse(path, &bytes) else {
        return false;
    };
    let has_output = g.tensors.iter().any(|t| t.name == "output.weight");
    let embd = g.tensors.iter().find(|t| t.name == "token_embd.weight");
    // ggml type ids: Q4_0 = 2, Q8_0 = 8.
    !has_output && embd.is_some_and(|t| matches!(t.ggml_type, 2 | 8))
}

fn logits(
    args: super::common::ModelArgs,
    texts: &[String],
    id_lists: &[String],
    out: &PathBuf,
) -> anyhow::Result<()> {
    use peft::models::tensor_util::to_vec;
    use peft::models::Inputs;
    let tokenizer = peft::tokenizer::TextTokenizer::load(&args.model)?;
    let loaded = args.load()?;
    let mut all_ids = Vec::new();
    let mut bin = std::io::BufWriter::new(
        std::fs::File::create(out.with_extension("f32")).context("logits file")?,
    );
    let mut inputs_all = Vec::new();
    for text in texts {
        inputs_all.push(tokenizer.encode(text, false)?);
    }
    for list in id_lists {
        let ids: Result<Vec<u32>, _> = list.split(',').map(|t| t.trim().parse::<u32>()).collect();
        inputs_all.push(
            ids.with_context(|| format!("--ids `{list}`: expected comma-separated token ids"))?,
        );
    }
    for ids in inputs_all {
        if ids.is_empty() {
            anyhow::bail!("an input encodes to no tokens");
        }
        let seq = ids.len();
        let inputs = Inputs::new(ids.iter().map(|&i| i as i64).collect(), 1, seq);
        for v in to_vec(loaded.model.forward(&inputs, None)) {
            bin.write_all(&v.to_le_bytes())?;
        }
        all_ids.push(ids);
    }
    bin.flush()?;
    let json = serde_json::json!({"ids": all_ids, "vocab": loaded.model.vocab_size()});
    std::fs::write(out, serde_json::to_vec(&json)?)?;
    Ok(())
}

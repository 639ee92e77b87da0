//! The files beside an adapter that PEFT's `save_pretrained` writes for the Hub and for
//! `AutoPeftModelForCausalLM`: `base_model_name_or_path` in `adapter_config.json`, and a
//! `README.md` model card (YAML front matter `base_model`, `library_name: peft`, tags,
//! `pipeline_tag`; then the training settings), as `PeftModel.create_or_update_model_card`
//! (peft_model.py) does.

use std::path::Path;

use serde_json::json;

use crate::error::AdapterError;
use crate::peft::config::PEFT_VERSION;
use crate::peft::{AdapterConfig, PeftType};

pub const CARD_FILE: &str = "README.md";

/// Records the base model as PEFT does: the name or path the model was loaded from, as given.
pub fn record_base_model(config: &mut AdapterConfig, name: &str) {
    config.base_model_name_or_path = Some(name.to_string());
    config
        .raw
        .insert("base_model_name_or_path".into(), json!(name));
}

/// A YAML scalar: double-quoted (JSON string syntax is valid YAML) when plain would misparse.
fn yaml(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || "/._-".contains(c))
        && !s.starts_with(['-', '.']);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// The card's text: front matter as PEFT 0.21 writes it (tags `base_model:adapter:<base>`,
/// `lora` for LoRA, `transformers`), a summary, `settings` as a list, and the framework versions.
pub fn model_card(config: &AdapterConfig, base: &str, settings: &[(String, String)]) -> String {
    let mut tags = vec![format!("base_model:adapter:{base}"), "transformers".into()];
    if config.peft_type == PeftType::Lora {
        tags.push("lora".into());
    }
    tags.sort();
    let mut card = format!(
        "---\nbase_model: {}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n",
        yaml(base)
    );
    for t in &tags {
        card.push_str(&format!("- {}\n", yaml(t)));
    }
    card.push_str("---\n\n");
    card.push_str(&format!(
        "# {} adapter for {base}\n\nTrained with `peft train` (this Rust toolkit); the files are PEFT's, so\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n```\n\nloads it on the base model above (`base_model_name_or_path` in `adapter_config.json`).\n\n## Training procedure\n\n",
        config.peft_type.as_str()
    ));
    let method_keys = [
        "r",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "use_dora",
        "target_modules",
        "init_r",
        "target_r",
        "num_virtual_tokens",
        "adapter_len",
        "adapter_layers",
    ];
    for key in method_keys {
        if let Some(v) = config.raw.get(key).filter(|v| !v.is_null()) {
            card.push_str(&format!("- {key}: {v}\n"));
        }
    }
    for (k, v) in settings {
        card.push_str(&format!("- {k}: {v}\n"));
    }
    card.push_str(&format!(
        "\n### Framework versions\n\n- PEFT {PEFT_VERSION} (file format)\n"
    ));
    card
}

/// Writes `README.md` into `dir` atomically.
pub fn write_model_card(
    dir: &Path,
    config: &AdapterConfig,
    base: &str,
    settings: &[(String, String)],
) -> Result<(), AdapterError> {
    let text = model_card(config, base, settings);
    crate::io::write_atomic(&dir.join(CARD_FILE), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_are_quoted_only_when_needed() {
        assert_eq!(
            yaml("tests/fixtures/llama-tiny"),
            "tests/fixtures/llama-tiny"
        );
        assert_eq!(yaml("C: drive"), "\"C: drive\"");
        assert_eq!(yaml("- x"), "\"- x\"");
    }
}

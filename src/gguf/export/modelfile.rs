//! The Ollama `Modelfile` written beside an export (`NAME.Modelfile` for `NAME.gguf`), for
//! `ollama create NAME -f NAME.Modelfile`: `FROM` the GGUF, the chat template translated into
//! Ollama's Go template for the families we recognise (ChatML, Llama 3, Llama 2 `[INST]`), the
//! default system prompt the template carries, and stop tokens; `ADAPTER` for a LoRA export.
//! An unrecognised template is left out: Ollama then reads `tokenizer.chat_template` from the GGUF.

use std::path::{Path, PathBuf};

use super::error::ExportError;

/// `NAME.Modelfile` beside `NAME.gguf`.
pub fn path_for(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.Modelfile"))
}

/// A chat format: its Ollama template and stop strings.
struct Family {
    template: &'static str,
    stops: &'static [&'static str],
}

const CHATML: Family = Family {
    template: "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    stops: &["<|im_start|>", "<|im_end|>"],
};

const LLAMA3: Family = Family {
    template: "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}\
{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}\
<|start_header_id|>assistant<|end_header_id|>\n\n",
    stops: &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
};

const LLAMA2: Family = Family {
    template: "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ if and $.System (eq (len (slice $.Messages 0 1)) 1) }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}{{ .Content }} [/INST]{{ else }} {{ .Content }}</s>{{ end }}{{ end }}",
    stops: &["[INST]", "[/INST]"],
};

fn family(template: &str) -> Option<&'static Family> {
    if template.contains("<|im_start|>") {
        Some(&CHATML)
    } else if template.contains("<|start_header_id|>") {
        Some(&LLAMA3)
    } else if template.contains("[INST]") {
        Some(&LLAMA2)
    } else {
        None
    }
}

/// A default system prompt written literally in a ChatML template (SmolLM2's
/// `'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'`).
fn default_system(template: &str) -> Option<String> {
    let start = template
        .find("<|im_start|>system\\n")
        .map(|i| (i, 20))
        .or_else(|| template.find("<|im_start|>system\n").map(|i| (i, 19)))?;
    let rest = &template[start.0 + start.1..];
    let end = rest.find("<|im_end|>")?;
    let text = &rest[..end];
    // A template that inserts `message['content']` here has no literal default.
    (!text.contains("{{") && !text.contains('\'') && !text.is_empty()).then(|| text.to_string())
}

/// The Modelfile's text.
pub fn render(
    from: &str,
    chat_template: Option<&str>,
    eos: Option<&str>,
    adapter: Option<&str>,
) -> String {
    let mut s =
        String::from("# Written by `peft export gguf`. Use: ollama create NAME -f THIS_FILE\n");
    s.push_str(&format!("FROM {from}\n"));
    if let Some(a) = adapter {
        s.push_str(&format!("ADAPTER {a}\n"));
    }
    let fam = chat_template.and_then(family);
    if let Some(f) = fam {
        s.push_str(&format!("TEMPLATE \"\"\"{}\"\"\"\n", f.template));
        if let Some(system) = chat_template.and_then(default_system) {
            s.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
        }
    } else if chat_template.is_some() {
        s.push_str(
            "# The chat template was not recognised; Ollama uses the one embedded in the GGUF.\n",
        );
    }
    let mut stops: Vec<&str> = fam.map(|f| f.stops.to_vec()).unwrap_or_default();
    if let Some(e) = eos {
        if !stops.contains(&e) {
            stops.push(e);
        }
    }
    for stop in stops {
        s.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
    }
    s
}

/// Writes `NAME.Modelfile` beside `out` (atomically). `adapter`: `Some(base_gguf)` for a LoRA
/// export, whose Modelfile names the base GGUF in `FROM` and the adapter in `ADAPTER`.
pub fn write(
    out: &Path,
    chat_template: Option<&str>,
    eos: Option<&str>,
    adapter: Option<&str>,
) -> Result<PathBuf, ExportError> {
    let file = out
        .file_name()
        .map(|n| format!("./{}", n.to_string_lossy()))
        .unwrap_or_default();
    let text = match adapter {
        Some(base) => render(base, chat_template, eos, Some(&file)),
        None => render(&file, chat_template, eos, None),
    };
    let path = path_for(out);
    crate::io::atomic::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";

    #[test]
    fn a_chatml_template_gives_the_ollama_chatml_template_system_and_stops() {
        let m = render("./m.gguf", Some(SMOL), Some("<|im_end|>"), None);
        assert!(m.contains("FROM ./m.gguf\n"));
        assert!(m.contains("<|im_start|>{{ .Role }}"));
        assert!(m.contains("SYSTEM \"\"\"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\"\""), "{m}");
        assert_eq!(m.matches("PARAMETER stop \"<|im_end|>\"").count(), 1);
        assert!(!m.contains("ADAPTER"));
    }

    #[test]
    fn a_lora_export_names_the_adapter() {
        let m = render("./base.gguf", None, Some("</s>"), Some("./a.gguf"));
        assert!(m.contains("FROM ./base.gguf\nADAPTER ./a.gguf\n"));
        assert!(m.contains("PARAMETER stop \"</s>\""));
        assert!(!m.contains("TEMPLATE"));
    }

    #[test]
    fn the_modelfile_sits_beside_the_gguf() {
        assert_eq!(
            path_for(Path::new("out/m.gguf")),
            Path::new("out/m.Modelfile")
        );
    }
}

//! Running a plan: shards, index, config and auxiliary files into a temporary folder beside
//! `--out`, then one rename. Nothing under `--base` is ever opened for writing.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::MergeError;
use crate::io::checkpoint::INDEX_FILE;
use crate::merge::apply::write_tensor;
use crate::merge::stream::{write_file, write_shard, Reader, Sink};
use crate::merge::{MergePlan, MergeReport, Progress};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files of the base folder that are not weights: config, generation config, tokenizer, chat
/// template, remote code (`modeling_chatglm.py`), README. Hidden files and folders are skipped.
fn auxiliary_files(base: &Path) -> Result<Vec<PathBuf>, MergeError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(base).map_err(io_err(base))? {
        let path = entry.map_err(io_err(base))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let weights = name.ends_with(".safetensors")
            || name.ends_with(".bin")
            || name.ends_with(".index.json");
        if path.is_file() && !weights && !name.starts_with('.') && name != "config.json" {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `model.safetensors.index.json` as transformers writes it.
fn index_json(plan: &MergePlan) -> Vec<u8> {
    let mut weight_map = std::collections::BTreeMap::new();
    let (mut size, mut params) = (0u64, 0u64);
    for shard in &plan.shards {
        for t in &shard.tensors {
            weight_map.insert(t.name.clone(), shard.file.clone());
            size += t.byte_len();
            params += t.shape.iter().product::<usize>() as u64;
        }
    }
    let index = json!({"metadata": {"total_parameters": params, "total_size": size}, "weight_map": weight_map});
    let mut text = serde_json::to_string_pretty(&index).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

fn config_bytes(config: &Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(config).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

impl MergePlan {
    /// Writes the merged model into `options.out`. On error nothing is left behind.
    pub fn execute(
        &self,
        sink: &mut dyn Sink,
        progress: &mut dyn Progress,
    ) -> Result<MergeReport, MergeError> {
        let out = &self.options.out;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "merged".into());
        let tmp = parent.join(format!(".{name}.merge-tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let written = self.write_into(&tmp, sink, progress).and_then(|report| {
            self.swap_into_place(&tmp, &parent, &name)?;
            Ok(report)
        });
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        progress.finish();
        written
    }

    fn write_into(
        &self,
        dir: &Path,
        sink: &mut dyn Sink,
        progress: &mut dyn Progress,
    ) -> Result<MergeReport, MergeError> {
        progress.start(self.total_bytes());
        let mut reader = Reader::default();
        for shard in &self.shards {
            write_shard(sink, &dir.join(&shard.file), shard, |i, w| {
                let t = &shard.tensors[i];
                write_tensor(self, &mut reader, t, w)?;
                progress.tensor(&t.name, t.byte_len());
                Ok(())
            })?;
        }
        if self.write_index {
            write_file(sink, &dir.join(INDEX_FILE), &index_json(self))?;
        }
        if let Some(config) = &self.config {
            write_file(sink, &dir.join("config.json"), &config_bytes(config))?;
        }
        let mut copied = Vec::new();
        for src in auxiliary_files(&self.options.base)? {
            let bytes = fs::read(&src).map_err(io_err(&src))?;
            let file_name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            write_file(sink, &dir.join(&file_name), &bytes)?;
            copied.push(file_name);
        }
        Ok(MergeReport {
            out: self.options.out.clone(),
            tensors: self.shards.iter().map(|s| s.tensors.len()).sum(),
            merged: self.patches.keys().cloned().collect(),
            shards: self.shards.len(),
            bytes: self.total_bytes(),
            untied: self
                .untied
                .as_ref()
                .map(|t| (t.input.clone(), t.output.clone())),
            copied,
        })
    }

    /// Renames the finished folder to `--out`, moving an existing one (with `--force`) aside first
    /// and deleting it only once the new one is in place.
    fn swap_into_place(&self, tmp: &Path, parent: &Path, name: &str) -> Result<(), MergeError> {
        let out = &self.options.out;
        let old = parent.join(format!(".{name}.merge-old-{}", std::process::id()));
        let replacing = out.symlink_metadata().is_ok();
        if replacing {
            fs::rename(out, &old).map_err(io_err(out))?;
        }
        if let Err(e) = fs::rename(tmp, out) {
            if replacing {
                let _ = fs::rename(&old, out);
            }
            return Err(io_err(out)(e));
        }
        if replacing {
            let removed = if old.is_dir() {
                fs::remove_dir_all(&old)
            } else {
                fs::remove_file(&old)
            };
            removed.map_err(io_err(&old))?;
        }
        Ok(())
    }
}

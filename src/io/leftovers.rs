//! Leftovers of killed runs: the hidden temporary files and folders our atomic writes use
//! (`.NAME.tmp-PID`, `.NAME.merge-tmp-PID`, `.checkpoint-N.partial`, and the `.NAME.old-PID` /
//! `.NAME.merge-old-PID` an output is moved aside to while it is replaced). Only names of our
//! own making are touched, and only when stale: their process is gone, or the folder is locked
//! by us (then nobody else can be writing in it).

use std::path::{Path, PathBuf};

/// Which of our temporary names `name` is, with the PID it carries (if any).
fn ours(name: &str) -> Option<(Kind, Option<u32>)> {
    let rest = name.strip_prefix('.')?;
    if let Some(n) = rest
        .strip_prefix("checkpoint-")
        .and_then(|r| r.strip_suffix(".partial"))
    {
        return n.parse::<usize>().ok().map(|_| (Kind::Temp, None));
    }
    for (marker, kind) in [
        (".merge-tmp-", Kind::Temp),
        (".tmp-", Kind::Temp),
        (".merge-old-", Kind::Old),
        (".old-", Kind::Old),
    ] {
        if let Some((_, pid)) = rest.rsplit_once(marker) {
            if let Ok(pid) = pid.parse::<u32>() {
                return Some((kind, Some(pid)));
            }
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A half-written output.
    Temp,
    /// A replaced output moved aside (garbage once the new output is in place).
    Old,
}

/// Whether process `pid` is running (Linux: `/proc/PID`); unknown elsewhere, so assumed alive.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

fn remove(path: &Path) -> bool {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.is_ok()
}

/// Removes our stale temporaries directly inside `dir`, which this process has locked: every
/// one is stale (removed whatever its PID, except this process's own).
pub fn clean_locked_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = ours(&name) else {
            continue;
        };
        // `.checkpoint-N.partial` is always a folder of ours; a file of that name is not.
        if pid == Some(std::process::id()) || (pid.is_none() && !entry.path().is_dir()) {
            continue;
        }
        if remove(&entry.path()) {
            removed.push(entry.path());
        }
    }
    log(&removed);
    removed
}

/// Removes the stale temporaries of `out` beside it (`.OUT.tmp-PID` of a dead process, and a
/// moved-aside `.OUT.old-PID` once `out` itself exists again).
pub fn clean_siblings(out: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !file_name.starts_with(&prefix) {
            continue;
        }
        let Some((kind, Some(pid))) = ours(&file_name) else {
            continue;
        };
        // The suffix after `.OUT.` must be exactly our marker + PID.
        let suffix = &file_name[prefix.len()..];
        if !["tmp-", "merge-tmp-", "old-", "merge-old-"]
            .iter()
            .any(|m| suffix == format!("{m}{pid}"))
        {
            continue;
        }
        let stale = !alive(pid) && (kind == Kind::Temp || out.exists());
        if stale && remove(&entry.path()) {
            removed.push(entry.path());
        }
    }
    log(&removed);
    removed
}

fn log(removed: &[PathBuf]) {
    for path in removed {
        tracing::warn!("removed {} (left by a killed run)", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_temporary_names_are_recognised() {
        assert!(ours(".checkpoint-20.partial").is_some());
        assert!(ours(".adapter_model.safetensors.tmp-123").is_some());
        assert!(ours(".merged.merge-tmp-77").is_some());
        assert!(ours(".merged.merge-old-77").is_some());
        for name in [
            ".git",
            "checkpoint-20",
            ".checkpoint-x.partial",
            ".notes.tmp-abc",
            "a.tmp-1",
        ] {
            assert!(ours(name).is_none(), "{name}");
        }
    }
}

//! Output folders against the inputs of the same command: an `--out` that is, contains, or lies
//! inside an input (model, adapter, data, GGUF) is refused before any work, so that replacing the
//! output (`--overwrite`, `--force`) can never delete what the command reads.

use std::path::{Path, PathBuf};

/// Why an `--out` is refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("--out {} is the {what} {}: refusing to write over an input", out.display(), input.display())]
    OutIsInput {
        out: PathBuf,
        what: String,
        input: PathBuf,
    },
    #[error("--out {} contains the {what} {}: replacing the output could delete an input; choose another --out", out.display(), input.display())]
    OutContainsInput {
        out: PathBuf,
        what: String,
        input: PathBuf,
    },
    #[error("--out {} lies inside the {what} {}: choose an --out outside the inputs", out.display(), input.display())]
    OutInsideInput {
        out: PathBuf,
        what: String,
        input: PathBuf,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `path` made absolute with symlinks resolved, even if its last components do not exist yet.
pub fn resolve(path: &Path) -> Result<PathBuf, PathError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PathError::Io { path, source }
    };
    let mut existing = std::path::absolute(path).map_err(io(path))?;
    let mut rest = Vec::new();
    while existing.symlink_metadata().is_err() {
        let Some(last) = existing.components().next_back() else {
            break;
        };
        rest.push(last.as_os_str().to_owned());
        if !existing.pop() {
            break;
        }
    }
    let mut resolved = existing.canonicalize().map_err(io(&existing))?;
    for part in rest.iter().rev() {
        // `absolute` keeps `..`; a missing component followed by `..` cancels it.
        if part == ".." {
            resolved.pop();
        } else if part != "." {
            resolved.push(part);
        }
    }
    Ok(resolved)
}

/// Refuses an `out` that is, contains, or lies inside one of `inputs` (`(what, path)`; inputs
/// that do not exist are skipped: their own command reports them).
pub fn check_out_against_inputs(out: &Path, inputs: &[(&str, &Path)]) -> Result<(), PathError> {
    let out_abs = resolve(out)?;
    for (what, input) in inputs {
        if input.symlink_metadata().is_err() {
            continue;
        }
        let input_abs = resolve(input)?;
        let (out, what, input) = (out.to_path_buf(), what.to_string(), input.to_path_buf());
        if out_abs == input_abs {
            return Err(PathError::OutIsInput { out, what, input });
        }
        if input_abs.starts_with(&out_abs) {
            return Err(PathError::OutContainsInput { out, what, input });
        }
        if out_abs.starts_with(&input_abs) {
            return Err(PathError::OutInsideInput { out, what, input });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_equal_to_containing_or_inside_an_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let inputs = [("model", model.as_path())];
        let cases = [
            (model.clone(), "is the model"),
            (tmp.path().to_path_buf(), "contains the model"),
            (model.join("lora"), "lies inside the model"),
            (model.join("a/../b"), "lies inside the model"),
        ];
        for (out, want) in cases {
            let err = check_out_against_inputs(&out, &inputs).unwrap_err();
            assert!(err.to_string().contains(want), "{out:?}: {err}");
        }
        check_out_against_inputs(&tmp.path().join("run"), &inputs).unwrap();
    }

    #[test]
    fn a_symlink_to_an_input_is_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        #[cfg(unix)]
        {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&model, &link).unwrap();
            let err = check_out_against_inputs(&link, &[("model", &model)]).unwrap_err();
            assert!(err.to_string().contains("is the model"), "{err}");
        }
    }
}

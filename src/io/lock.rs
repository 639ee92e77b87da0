//! An exclusive advisory lock on an output folder, so two runs cannot write into one `--out` at
//! once (shared temporary paths, interleaved `metrics.jsonl`). The lock is the OS's (`flock`
//! through std's `File::try_lock`), held by an open file: it ends with the process however the
//! process ends, so the lock file a killed run leaves behind never blocks the next one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file inside the locked folder.
pub const LOCK_FILE: &str = ".peft.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: another peft run is writing to this folder{}; wait for it to finish or choose another --out", dir.display(), holder.as_ref().map(|p| format!(" (process {p})")).unwrap_or_default())]
    Busy {
        dir: PathBuf,
        holder: Option<String>,
    },
    #[error("{}: cannot lock: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the folder is being written; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the lock on `dir` (which must exist), or says who holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            return Err(LockError::Busy {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // Who holds it, for the message a second run prints.
    file.set_len(0).map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock_dir(tmp.path()).unwrap();
        let err = lock_dir(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("another peft run"), "{err}");
        drop(first);
        lock_dir(tmp.path()).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "999999").unwrap();
        lock_dir(tmp.path()).unwrap();
    }
}

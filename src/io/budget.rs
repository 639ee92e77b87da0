//! A memory budget: what a model, an adapter or a batch will need is checked against what the
//! machine has *before* allocating it, so an absurd size is an error naming the setting instead
//! of an abort ("memory allocation failed") or a machine driven into swap.

/// Why an allocation is refused.
#[derive(Debug, thiserror::Error)]
#[error("{what} needs {} but the machine has {} available; lower {setting}", gib(*needed), gib(*available))]
pub struct MemoryError {
    pub what: String,
    /// The setting(s) that size it, e.g. `--r` or `num_hidden_layers in config.json`.
    pub setting: String,
    pub needed: u64,
    pub available: u64,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Bytes the machine can give us now: `MemAvailable + SwapFree` from `/proc/meminfo` (Linux);
/// `None` where that is not known (then nothing is refused).
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    };
    let avail = field("MemAvailable:")?;
    Some(avail.saturating_add(field("SwapFree:").unwrap_or(0)))
}

/// Bytes of RAM available now, swap left out: `MemAvailable` from `/proc/meminfo` (Linux). The
/// training memory estimate (`train::memory`) compares against this one: a training step's
/// working set in swap runs orders of magnitude slower, so it does not count as fitting.
pub fn ram_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Refuses `needed` bytes (`None`: the size overflowed u64) for `what` when the machine has
/// less available.
pub fn check(what: &str, setting: &str, needed: Option<u64>) -> Result<(), MemoryError> {
    let needed = needed.unwrap_or(u64::MAX);
    let Some(available) = available() else {
        return Ok(());
    };
    if needed > available {
        return Err(MemoryError {
            what: what.to_string(),
            setting: setting.to_string(),
            needed,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_size_is_refused_naming_the_setting() {
        if available().is_none() {
            return;
        }
        let err = check("the LoRA factors", "--r", Some(1 << 62)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--r") && msg.contains("LoRA factors"), "{msg}");
        assert!(check("the LoRA factors", "--r", None).is_err());
        check("a small tensor", "--r", Some(1024)).unwrap();
    }
}

//! Reading JSON files with errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::LoadError;

/// Reads and parses a JSON file into `T`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

//! Typed reads of `config.json` fields, with errors that name the file and the key: shared by
//! every model family's config parser.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::LoadError;

pub(crate) struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a Path,
}

impl Fields<'_> {
    pub fn err(&self, message: String) -> LoadError {
        LoadError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    pub fn usize_req(&self, key: &str) -> Result<usize, LoadError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Err(self.err(format!("missing required field `{key}`"))),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(format!("`{key}` must be a positive integer, found {v}"))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, LoadError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize_req(key),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, LoadError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {v}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, LoadError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {v}"))),
        }
    }
}

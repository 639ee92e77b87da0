//! Named host tensors in PyTorch orientation: the one currency between fresh initialisation,
//! PEFT's files, our encoder file and the burn modules. Linear weights are transposed here, once.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use crate::error::AdapterError;
use crate::io::{Checkpoint, OwnedTensor};
use crate::models::layers::Embedding;
use crate::models::linear::Linear;
use crate::models::tensor_util::{tensor1, tensor2, to_vec, trainable, transpose};

/// Named host tensors in PyTorch orientation: `name -> (shape, values)`.
#[derive(Debug, Clone, Default)]
pub struct HostTensors {
    pub map: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl HostTensors {
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.map.insert(name.to_string(), (shape, values));
    }

    pub fn insert_tensor<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        self.insert(name, shape, to_vec(t));
    }

    /// A burn Linear (`[in, out]`) as PyTorch's `weight` [out, in] and `bias` [out].
    pub fn insert_linear(&mut self, name: &str, l: &Linear) {
        let (i, o) = (l.in_features(), l.out_features());
        let w = transpose(&to_vec(l.weight.val()), i, o);
        self.insert(&format!("{name}.weight"), vec![o, i], w);
        if let Some(b) = &l.bias {
            self.insert(&format!("{name}.bias"), vec![o], to_vec(b.val()));
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The values of `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, AdapterError> {
        let (s, v) = self
            .map
            .get(name)
            .ok_or_else(|| AdapterError::MissingTensor {
                tensor: name.to_string(),
            })?;
        if s != shape {
            return Err(AdapterError::ShapeMismatch {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                actual: s.clone(),
            });
        }
        Ok(v.clone())
    }

    /// A trainable `Linear(d_in, d_out)` with bias from `name.weight` [out, in], `name.bias`.
    pub fn linear(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Linear, AdapterError> {
        let w = self.get(&format!("{name}.weight"), &[d_out, d_in])?;
        let b = self.get(&format!("{name}.bias"), &[d_out])?;
        Ok(Linear::new(
            trainable(tensor2(transpose(&w, d_out, d_in), [d_in, d_out], device)),
            Some(trainable(tensor1(b, device))),
        ))
    }

    /// A trainable `[rows, cols]` embedding table from `name`.
    pub fn embedding(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Embedding, AdapterError> {
        let w = self.get(name, &[rows, cols])?;
        Ok(Embedding {
            weight: trainable(tensor2(w, [rows, cols], device)),
        })
    }

    pub fn num_values(&self) -> usize {
        self.map.values().map(|(_, v)| v.len()).sum()
    }

    /// As file tensors, each name prefixed with `prefix`.
    pub fn to_owned_tensors(&self, prefix: &str) -> Vec<(String, OwnedTensor)> {
        self.map
            .iter()
            .map(|(k, (s, v))| (format!("{prefix}{k}"), OwnedTensor::from_f32(s.clone(), v)))
            .collect()
    }

    /// Every tensor of `file` whose name starts with `prefix`, the prefix stripped.
    pub fn from_checkpoint(file: &Checkpoint, prefix: &str) -> Result<Self, AdapterError> {
        let mut out = Self::default();
        let names: Vec<String> = file.entries().map(|e| e.name.clone()).collect();
        for name in names {
            if let Some(short) = name.strip_prefix(prefix) {
                let (values, shape) = file.read_f32(&name)?;
                out.insert(short, shape, values);
            }
        }
        Ok(out)
    }
}

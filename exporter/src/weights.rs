//! A checkpoint's tensors, and their check against the architecture's parameter list.

use std::collections::BTreeMap;
use std::path::Path;

use models::Graph;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ExportError, ShapeMismatch, WeightsMismatch};

/// PyTorch's BatchNorm step counter: in torchvision state_dicts but never used at inference, so
/// a checkpoint saved from PyTorch may carry it.
const IGNORED_SUFFIX: &str = ".num_batches_tracked";

/// One float32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The named tensors of a checkpoint (`state_dict` keys to values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    /// Where they came from, for error messages.
    origin: String,
}

impl Weights {
    /// An empty set; `origin` names the source in error messages.
    pub fn new(origin: impl Into<String>) -> Self {
        Weights { tensors: BTreeMap::new(), origin: origin.into() }
    }

    /// Adds (or replaces) a tensor; `data` must hold exactly the product of `shape` values.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<(), ExportError> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ExportError::TensorLength { name, shape, expected, found: data.len() });
        }
        self.tensors.insert(name, Tensor { shape, data });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Parses a safetensors buffer holding float32 tensors; `origin` names it in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self, ExportError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|source| ExportError::Safetensors { path: origin.to_string(), source })?;
        let mut w = Weights::new(origin);
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                if name.ends_with(IGNORED_SUFFIX) {
                    continue; // int64 in PyTorch state_dicts; not needed for inference.
                }
                return Err(ExportError::Dtype {
                    path: origin.to_string(),
                    tensor: name.to_string(),
                    dtype: view.dtype().to_string(),
                });
            }
            // safetensors is little-endian; chunks_exact avoids any alignment assumption.
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            w.insert(name, view.shape().to_vec(), data)?;
        }
        Ok(w)
    }

    /// Reads a `.safetensors` file.
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        if !path.is_file() {
            return Err(ExportError::MissingWeights(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(|source| ExportError::Read { path: path.to_path_buf(), source })?;
        Self::from_safetensors(&bytes, &path.display().to_string())
    }

    /// Checks that every parameter of `graph` is present with its shape and that nothing else
    /// is (an extra tensor usually means the checkpoint belongs to another architecture);
    /// the error lists all problems at once.
    pub fn check(&self, graph: &Graph, arch: &str) -> Result<(), ExportError> {
        let specs = graph.params();
        let mut missing = Vec::new();
        let mut wrong_shape = Vec::new();
        for p in &specs {
            match self.tensors.get(&p.name) {
                None => missing.push(p.name.clone()),
                Some(t) if t.shape != p.shape => wrong_shape.push(ShapeMismatch {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    found: t.shape.clone(),
                }),
                Some(_) => {}
            }
        }
        let expected: std::collections::HashSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !expected.contains(k.as_str()) && !k.ends_with(IGNORED_SUFFIX))
            .cloned()
            .collect();
        if missing.is_empty() && wrong_shape.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(ExportError::WeightsMismatch(Box::new(WeightsMismatch {
            path: self.origin.clone(),
            arch: arch.to_string(),
            missing,
            wrong_shape,
            unexpected,
        })))
    }
}

use std::path::PathBuf;

use thiserror::Error;

use crate::weights::WeightsMismatch;

#[derive(Debug, Error)]
pub enum ModelsError {
    #[error("unknown architecture {0:?}; known: {known}", known = crate::zoo::Arch::names().join(", "))]
    UnknownArch(String),
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("cannot read model config {path}: {source}")]
    ReadConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model config {path} is not valid JSON for this version: {source}")]
    ParseConfig {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("weights file {} not found", .0.display())]
    WeightsNotFound(PathBuf),
    #[error("cannot read {}", path.display())]
    ReadWeights {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file")]
    Safetensors {
        path: String,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: tensor {tensor:?} is {dtype}, expected {expected}")]
    TensorDtype { path: String, tensor: String, dtype: safetensors::Dtype, expected: &'static str },
    #[error("tensor {name:?}: shape {shape:?} needs {expected} values, got {found}")]
    TensorLength { name: String, shape: Vec<usize>, expected: usize, found: usize },
    /// Boxed: the lists would make every `Result` of the crate large.
    #[error("{0}")]
    WeightsMismatch(Box<WeightsMismatch>),
    #[error("cannot serialise the tensors of {origin}")]
    SerializeWeights {
        origin: String,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// Boxed: data's errors are large and rare.
    #[error("cannot write {}", path.display())]
    WriteWeights {
        path: PathBuf,
        #[source]
        source: Box<data::DataError>,
    },
}

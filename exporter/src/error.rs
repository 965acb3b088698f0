use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A tensor whose shape differs from what the architecture expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (expected {:?}, found {:?})", self.name, self.expected, self.found)
    }
}

/// How a checkpoint's tensors differ from the architecture's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsMismatch {
    /// Where the weights came from (the safetensors path, or a description).
    pub path: String,
    pub arch: String,
    pub missing: Vec<String>,
    pub wrong_shape: Vec<ShapeMismatch>,
    pub unexpected: Vec<String>,
}

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mismatch_message(&self.path, &self.arch, &self.missing, &self.wrong_shape, &self.unexpected))
    }
}

/// Everything that can go wrong exporting a checkpoint. Variants name the file involved;
/// underlying errors are kept as `source()`.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("checkpoint directory {} does not exist", .0.display())]
    MissingCheckpoint(PathBuf),

    #[error("{} is not a directory (a checkpoint is a directory holding model.safetensors and config.json)", .0.display())]
    NotADirectory(PathBuf),

    #[error("checkpoint weights {} not found", .0.display())]
    MissingWeights(PathBuf),

    #[error("cannot read {}", path.display())]
    Read {
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

    #[error("{path}: tensor {tensor:?} is {dtype}; checkpoints hold float32 tensors")]
    Dtype { path: String, tensor: String, dtype: String },

    #[error("tensor {name:?}: shape {shape:?} needs {expected} values, got {found}")]
    TensorLength { name: String, shape: Vec<usize>, expected: usize, found: usize },

    /// The checkpoint's `config.json` (missing, unreadable, unknown architecture, invalid).
    #[error("bad checkpoint config")]
    Config(#[from] models::ModelsError),

    /// Boxed: the lists would make every `Result` of the crate large.
    #[error("{0}")]
    WeightsMismatch(Box<WeightsMismatch>),

    #[error("invalid export options: {0}")]
    InvalidOptions(String),

    /// The graph cannot be expressed (a malformed hand-built graph; never a zoo architecture).
    #[error("cannot lower node {node} ({op}): {reason}")]
    Unsupported { node: usize, op: String, reason: String },

    #[error("the ONNX model would be {bytes} bytes; protobuf files are limited to 2 GiB")]
    TooLarge { bytes: usize },

    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: data::DataError,
    },

    #[error("cannot read the self-check images {}", path.display())]
    CheckData {
        path: PathBuf,
        #[source]
        source: data::DataError,
    },

    #[error("the self-check data {} holds no images", .0.display())]
    CheckDataEmpty(PathBuf),

    #[error("self-check: the reference evaluation of the checkpoint failed")]
    Reference(#[source] models::ModelsError),

    #[error("cannot write the self-check's temporary copy of the model {}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A runtime cannot load or run the exported bytes: as bad as wrong logits.
    #[error("self-check failed, nothing was written: the exported model does not run in {backend}")]
    CheckRuntime {
        backend: inference::BackendKind,
        /// Boxed: inference errors are large and rare.
        #[source]
        source: Box<inference::InferError>,
    },

    /// A runtime's logits differ from the reference beyond the tolerance.
    #[error("self-check failed, nothing was written: {0}")]
    CheckFailed(Box<crate::check::CheckReport>),

    #[error("cannot log the model to MLflow run {run_id}")]
    Tracking {
        run_id: String,
        /// Boxed: MLflow errors are large and rare.
        #[source]
        source: Box<tracking::TrackingError>,
    },
}

/// At most this many names per category, so a completely wrong checkpoint gives a readable error.
const MAX_LISTED: usize = 20;

fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(MAX_LISTED).map(ToString::to_string).collect();
    if items.len() > MAX_LISTED {
        s.push(format!("... and {} more", items.len() - MAX_LISTED));
    }
    s.join(", ")
}

fn mismatch_message(
    path: &str,
    arch: &str,
    missing: &[String],
    wrong: &[ShapeMismatch],
    unexpected: &[String],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing tensor(s): {}", missing.len(), list(missing)));
    }
    if !wrong.is_empty() {
        parts.push(format!("{} tensor(s) with the wrong shape: {}", wrong.len(), list(wrong)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected tensor(s): {}", unexpected.len(), list(unexpected)));
    }
    format!("weights {path} do not match architecture {arch}: {}", parts.join("; "))
}

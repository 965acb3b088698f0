use std::path::PathBuf;

use models::ModelsError;
use thiserror::Error;

// The weights contract lives in `models`; re-exported where this crate's API always had them.
pub use models::{ShapeMismatch, WeightsMismatch};

/// Everything that can go wrong exporting a checkpoint. Variants name the file involved;
/// underlying errors are kept as `source()`.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("checkpoint directory {} does not exist", .0.display())]
    MissingCheckpoint(PathBuf),

    #[error("{} is not a directory (a checkpoint is a directory holding model.safetensors and config.json)", .0.display())]
    NotADirectory(PathBuf),

    #[error("{path} is not a valid safetensors file")]
    Safetensors {
        path: String,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// The checkpoint's `config.json` (missing, unreadable, unknown architecture, invalid).
    #[error("bad checkpoint config")]
    Config(#[source] ModelsError),

    /// The checkpoint's weights file cannot be read (missing, unreadable, not float32).
    #[error(transparent)]
    Weights(ModelsError),

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

/// Sorts the errors of `models` into the variants callers match on: the weights' own
/// problems, and everything else as the checkpoint's config.
impl From<ModelsError> for ExportError {
    fn from(e: ModelsError) -> Self {
        match e {
            ModelsError::WeightsMismatch(m) => ExportError::WeightsMismatch(m),
            ModelsError::Safetensors { path, source } => ExportError::Safetensors { path, source },
            ModelsError::WeightsNotFound(_)
            | ModelsError::ReadWeights { .. }
            | ModelsError::TensorDtype { .. }
            | ModelsError::TensorLength { .. }
            | ModelsError::SerializeWeights { .. }
            | ModelsError::WriteWeights { .. } => ExportError::Weights(e),
            ModelsError::UnknownArch(_)
            | ModelsError::InvalidConfig(_)
            | ModelsError::ReadConfig { .. }
            | ModelsError::ParseConfig { .. } => ExportError::Config(e),
        }
    }
}

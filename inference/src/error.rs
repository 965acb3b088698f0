//! The one error type of the crate.

use std::path::PathBuf;

use crate::BackendKind;

/// A boxed underlying error (tract reports `anyhow` errors, ort its own type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong loading or running a model.
///
/// Every variant about a model names its file, so a user with five ensemble members
/// knows which one is broken. Underlying errors are kept as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The model file does not exist.
    #[error("{}: no such model file", path.display())]
    ModelNotFound {
        /// The path that was looked for.
        path: PathBuf,
    },

    /// The model file exists but could not be read.
    #[error("{}: cannot read model file", path.display())]
    ModelRead {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a loadable ONNX model (truncated, not protobuf, unsupported op...).
    #[error("{}: not a valid ONNX model ({backend} backend)", path.display())]
    InvalidModel {
        /// The model file.
        path: PathBuf,
        /// The backend that tried to load it.
        backend: BackendKind,
        /// What the backend reported.
        #[source]
        source: BoxError,
    },

    /// The model loads but breaks the pipeline's ONNX contract (`input` `[N,1,28,28]`
    /// float32 with a dynamic batch, `logits` `[N,classes]`).
    #[error("{}: {message}", path.display())]
    Contract {
        /// The model file.
        path: PathBuf,
        /// What is wrong, with the shape found and the shape expected.
        message: String,
    },

    /// ONNX Runtime's shared library could not be found or loaded.
    #[error(
        "ONNX Runtime is unavailable: {reason}; tried: {}. Run scripts/setup.sh to install it \
         into .venv, set ORT_DYLIB_PATH to a libonnxruntime.so (>= 1.{min_minor}), or use \
         --backend tract",
        fmt_paths(tried),
        min_minor = crate::ORT_MIN_MINOR
    )]
    OrtUnavailable {
        /// Every library path that was tried, in order.
        tried: Vec<PathBuf>,
        /// Why the last one failed (not found, dlopen error, too old, ...).
        reason: String,
    },

    /// The CUDA execution provider could not be registered (`--backend ort-cuda` never
    /// falls back to the CPU silently).
    #[error(
        "{}: the CUDA execution provider is unavailable{} (ONNX Runtime from {}){hint}",
        path.display(),
        missing_hint(missing),
        library.display()
    )]
    CudaUnavailable {
        /// The model being loaded.
        path: PathBuf,
        /// The libonnxruntime in use.
        library: PathBuf,
        /// The shared library ONNX Runtime said it could not open, if it said.
        missing: Option<String>,
        /// Advice, e.g. that this ONNX Runtime build has no CUDA at all (may be empty).
        hint: String,
        /// ONNX Runtime's error.
        #[source]
        source: BoxError,
    },

    /// The backend was left out of this build (cargo feature `ort` off).
    #[error("the {backend} backend is not compiled into this build (enable the `ort` cargo feature)")]
    BackendNotCompiled {
        /// The backend asked for.
        backend: BackendKind,
    },

    /// `run` was given an input whose length is not `n * 784`.
    #[error("input has {found} floats, expected {expected} for a batch of {n} 28x28 images")]
    InputSize {
        /// Batch size given.
        n: usize,
        /// `n * 784`.
        expected: usize,
        /// Length of the slice given.
        found: usize,
    },

    /// The backend failed while running a batch.
    #[error("{}: inference failed ({backend} backend)", path.display())]
    Run {
        /// The model file.
        path: PathBuf,
        /// The backend.
        backend: BackendKind,
        /// What the backend reported.
        #[source]
        source: BoxError,
    },

    /// The model produced an output of the wrong size for the batch.
    #[error("{}: output has {found} values, expected {expected} (batch {n} x {classes} classes)", path.display())]
    OutputSize {
        /// The model file.
        path: PathBuf,
        /// Batch size.
        n: usize,
        /// Classes the model declared.
        classes: usize,
        /// `n * classes`.
        expected: usize,
        /// Values received.
        found: usize,
    },

    /// Ensemble members disagree on the number of classes (their logits cannot be voted).
    #[error("ensemble members disagree on the number of classes: {0}")]
    ClassMismatch(String),

    /// A `models:/` URI was given but no tracking URI says which registry to ask.
    #[error("{uri}: a registry model URI needs MLFLOW_TRACKING_URI (a tracking server http://host:port, or a file store path)")]
    NoTrackingUri {
        /// The URI given.
        uri: String,
    },

    /// The model registry (or the download of a registered model) failed.
    #[error("{what}")]
    Registry {
        /// What was being done, naming the model and the registry.
        what: String,
        /// Boxed: tracking errors are large and rare.
        #[source]
        source: Box<tracking::TrackingError>,
    },

    /// A model name found neither in the registry nor in the models folders.
    #[error(transparent)]
    MemberNotFound(#[from] Box<crate::MemberNotFound>),

    /// A worker thread panicked (a bug in a backend); reported instead of aborting.
    #[error("a worker thread panicked: {0}")]
    WorkerPanicked(String),
}

fn fmt_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(no candidate paths)".to_string();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn missing_hint(missing: &Option<String>) -> String {
    match missing {
        Some(lib) => format!(" (missing library: {lib})"),
        None => String::new(),
    }
}

/// Turns a panic payload into text for [`InferError::WorkerPanicked`].
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// `error: cause: cause...`: the whole chain in one line (libloading keeps dlerror's text
/// in the source; a server's 500 says what the backend reported).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

//! The one error type of the library.

use std::path::PathBuf;

/// Everything that can go wrong building, running, saving or training a network.
/// File-related variants name the file; underlying errors are kept as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error(transparent)]
    Models(#[from] models::ModelsError),

    #[error(transparent)]
    Data(#[from] data::DataError),

    #[error("MLflow tracking: {0}")]
    Tracking(#[from] tracking::TrackingError),

    /// A libtorch call failed (out of memory, bad shape, CUDA error...); `context` says which.
    #[error("{context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },

    /// The graph cannot be lowered (a malformed graph built by hand).
    #[error("cannot lower the graph: {0}")]
    Graph(String),

    /// A network input of the wrong shape.
    #[error("bad network input: {0}")]
    Input(String),

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint folder that cannot be used: a state file that does not parse, metadata
    /// of another network. (Weights files report through [`models::ModelsError`].)
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A `--pretrained` file that cannot start this network (another architecture, a shape
    /// clash, not safetensors).
    #[error("pretrained weights {}: {message}", path.display())]
    Pretrained { path: PathBuf, message: String },

    /// A `--pretrained` file that cannot be read (missing, not safetensors, not float).
    #[error("pretrained weights: {0}")]
    PretrainedFile(#[source] models::ModelsError),

    /// The training data cannot be used (no labels, too few rows for the split...).
    #[error("{source_name}: {message}")]
    Dataset { source_name: String, message: String },

    /// An option value that cannot work (zero epochs, CUDA asked for but absent...).
    #[error("invalid option: {0}")]
    Config(String),

    /// Training produced a non-finite loss; continuing would only save garbage.
    #[error("epoch {epoch}: the training loss became {value} (diverged); try a lower --lr")]
    Diverged { epoch: usize, value: f64 },

    /// Ctrl-C: training stopped; the last completed epoch can be resumed.
    #[error("interrupted (Ctrl-C); the last completed epoch can be continued with --resume")]
    Interrupted,
}

impl TrainerError {
    /// Wraps a libtorch error with what was being done.
    pub fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> TrainerError {
        let context = context.into();
        move |source| TrainerError::Torch { context, source }
    }
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;

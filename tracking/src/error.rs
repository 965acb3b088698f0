use std::path::PathBuf;

/// Everything that can go wrong while tracking. Variants are coarse on purpose:
/// callers mostly log and abort, but resume logic needs to tell "not found" apart
/// from "broken".
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// Carries the path because a bare `io::Error` ("No such file or directory")
    /// is useless when the store has thousands of small files.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A param/metric/tag key or artifact path MLflow would reject (or that would
    /// escape its folder once used as a file name).
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },

    /// A value MLflow would reject (too long, empty name, non-terminal end status...).
    #[error("invalid {what}: {reason}")]
    InvalidValue { what: String, reason: String },

    /// MLflow params are immutable: a resumed run must log the same values.
    #[error(
        "param {key:?} of run {run_id} was already logged with value {existing:?}; \
         refusing to change it to {new:?} (MLflow params are immutable)"
    )]
    ParamChanged {
        run_id: String,
        key: String,
        existing: String,
        new: String,
    },

    #[error("run {0:?} not found in the tracking store")]
    RunNotFound(String),

    #[error("experiment {0:?} not found in the tracking store")]
    ExperimentNotFound(String),

    /// MLflow refuses to reuse the name of a deleted experiment until it is
    /// restored or purged from `.trash`; so do we.
    #[error(
        "experiment {name:?} (id {id}) is deleted; restore it or purge it from .trash \
         before reusing the name"
    )]
    ExperimentDeleted { name: String, id: String },

    /// The store holds a file we cannot parse (hand-edited, torn write, newer MLflow).
    #[error("malformed {}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    /// A tracking or artifact URI this build cannot serve (e.g. http before the
    /// REST backend exists, or a non-local artifact store).
    #[error("unsupported URI {uri:?}: {reason}")]
    UnsupportedUri { uri: String, reason: String },

    #[error("could not get random bytes for an id: {0}")]
    Random(#[source] getrandom::Error),
}

pub type Result<T, E = TrackingError> = std::result::Result<T, E>;

/// Attaches the path to an io error; used with `map_err(io_err(path))`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrackingError {
    let path = path.into();
    move |source| TrackingError::Io { path, source }
}

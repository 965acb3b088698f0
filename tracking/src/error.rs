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
    InvalidName { kind: &'static str, name: String, reason: String },

    /// A value MLflow would reject (too long, empty name, non-terminal end status...).
    #[error("invalid {what}: {reason}")]
    InvalidValue { what: String, reason: String },

    /// MLflow params are immutable: a resumed run must log the same values.
    #[error(
        "param {key:?} of run {run_id} was already logged with value {existing:?}; \
         refusing to change it to {new:?} (MLflow params are immutable)"
    )]
    ParamChanged { run_id: String, key: String, existing: String, new: String },

    #[error("run {0:?} not found in the tracking store")]
    RunNotFound(String),

    #[error("registered model {0:?} not found in the model registry")]
    RegisteredModelNotFound(String),

    #[error("version {version} of registered model {name:?} not found in the model registry")]
    ModelVersionNotFound { name: String, version: u64 },

    #[error("registered model {0:?} has no versions")]
    NoModelVersions(String),

    #[error("registered model {name:?} has no alias {alias:?}")]
    AliasNotFound { name: String, alias: String },

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

    /// A tracking or artifact URI this build cannot serve (e.g. `https://` without
    /// the `https` feature, or a run whose artifacts the server does not proxy).
    #[error("unsupported URI {uri:?}: {reason}")]
    UnsupportedUri { uri: String, reason: String },

    #[error("could not get random bytes for an id: {0}")]
    Random(#[source] getrandom::Error),

    /// The MLflow server answered with an error status. `error_code` and
    /// `message` come from MLflow's JSON error body (`{"error_code":
    /// "INVALID_PARAMETER_VALUE", "message": ...}`); for a non-JSON body (a proxy's
    /// HTML page) `error_code` is `None` and `message` holds the start of the body.
    #[error(
        "MLflow server returned HTTP {status}{} for {method} {url}: {message}",
        error_code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
    )]
    Http { method: &'static str, url: String, status: u16, error_code: Option<String>, message: String },

    /// No answer from the MLflow server: connection refused or reset, timeout,
    /// DNS failure, connection closed mid-response. Always transient.
    #[error("MLflow server unreachable ({method} {url}): {source}")]
    Unreachable {
        method: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The HTTP request could not be made for a reason retrying will not fix
    /// (malformed URL, TLS not compiled in, TLS handshake refused, body too large).
    #[error("HTTP request {method} {url} failed: {source}")]
    Request {
        method: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A 2xx answer whose body is not what MLflow's REST API promises.
    #[error("unexpected response from {url}: {reason}")]
    BadResponse { url: String, reason: String },

    /// Values buffered while the MLflow server was unreachable could still not be
    /// sent when the deadline of a flush (or of ending a run) passed. They stay
    /// buffered: a later `flush()` can still send them.
    #[error(
        "{pending} value(s) logged while the MLflow server was unreachable are still unsent \
         after retrying for {:.1}s: {source}",
        waited.as_secs_f64()
    )]
    Unsent {
        pending: usize,
        waited: std::time::Duration,
        #[source]
        source: Box<TrackingError>,
    },

    /// Values that were buffered during an outage and that the MLflow server then
    /// refused (4xx) once it was back; reported once, by the next `flush()`/end.
    #[error("the MLflow server rejected {count} buffered value(s) after an outage: {source}")]
    Rejected {
        count: usize,
        #[source]
        source: Box<TrackingError>,
    },
}

impl TrackingError {
    /// True for failures worth retrying later: the server could not be reached,
    /// or it answered 5xx, 429 (too many requests) or 408 (request timeout).
    /// Everything else - 4xx, invalid names, local I/O - is the caller's problem.
    pub fn is_transient(&self) -> bool {
        match self {
            TrackingError::Unreachable { .. } => true,
            TrackingError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            TrackingError::Unsent { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// MLflow's `error_code` (e.g. `RESOURCE_DOES_NOT_EXIST`) of an HTTP error.
    pub fn mlflow_error_code(&self) -> Option<&str> {
        match self {
            TrackingError::Http { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T, E = TrackingError> = std::result::Result<T, E>;

/// Attaches the path to an io error; used with `map_err(io_err(path))`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrackingError {
    let path = path.into();
    move |source| TrackingError::Io { path, source }
}

/// A failed [`data::atomic_write_in`] as a tracking error: I/O errors keep their path.
pub(crate) fn data_err(e: data::DataError) -> TrackingError {
    match e {
        data::DataError::Io { path, source } => TrackingError::Io { path, source },
        other => TrackingError::InvalidValue { what: "file path".into(), reason: other.to_string() },
    }
}

//! MLflow tracking server backend: the REST API 2.0 that `mlflow server` and
//! Databricks expose (`mlflow/protos/service.proto`, served by
//! `mlflow/server/handlers.py`), spoken the way `mlflow.store.tracking.rest_store`
//! speaks it: GET with query parameters, POST with a JSON body, int64 fields as
//! JSON numbers, non-finite doubles as `"NaN"`/`"Infinity"`/`"-Infinity"`.
//!
//! Artifacts go through the server's artifact proxy (`mlflow server
//! --serve-artifacts`, the default since MLflow 2): a run's `artifact_uri` then
//! reads `mlflow-artifacts:/<experiment id>/<run id>/artifacts`, which resolves to
//! `<tracking uri>/api/2.0/mlflow-artifacts/artifacts/<experiment id>/<run id>/artifacts`
//! (`MlflowArtifactsRepository.resolve_uri`); files are uploaded with one `PUT`
//! each. Runs whose artifacts live elsewhere (s3://, a server path with
//! `--no-serve-artifacts`) are refused with [`crate::TrackingError::UnsupportedUri`].
//!
//! Every call is one blocking request without retries; wrap the store in a
//! [`crate::BufferedTracker`] (as [`crate::open_tracker`] does) to ride out a
//! server that goes away during a long training run.
//!
//! One job per file:
//! - `client`: connection settings, the HTTP transport and MLflow's error bodies;
//! - `urls`: tracking and artifact URLs (parsing, joining, percent-encoding);
//! - `wire`: typed serde structs for MLflow's JSON requests and responses;
//! - `tracking`: experiments, runs, params, metrics, tags and artifacts ([`crate::Tracker`]);
//! - `registry`: registered models, versions and aliases ([`crate::ModelRegistry`]).

mod client;
mod registry;
mod tracking;
mod urls;
mod wire;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use client::{Auth, RestOptions};

use crate::error::Result;

/// MLflow's `MAX_METRICS_PER_BATCH`: metrics in one `runs/log-batch` request.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// MLflow's `MAX_PARAMS_TAGS_PER_BATCH`, for params.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's `MAX_PARAMS_TAGS_PER_BATCH`, for tags.
pub const MAX_TAGS_PER_BATCH: usize = 100;

/// An MLflow tracking server reached over HTTP(S). Cloning is cheap and clones
/// share the connection pool.
#[derive(Clone)]
pub struct RestStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `scheme://host:port[/prefix]`, no trailing slash.
    base: String,
    agent: ureq::Agent,
    auth: Auth,
    auth_header: Option<String>,
    staging_dir: PathBuf,
}

impl fmt::Debug for RestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestStore").field("uri", &self.inner.base).field("auth", &self.inner.auth).finish()
    }
}

impl RestStore {
    /// Options from the environment (credentials, timeout); makes no request.
    pub fn new(uri: &str) -> Result<Self> {
        Self::with_options(uri, RestOptions::from_env()?)
    }

    /// `uri` is the tracking URI, `http(s)://host[:port][/path prefix]`. Makes no
    /// request: a server that is down is only noticed by the first call.
    pub fn with_options(uri: &str, opts: RestOptions) -> Result<Self> {
        urls::check_tracking_uri(uri)?;
        let config = ureq::Agent::config_builder()
            // Error statuses carry MLflow's error_code and message: read them.
            .http_status_as_error(false)
            .timeout_global(Some(opts.request_timeout))
            .timeout_connect(Some(opts.connect_timeout))
            .user_agent(concat!("digit-recognizer-tracking/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(RestStore {
            inner: Arc::new(Inner {
                base: uri.trim_end_matches('/').to_string(),
                agent: config.new_agent(),
                auth_header: opts.auth.header(),
                auth: opts.auth,
                staging_dir: opts.staging_dir,
            }),
        })
    }

    /// The tracking URI, without a trailing slash.
    pub fn uri(&self) -> &str {
        &self.inner.base
    }

    /// `GET /health`: Ok once the server answers 200.
    pub fn health(&self) -> Result<()> {
        let url = format!("{}/health", self.inner.base);
        self.get_bytes(&url).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrackingError;

    #[test]
    fn uris_checked_without_network() {
        assert!(RestStore::with_options("http://127.0.0.1:1/", RestOptions::default()).is_ok());
        assert_eq!(RestStore::with_options("http://h:5000/", RestOptions::default()).unwrap().uri(), "http://h:5000");
        for bad in ["ftp://h", "http://", "http://user:pw@h", "http://h/?x=1"] {
            assert!(RestStore::with_options(bad, RestOptions::default()).is_err(), "{bad}");
        }
        #[cfg(not(feature = "https"))]
        assert!(matches!(
            RestStore::with_options("https://h", RestOptions::default()),
            Err(TrackingError::UnsupportedUri { .. })
        ));
    }
}

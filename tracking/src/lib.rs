//! MLflow tracking for the Digit Recognizer pipeline, without Python at run time.
//!
//! The trainer, exporter and inference all record into the same MLflow store so
//! that one run id ties a checkpoint to its params, curves and exported models,
//! and so the stock `mlflow ui` can browse the results. Two backends sit behind
//! the [`Tracker`] trait, which is shaped after MLflow's REST calls (everything
//! keyed by run id):
//!
//! - [`FileStore`] writes MLflow's `./mlruns` layout byte-compatibly;
//! - [`RestStore`] talks to an MLflow tracking server (`MLFLOW_TRACKING_URI=http://host:port`),
//!   uploading artifacts through the server's artifact proxy. [`open_tracker`]
//!   wraps it in a [`BufferedTracker`], so that a server that goes away during a
//!   long training run costs a warning, not the run.
//!
//! ```no_run
//! use tracking::{FileStore, RunStatus, Tracker};
//! let store = FileStore::new("./mlruns")?;
//! let exp = store.get_or_create_experiment("digit-recognizer")?;
//! let run = store.create_run(&exp, "resnet-small", &[])?;
//! run.log_param("lr", 0.001)?;
//! run.log_metric("val_acc", 0.991, 3)?;
//! run.log_artifact("checkpoints/last.safetensors", Some("checkpoints"))?;
//! run.end(RunStatus::Finished)?;
//! # Ok::<(), tracking::TrackingError>(())
//! ```

mod buffered;
pub mod cli;
mod error;
mod file_store;
mod registry;
mod rest;
mod util;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use buffered::{BufferOptions, BufferedTracker, WarnFn};
pub use error::{Result, TrackingError};
pub use file_store::FileStore;
pub use registry::{
    open_registry, validate_alias, validate_model_name, ModelRegistry, ModelUri, ModelVersion, VersionRef,
};
pub use rest::{Auth, RestOptions, RestStore, MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH};
/// `file:` URI (or plain path) -> local path; `None` for other schemes.
pub use util::file_uri_to_path;
pub use validate::{MAX_KEY_LEN, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN};

/// One metric observation as MLflow stores it: `(timestamp ms, value, step)`.
pub type MetricPoint = (i64, f64, i64);

/// MLflow's tag names for the run context; written on `create_run` so the UI
/// shows name, user and source like for a Python run.
pub mod tags {
    pub const RUN_NAME: &str = "mlflow.runName";
    pub const USER: &str = "mlflow.user";
    pub const SOURCE_NAME: &str = "mlflow.source.name";
    pub const SOURCE_TYPE: &str = "mlflow.source.type";
}

/// MLflow's run status. The numeric codes are what the file store persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    /// The protobuf enum value (`mlflow.RunStatus`), as stored in `meta.yaml`.
    pub fn code(self) -> i64 {
        match self {
            RunStatus::Running => 1,
            RunStatus::Scheduled => 2,
            RunStatus::Finished => 3,
            RunStatus::Failed => 4,
            RunStatus::Killed => 5,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => RunStatus::Running,
            2 => RunStatus::Scheduled,
            3 => RunStatus::Finished,
            4 => RunStatus::Failed,
            5 => RunStatus::Killed,
            _ => return None,
        })
    }

    pub fn parse(s: &str) -> Option<Self> {
        [RunStatus::Running, RunStatus::Scheduled, RunStatus::Finished, RunStatus::Failed, RunStatus::Killed]
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Only these may end a run; MLflow's `RunStatus.is_terminated`.
    pub fn is_terminated(self) -> bool {
        matches!(self, RunStatus::Finished | RunStatus::Failed | RunStatus::Killed)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's metadata, re-read from the backend on each request (another
/// process may have ended or resumed the run).
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    pub run_name: String,
    pub user_id: String,
    pub status: RunStatus,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
}

/// A tracking backend. Object safe so that the binaries can pick the backend
/// from a URI at run time (`Arc<dyn Tracker>`); run-scoped calls take the run id
/// like MLflow's REST API does, so a REST client maps onto them one to one.
/// Most code should use the [`RunHandle`] returned by `create_run`/`open_run`.
pub trait Tracker: Send + Sync + fmt::Debug {
    /// Id of the active experiment called `name`, creating it if needed.
    /// Errors if an experiment of that name is deleted, as MLflow does.
    fn get_or_create_experiment(&self, name: &str) -> Result<String>;

    /// Starts a RUNNING run; `run_name` may be empty to take `mlflow.runName`
    /// from `tags` or generate one. Caller tags override the default context tags.
    fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[(String, String)]) -> Result<RunHandle>;

    /// Looks a run up by id in any experiment, so that a resumed trainer or the
    /// exporter can keep logging into the run that produced a checkpoint.
    fn open_run(&self, run_id: &str) -> Result<RunHandle>;

    fn run_info(&self, run_id: &str) -> Result<RunInfo>;

    /// Sets status and end time (`None` clears it, for resuming).
    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()>;

    /// All-or-nothing: every key and value is checked (including immutability
    /// against already logged values) before anything is written.
    fn log_params(&self, run_id: &str, params: &[(&str, &str)]) -> Result<()>;

    fn log_metrics(&self, run_id: &str, metrics: &[(&str, f64)], step: i64, timestamp_ms: i64) -> Result<()>;

    fn set_tags(&self, run_id: &str, tags: &[(&str, &str)]) -> Result<()>;

    /// Returns the artifact's path relative to the run's artifact root.
    fn log_artifact(&self, run_id: &str, local_file: &Path, artifact_subdir: Option<&str>) -> Result<String>;

    /// Returns the artifact's path relative to the run's artifact root.
    fn log_artifact_bytes(
        &self,
        run_id: &str,
        name: &str,
        bytes: &[u8],
        artifact_subdir: Option<&str>,
    ) -> Result<String>;

    /// In logging order; empty if the metric was never logged.
    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>>;

    fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>>;

    fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>>;

    /// Delivers whatever a buffering backend still holds ([`BufferedTracker`]);
    /// a no-op for backends that write through.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Picks a backend from a tracking URI, as `MLFLOW_TRACKING_URI` would: `file:`
/// URIs and plain paths open a [`FileStore`]; `http(s)://` opens a [`RestStore`]
/// (credentials and timeout from [`RestOptions::from_env`]) inside a
/// [`BufferedTracker`] ([`BufferOptions::from_env`]). Makes no request: an
/// unreachable server shows up at the first call.
pub fn open_tracker(uri: &str) -> Result<Arc<dyn Tracker>> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        let rest = RestStore::new(uri)?;
        return Ok(Arc::new(BufferedTracker::new(Arc::new(rest), BufferOptions::from_env()?)));
    }
    Ok(Arc::new(FileStore::from_uri(uri)?))
}

/// A run plus the backend it lives in. Cheap to clone and `Send + Sync`, so a
/// training loop and a checkpoint writer can share it.
#[derive(Clone)]
pub struct RunHandle {
    tracker: Arc<dyn Tracker>,
    run_id: String,
    experiment_id: String,
    run_name: String,
    artifact_dir: PathBuf,
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("run_id", &self.run_id)
            .field("experiment_id", &self.experiment_id)
            .field("run_name", &self.run_name)
            .field("artifact_dir", &self.artifact_dir)
            .field("tracker", &self.tracker)
            .finish()
    }
}

impl RunHandle {
    /// For backends: `artifact_dir` is where this machine can read and write the
    /// run's artifacts (for a remote backend, a local staging folder whose files
    /// reach the server only through `log_artifact(s)`).
    pub fn new(tracker: Arc<dyn Tracker>, info: &RunInfo, artifact_dir: PathBuf) -> Self {
        RunHandle {
            tracker,
            run_id: info.run_id.clone(),
            experiment_id: info.experiment_id.clone(),
            run_name: info.run_name.clone(),
            artifact_dir,
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn experiment_id(&self) -> &str {
        &self.experiment_id
    }

    /// The name at the time the handle was made.
    pub fn run_name(&self) -> &str {
        &self.run_name
    }

    /// The run's local artifacts folder, for code that must write files in place
    /// (prefer `log_artifact*`, which write atomically).
    pub fn artifact_dir(&self) -> PathBuf {
        self.artifact_dir.clone()
    }

    pub fn tracker(&self) -> &Arc<dyn Tracker> {
        &self.tracker
    }

    pub fn log_param(&self, key: &str, value: impl fmt::Display) -> Result<()> {
        let v = value.to_string();
        self.tracker.log_params(&self.run_id, &[(key, v.as_str())])
    }

    pub fn log_params<K: AsRef<str>, V: AsRef<str>>(&self, params: &[(K, V)]) -> Result<()> {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        self.tracker.log_params(&self.run_id, &p)
    }

    /// Timestamped now, like MLflow's `log_metric`.
    pub fn log_metric(&self, key: &str, value: f64, step: i64) -> Result<()> {
        self.tracker.log_metrics(&self.run_id, &[(key, value)], step, util::now_ms())
    }

    /// One timestamp for the whole batch, so an epoch's metrics line up.
    pub fn log_metrics<K: AsRef<str>>(&self, metrics: &[(K, f64)], step: i64) -> Result<()> {
        let m: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        self.tracker.log_metrics(&self.run_id, &m, step, util::now_ms())
    }

    pub fn set_tag(&self, key: &str, value: impl fmt::Display) -> Result<()> {
        let v = value.to_string();
        self.tracker.set_tags(&self.run_id, &[(key, v.as_str())])
    }

    pub fn set_tags<K: AsRef<str>, V: AsRef<str>>(&self, tags: &[(K, V)]) -> Result<()> {
        let t: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        self.tracker.set_tags(&self.run_id, &t)
    }

    /// Copies `local_file` into the run's artifacts (under `artifact_subdir`),
    /// atomically; returns the artifact path, e.g. `checkpoints/last.safetensors`.
    pub fn log_artifact(&self, local_file: impl AsRef<Path>, artifact_subdir: Option<&str>) -> Result<String> {
        self.tracker.log_artifact(&self.run_id, local_file.as_ref(), artifact_subdir)
    }

    pub fn log_artifact_bytes(&self, name: &str, bytes: &[u8], artifact_subdir: Option<&str>) -> Result<String> {
        self.tracker.log_artifact_bytes(&self.run_id, name, bytes, artifact_subdir)
    }

    /// Logs every file under `local_dir` (recursively, in sorted order) below
    /// `artifact_subdir`, keeping the folder structure, like MLflow's
    /// `log_artifacts`; returns the artifact paths. With a remote backend this
    /// is how files written into [`RunHandle::artifact_dir`] reach the server.
    pub fn log_artifacts(&self, local_dir: impl AsRef<Path>, artifact_subdir: Option<&str>) -> Result<Vec<String>> {
        let mut files = Vec::new();
        collect_files(local_dir.as_ref(), "", &mut files)?;
        let mut out = Vec::with_capacity(files.len());
        for (path, rel_dir) in files {
            let sub = match (artifact_subdir.filter(|s| !s.is_empty()), rel_dir.is_empty()) {
                (Some(s), false) => Some(format!("{s}/{rel_dir}")),
                (Some(s), true) => Some(s.to_string()),
                (None, false) => Some(rel_dir),
                (None, true) => None,
            };
            out.push(self.tracker.log_artifact(&self.run_id, &path, sub.as_deref())?);
        }
        Ok(out)
    }

    /// `(timestamp ms, value, step)` in logging order; lets a resumed trainer
    /// find the last step it recorded.
    pub fn metric_history(&self, key: &str) -> Result<Vec<MetricPoint>> {
        self.tracker.metric_history(&self.run_id, key)
    }

    pub fn params(&self) -> Result<BTreeMap<String, String>> {
        self.tracker.params(&self.run_id)
    }

    pub fn tags(&self) -> Result<BTreeMap<String, String>> {
        self.tracker.tags(&self.run_id)
    }

    pub fn info(&self) -> Result<RunInfo> {
        self.tracker.run_info(&self.run_id)
    }

    pub fn status(&self) -> Result<RunStatus> {
        Ok(self.info()?.status)
    }

    /// Delivers values a buffering backend still holds (see [`Tracker::flush`]).
    pub fn flush(&self) -> Result<()> {
        self.tracker.flush()
    }

    /// Marks the run FINISHED, FAILED or KILLED with an end time of now. With a
    /// [`BufferedTracker`], first delivers the values it buffered (waiting up to
    /// its `flush_timeout`) and fails with [`TrackingError::Unsent`] if it cannot.
    pub fn end(&self, status: RunStatus) -> Result<()> {
        if !status.is_terminated() {
            return Err(TrackingError::InvalidValue {
                what: "end status".into(),
                reason: format!("{status} is not terminal; use FINISHED, FAILED or KILLED"),
            });
        }
        self.tracker.update_run(&self.run_id, status, Some(util::now_ms()))
    }

    /// Back to RUNNING with no end time, as `mlflow.start_run(run_id=...)` does
    /// when a run is resumed.
    pub fn resume(&self) -> Result<()> {
        self.tracker.update_run(&self.run_id, RunStatus::Running, None)
    }
}

/// (file, its folder relative to the walk's root) for every file under `dir`.
fn collect_files(dir: &Path, rel: &str, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(error::io_err(dir))?
        .collect::<std::io::Result<_>>()
        .map_err(error::io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().into_string().map_err(|n| TrackingError::InvalidName {
            kind: "artifact file name",
            name: n.to_string_lossy().into_owned(),
            reason: "not UTF-8".into(),
        })?;
        if e.file_type().map_err(error::io_err(&path))?.is_dir() {
            let sub = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            collect_files(&path, &sub, out)?;
        } else {
            out.push((path, rel.to_string()));
        }
    }
    Ok(())
}

//! MLflow's file store (`mlflow/store/tracking/file_store.py`), written so that
//! MLflow 3.x (with `MLFLOW_ALLOW_FILE_STORE=true`) reads our runs and we read
//! theirs:
//!
//! ```text
//! <root>/.trash/                          deleted experiments
//! <root>/<exp id>/meta.yaml               experiment (flat YAML)
//! <root>/<exp id>/<run id>/meta.yaml      run info, status as protobuf int
//! <root>/<exp id>/<run id>/metrics/<key>  "<ts ms> <repr(value)> <step>\n" per point
//! <root>/<exp id>/<run id>/params/<key>   raw value, no newline
//! <root>/<exp id>/<run id>/tags/<key>     raw value, no newline
//! <root>/<exp id>/<run id>/artifacts/     default artifact location
//! ```
//!
//! Keys may contain `/`, which nests folders. MLflow only recognises a run folder
//! holding `metrics/`, `params/` and `artifacts/`, so all three are created.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{io_err, Result, TrackingError};
use crate::util::{self, atomic_copy, atomic_write, file_uri_to_path, now_ms, path_to_file_uri, py_float_repr};
use crate::validate::{self, validate_key, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN};
use crate::yaml::{Doc, Value};
use crate::{tags, MetricPoint, RunHandle, RunInfo, RunStatus, Tracker};

const META: &str = "meta.yaml";
const TRASH: &str = ".trash";
const METRICS: &str = "metrics";
const PARAMS: &str = "params";
const TAGS: &str = "tags";
const ARTIFACTS: &str = "artifacts";
/// The model registry's folder lives next to experiments; never an experiment.
const MODELS: &str = "models";
const DEFAULT_EXPERIMENT_ID: &str = "0";
/// Held while looking up and creating an experiment (see `get_or_create_experiment`).
const CREATE_LOCK: &str = ".create-experiment.lock";
const DEFAULT_EXPERIMENT_NAME: &str = "Default";

/// An MLflow file store rooted at an absolute path. Cloning is cheap and clones
/// share the run-folder cache.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    root_uri: String,
    /// run id -> run folder; saves scanning every experiment on each metric.
    run_dirs: Arc<Mutex<HashMap<String, PathBuf>>>,
}

impl FileStore {
    /// MLflow's default when no tracking URI is set.
    pub const DEFAULT_ROOT: &'static str = "./mlruns";

    /// Opens (creating if needed) the store at `root`, with the `Default`
    /// experiment "0" and `.trash`, like MLflow's `FileStore.__init__`, so that
    /// a store we create looks exactly like one Python created.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = util::abspath(&root.into())?;
        if root.exists() && !root.is_dir() {
            return Err(TrackingError::Io {
                path: root,
                source: std::io::Error::other("tracking root exists and is not a directory"),
            });
        }
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let store =
            FileStore { root_uri: path_to_file_uri(&root), root, run_dirs: Arc::new(Mutex::new(HashMap::new())) };
        let trash = store.root.join(TRASH);
        if !store.root.join(DEFAULT_EXPERIMENT_ID).exists() && !trash.join(DEFAULT_EXPERIMENT_ID).exists() {
            match store.create_experiment_with_id(DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME) {
                // Another process won the race; its meta.yaml is as good as ours.
                Err(TrackingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        fs::create_dir_all(&trash).map_err(io_err(&trash))?;
        Ok(store)
    }

    /// `./mlruns`, resolved against the current directory.
    pub fn open_default() -> Result<Self> {
        Self::new(Self::DEFAULT_ROOT)
    }

    /// Accepts `file:` URIs and plain paths, as `MLFLOW_TRACKING_URI` does.
    pub fn from_uri(uri: &str) -> Result<Self> {
        match file_uri_to_path(uri) {
            Some(p) => Self::new(p),
            None => Err(TrackingError::UnsupportedUri {
                uri: uri.to_string(),
                reason: "the file store needs a local path or file: URI".into(),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `file://` URI MLflow clients would use for this store.
    pub fn uri(&self) -> &str {
        &self.root_uri
    }

    fn create_experiment_with_id(&self, id: &str, name: &str) -> Result<()> {
        let dir = self.root.join(id);
        // create_dir, not create_dir_all: an existing folder means an id clash.
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        let now = now_ms();
        let mut doc = Doc::new();
        doc.set_str("artifact_location", &format!("{}/{id}", self.root_uri));
        doc.set_int("creation_time", now);
        doc.set("effective_trace_archival_retention", Value::Null);
        doc.set_str("experiment_id", id);
        doc.set_int("last_update_time", now);
        doc.set_str("lifecycle_stage", "active");
        doc.set_str("name", name);
        doc.set("trace_location", Value::Null);
        doc.set_str("workspace", "default");
        atomic_write(&dir.join(META), doc.to_yaml().as_bytes(), &dir)
    }

    /// (folder, meta) of every readable experiment, active ones first. Folders
    /// without a valid meta.yaml are skipped, as MLflow skips them with a warning.
    fn experiments(&self) -> Result<Vec<(PathBuf, Doc)>> {
        let mut out = Vec::new();
        for parent in [self.root.clone(), self.root.join(TRASH)] {
            for dir in sorted_subdirs(&parent)? {
                let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
                if parent == self.root && (name == TRASH || name == MODELS) {
                    continue;
                }
                let Ok(doc) = read_meta(&dir) else { continue };
                if doc.get_str("experiment_id") != Some(name.as_str()) {
                    continue;
                }
                out.push((dir, doc));
            }
        }
        Ok(out)
    }

    fn run_dir(&self, run_id: &str) -> Result<PathBuf> {
        validate::validate_run_id(run_id)?;
        if let Some(dir) = self.run_dirs.lock().unwrap_or_else(|e| e.into_inner()).get(run_id) {
            if dir.join(META).is_file() {
                return Ok(dir.clone());
            }
        }
        for (exp_dir, _) in self.experiments()? {
            let dir = exp_dir.join(run_id);
            // The same check as MLflow's `_is_valid_run_directory`.
            if [METRICS, PARAMS, ARTIFACTS].iter().all(|d| dir.join(d).is_dir()) && dir.join(META).is_file() {
                self.remember(run_id, &dir);
                return Ok(dir);
            }
        }
        Err(TrackingError::RunNotFound(run_id.to_string()))
    }

    fn remember(&self, run_id: &str, dir: &Path) {
        self.run_dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id.to_string(), dir.to_path_buf());
    }

    fn read_run_info(&self, run_dir: &Path) -> Result<RunInfo> {
        let doc = read_meta(run_dir)?;
        let meta_path = run_dir.join(META);
        let malformed = |reason: String| TrackingError::Malformed { path: meta_path.clone(), reason };
        let get = |k: &str| doc.get_str(k).map(str::to_string);
        let int = |k: &str| -> Result<Option<i64>> {
            match doc.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let s = v.as_str().unwrap_or_default();
                    s.parse().map(Some).map_err(|_| malformed(format!("{k} is not an integer: {s:?}")))
                }
            }
        };
        let run_id = get("run_id").or_else(|| get("run_uuid")).ok_or_else(|| malformed("no run_id".into()))?;
        let experiment_id = get("experiment_id").ok_or_else(|| malformed("no experiment_id".into()))?;
        // MLflow's own integrity checks: a meta.yaml copied elsewhere (e.g. into
        // an artifacts folder) must not be taken for a run.
        let folder = run_dir.file_name().unwrap_or_default().to_string_lossy();
        let exp_folder = run_dir.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
        if run_id != folder || experiment_id != exp_folder {
            return Err(malformed(format!(
                "run {run_id} / experiment {experiment_id} recorded in a folder named {exp_folder}/{folder}"
            )));
        }
        let status = match doc.get("status") {
            None | Some(Value::Null) => RunStatus::Running,
            Some(v) => {
                let s = v.as_str().unwrap_or_default();
                s.parse::<i64>()
                    .ok()
                    .and_then(RunStatus::from_code)
                    .or_else(|| RunStatus::parse(s))
                    .ok_or_else(|| malformed(format!("unknown status {s:?}")))?
            }
        };
        let mut run_name = get("run_name").unwrap_or_default();
        if run_name.is_empty() {
            run_name = fs::read_to_string(run_dir.join(TAGS).join(tags::RUN_NAME)).unwrap_or_default();
        }
        Ok(RunInfo {
            run_id,
            experiment_id,
            run_name,
            user_id: get("user_id").unwrap_or_default(),
            status,
            start_time: int("start_time")?.unwrap_or(0),
            end_time: int("end_time")?,
            artifact_uri: get("artifact_uri").unwrap_or_default(),
            lifecycle_stage: get("lifecycle_stage").unwrap_or_else(|| "active".into()),
        })
    }

    fn handle(&self, info: &RunInfo, run_dir: &Path) -> Result<RunHandle> {
        let artifact_dir = artifact_dir_of(info, run_dir)?;
        Ok(RunHandle::new(Arc::new(self.clone()), info, artifact_dir))
    }

    fn write_tags(&self, run_dir: &Path, tags: &[(&str, &str)]) -> Result<()> {
        for (k, v) in tags {
            atomic_write(&run_dir.join(TAGS).join(k), v.as_bytes(), run_dir)?;
        }
        Ok(())
    }

    fn rewrite_meta(&self, run_dir: &Path, edit: impl FnOnce(&mut Doc)) -> Result<()> {
        let mut doc = read_meta(run_dir)?;
        edit(&mut doc);
        atomic_write(&run_dir.join(META), doc.to_yaml().as_bytes(), run_dir)
    }
}

impl Tracker for FileStore {
    fn get_or_create_experiment(&self, name: &str) -> Result<String> {
        validate::validate_experiment_name(name)?;
        // Processes that start side by side (an ensemble's members) would otherwise each find no
        // experiment and create one of the same name, as two MLflow clients can. An exclusive
        // lock on a file beside the experiments makes look-up-then-create one step between
        // processes; MLflow lists only folders here, so the file is invisible to it.
        let lock_path = self.root.join(CREATE_LOCK);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.lock() {
            Ok(()) => {}
            // A file system without locks (some network mounts) keeps the old, racy behaviour.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(e) => return Err(io_err(&lock_path)(e)),
        }
        for (dir, doc) in self.experiments()? {
            if doc.get_str("name") != Some(name) {
                continue;
            }
            let id = doc.get_str("experiment_id").unwrap_or_default().to_string();
            let in_trash = dir.parent() != Some(self.root.as_path());
            if in_trash || doc.get_str("lifecycle_stage") == Some("deleted") {
                return Err(TrackingError::ExperimentDeleted { name: name.to_string(), id });
            }
            return Ok(id);
        }
        for _ in 0..8 {
            let id = util::new_experiment_id()?;
            match self.create_experiment_with_id(&id, name) {
                Err(TrackingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(id),
            }
        }
        Err(TrackingError::InvalidValue {
            what: "experiment id".into(),
            reason: "could not find a free random id".into(),
        })
    }

    fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[(String, String)]) -> Result<RunHandle> {
        validate::validate_experiment_id(experiment_id)?;
        let exp_dir = self.root.join(experiment_id);
        let exp = match read_meta(&exp_dir) {
            Ok(doc) if doc.get_str("experiment_id") == Some(experiment_id) => doc,
            _ => return Err(TrackingError::ExperimentNotFound(experiment_id.to_string())),
        };
        if exp.get_str("lifecycle_stage").unwrap_or("active") != "active" {
            return Err(TrackingError::InvalidValue {
                what: format!("experiment {experiment_id}"),
                reason: "runs can only be created in an active experiment".into(),
            });
        }
        validate::check_tags(tags)?;
        let tag_name = tags.iter().rev().find(|(k, _)| k == tags::RUN_NAME).map(|(_, v)| v.as_str());
        if let Some(t) = tag_name {
            if !run_name.is_empty() && t != run_name {
                return Err(TrackingError::InvalidValue {
                    what: "run name".into(),
                    reason: format!("run_name {run_name:?} conflicts with tag {}={t:?}", tags::RUN_NAME),
                });
            }
        }
        let run_name = match (run_name, tag_name) {
            (n, _) if !n.is_empty() => n.to_string(),
            (_, Some(t)) if !t.is_empty() => t.to_string(),
            _ => format!("run-{}", &util::new_run_id()?[..8]),
        };
        validate::validate_value_len("tag", tags::RUN_NAME, &run_name, MAX_TAG_VALUE_LEN)?;

        let exp_artifacts = exp.get_str("artifact_location").unwrap_or_default().trim_end_matches('/').to_string();
        let user = util::current_user();
        let source = util::run_source();
        // Later entries win: caller tags override the context defaults.
        let mut all_tags = util::run_context_tags(&user, &source, tags);
        all_tags.insert(tags::RUN_NAME, &run_name);

        let (run_id, run_dir) = loop {
            let id = util::new_run_id()?;
            let dir = exp_dir.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TrackingError::Io { path: dir, source: e }),
            }
        };
        let info = RunInfo {
            run_id: run_id.clone(),
            experiment_id: experiment_id.to_string(),
            run_name: run_name.clone(),
            user_id: user.clone(),
            status: RunStatus::Running,
            start_time: now_ms(),
            end_time: None,
            artifact_uri: format!("{exp_artifacts}/{run_id}/{ARTIFACTS}"),
            lifecycle_stage: "active".into(),
        };
        let result = (|| {
            let artifact_dir = artifact_dir_of(&info, &run_dir)?;
            for d in [METRICS, PARAMS, ARTIFACTS, TAGS] {
                let p = run_dir.join(d);
                fs::create_dir_all(&p).map_err(io_err(&p))?;
            }
            fs::create_dir_all(&artifact_dir).map_err(io_err(&artifact_dir))?;
            let t: Vec<(&str, &str)> = all_tags.iter().map(|(k, v)| (*k, *v)).collect();
            self.write_tags(&run_dir, &t)?;
            // meta.yaml last: until it exists MLflow ignores the folder.
            let mut doc = Doc::new();
            doc.set_str("artifact_uri", &info.artifact_uri);
            doc.set("end_time", Value::Null);
            doc.set_str("entry_point_name", "");
            doc.set_str("experiment_id", experiment_id);
            doc.set_str("lifecycle_stage", "active");
            doc.set_str("run_id", &run_id);
            doc.set_str("run_name", &run_name);
            doc.set_str("source_name", "");
            doc.set_int("source_type", 4); // SourceType.LOCAL
            doc.set_str("source_version", "");
            doc.set_int("start_time", info.start_time);
            doc.set_int("status", RunStatus::Running.code());
            doc.set("tags", Value::Plain("[]".into()));
            doc.set_str("user_id", &user);
            atomic_write(&run_dir.join(META), doc.to_yaml().as_bytes(), &run_dir)?;
            Ok(artifact_dir)
        })();
        let artifact_dir = match result {
            Ok(a) => a,
            Err(e) => {
                // Leave no half-made run behind for MLflow to trip over.
                let _ = fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        self.remember(&run_id, &run_dir);
        Ok(RunHandle::new(Arc::new(self.clone()), &info, artifact_dir))
    }

    fn open_run(&self, run_id: &str) -> Result<RunHandle> {
        let dir = self.run_dir(run_id)?;
        let info = self.read_run_info(&dir)?;
        self.handle(&info, &dir)
    }

    fn run_info(&self, run_id: &str) -> Result<RunInfo> {
        let dir = self.run_dir(run_id)?;
        self.read_run_info(&dir)
    }

    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        self.rewrite_meta(&dir, |doc| {
            doc.set_int("status", status.code());
            match end_time {
                Some(t) => doc.set_int("end_time", t),
                None => doc.set("end_time", Value::Null),
            }
        })
    }

    fn log_params(&self, run_id: &str, params: &[(&str, &str)]) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        let mut seen = std::collections::HashSet::new();
        let mut to_write = Vec::new();
        for &(k, v) in params {
            validate_key("param", k)?;
            validate::validate_value_len("param", k, v, MAX_PARAM_VALUE_LEN)?;
            if !seen.insert(k) {
                return Err(TrackingError::InvalidValue {
                    what: format!("param {k:?}"),
                    reason: "logged twice in one batch".into(),
                });
            }
            let path = dir.join(PARAMS).join(k);
            match fs::read(&path) {
                Ok(existing) if existing == v.as_bytes() => {}
                Ok(existing) => {
                    return Err(TrackingError::ParamChanged {
                        run_id: run_id.to_string(),
                        key: k.to_string(),
                        existing: String::from_utf8_lossy(&existing).into_owned(),
                        new: v.to_string(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => to_write.push((path, v)),
                Err(e) => return Err(TrackingError::Io { path, source: e }),
            }
        }
        for (path, v) in to_write {
            atomic_write(&path, v.as_bytes(), &dir)?;
        }
        Ok(())
    }

    fn log_metrics(&self, run_id: &str, metrics: &[(&str, f64)], step: i64, timestamp_ms: i64) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        validate::check_metrics(metrics, timestamp_ms)?;
        for &(k, v) in metrics {
            let path = dir.join(METRICS).join(k);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            // Appends, like MLflow: one write per line keeps concurrent appenders
            // (O_APPEND) from interleaving within a line.
            let line = format!("{timestamp_ms} {} {step}\n", py_float_repr(v));
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(io_err(&path))?;
        }
        Ok(())
    }

    fn set_tags(&self, run_id: &str, tags: &[(&str, &str)]) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        validate::check_tags(tags)?;
        self.write_tags(&dir, tags)?;
        // MLflow keeps meta.yaml's run_name in step with the runName tag.
        if let Some(&(_, name)) = tags.iter().rev().find(|(k, _)| *k == tags::RUN_NAME) {
            self.rewrite_meta(&dir, |doc| doc.set_str("run_name", name))?;
        }
        Ok(())
    }

    fn log_artifact(&self, run_id: &str, local_file: &Path, artifact_subdir: Option<&str>) -> Result<String> {
        let name = util::artifact_file_name(local_file)?;
        let (dest, rel, tmp_dir) = self.artifact_dest(run_id, name, artifact_subdir)?;
        atomic_copy(local_file, &dest, &tmp_dir)?;
        Ok(rel)
    }

    fn log_artifact_bytes(
        &self,
        run_id: &str,
        name: &str,
        bytes: &[u8],
        artifact_subdir: Option<&str>,
    ) -> Result<String> {
        let (dest, rel, tmp_dir) = self.artifact_dest(run_id, name, artifact_subdir)?;
        atomic_write(&dest, bytes, &tmp_dir)?;
        Ok(rel)
    }

    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>> {
        validate_key("metric", key)?;
        let dir = self.run_dir(run_id)?;
        let path = dir.join(METRICS).join(key);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrackingError::Io { path, source: e }),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                parse_metric_line(l).ok_or_else(|| TrackingError::Malformed {
                    path: path.clone(),
                    reason: format!("line {}: {l:?} is not `timestamp value [step]`", n + 1),
                })
            })
            .collect()
    }

    fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        let dir = self.run_dir(run_id)?;
        read_key_files(&dir.join(PARAMS))
    }

    fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        let dir = self.run_dir(run_id)?;
        read_key_files(&dir.join(TAGS))
    }
}

impl FileStore {
    /// (destination, artifact path, temp folder). The temp folder is the
    /// artifact root's parent (the run folder by default), so an interrupted copy
    /// never shows up in MLflow's artifact listing.
    fn artifact_dest(&self, run_id: &str, name: &str, subdir: Option<&str>) -> Result<(PathBuf, String, PathBuf)> {
        let rel = validate::artifact_rel_path(name, subdir)?;
        let dir = self.run_dir(run_id)?;
        let info = self.read_run_info(&dir)?;
        let root = artifact_dir_of(&info, &dir)?;
        let tmp_dir = root.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        Ok((root.join(&rel), rel, tmp_dir))
    }
}

/// The run's artifact folder from its recorded URI (MLflow writes a `file://`
/// URI or a plain path depending on how the store was opened); remote artifact
/// stores are refused rather than silently written next to the run.
fn artifact_dir_of(info: &RunInfo, run_dir: &Path) -> Result<PathBuf> {
    if info.artifact_uri.is_empty() {
        return Ok(run_dir.join(ARTIFACTS));
    }
    file_uri_to_path(&info.artifact_uri).ok_or_else(|| TrackingError::UnsupportedUri {
        uri: info.artifact_uri.clone(),
        reason: "the run's artifacts are not on a local file system".into(),
    })
}

/// MLflow's `_get_metric_from_line`: 2, 3 or 5 space-separated fields.
fn parse_metric_line(line: &str) -> Option<MetricPoint> {
    let parts: Vec<&str> = line.trim().split(' ').collect();
    if !matches!(parts.len(), 2 | 3 | 5) {
        return None;
    }
    let ts = parts[0].parse().ok()?;
    let value = parts[1].parse().ok()?;
    let step = if parts.len() >= 3 { parts[2].parse().ok()? } else { 0 };
    Some((ts, value, step))
}

fn read_meta(dir: &Path) -> Result<Doc> {
    let path = dir.join(META);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    Doc::parse(&text).map_err(|reason| TrackingError::Malformed { path, reason })
}

fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrackingError::Io { path: dir.into(), source: e }),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(entry.path()))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Params and tags: every file under `dir`, recursively, keyed by its
/// `/`-separated relative path (keys with `/` are nested folders).
fn read_key_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(TrackingError::Io { path: d, source: e }),
        };
        for entry in rd {
            let entry = entry.map_err(io_err(&d))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                stack.push((path, key));
            } else {
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                let value = String::from_utf8(bytes)
                    .map_err(|_| TrackingError::Malformed { path: path.clone(), reason: "not UTF-8".into() })?;
                out.insert(key, value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines() {
        assert_eq!(parse_metric_line("17 0.5 3"), Some((17, 0.5, 3)));
        assert_eq!(parse_metric_line("17 0.5"), Some((17, 0.5, 0)));
        assert_eq!(parse_metric_line("17 1e-20 2 ds abc\n"), Some((17, 1e-20, 2)));
        assert!(parse_metric_line("17 nan 2").unwrap().1.is_nan());
        assert_eq!(parse_metric_line("17 -inf 2").unwrap().1, f64::NEG_INFINITY);
        assert_eq!(parse_metric_line("17 0.5 3 x"), None);
        assert_eq!(parse_metric_line("17 x 3"), None);
    }
}

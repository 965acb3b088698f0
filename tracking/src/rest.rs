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
//! `--no-serve-artifacts`) are refused with [`TrackingError::UnsupportedUri`].
//!
//! Every call is one blocking request without retries; wrap the store in a
//! [`crate::BufferedTracker`] (as [`crate::open_tracker`] does) to ride out a
//! server that goes away during a long training run.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::{io_err, Result, TrackingError};
use crate::util::{self, now_ms};
use crate::validate::{self, validate_key, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN};
use crate::{tags, MetricPoint, RunHandle, RunInfo, RunStatus, Tracker};

/// MLflow's `MAX_METRICS_PER_BATCH`: metrics in one `runs/log-batch` request.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// MLflow's `MAX_PARAMS_TAGS_PER_BATCH`, for params.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's `MAX_PARAMS_TAGS_PER_BATCH`, for tags.
pub const MAX_TAGS_PER_BATCH: usize = 100;
/// MLflow refuses `log-batch` bodies over 1 MB (`MAX_BATCH_LOG_REQUEST_SIZE`);
/// chunks are cut below that, leaving room for the envelope.
const MAX_BATCH_BYTES: usize = 900_000;
/// Page size for `metrics/get-history`.
const HISTORY_PAGE_SIZE: usize = 25_000;
/// Largest response body read (artifact downloads, long histories).
const MAX_RESPONSE_BYTES: u64 = 4 << 30;
const API: &str = "/api/2.0/mlflow";
const ARTIFACTS_API: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// How requests authenticate, as MLflow's `MlflowHostCreds`.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer <token>` (`MLFLOW_TRACKING_TOKEN`).
    Bearer(String),
    /// HTTP basic auth (`MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD`).
    Basic { username: String, password: String },
}

impl fmt::Debug for Auth {
    // Never print secrets, not even in a debug dump of the tracker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
        }
    }
}

impl Auth {
    /// MLflow's precedence: a token wins over username/password. Errors when only
    /// one of username and password is set, as MLflow does.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(token) = var("MLFLOW_TRACKING_TOKEN") {
            return Ok(Auth::Bearer(token));
        }
        match (var("MLFLOW_TRACKING_USERNAME"), var("MLFLOW_TRACKING_PASSWORD")) {
            (Some(username), Some(password)) => Ok(Auth::Basic { username, password }),
            (None, None) => Ok(Auth::None),
            _ => Err(TrackingError::InvalidValue {
                what: "MLflow credentials".into(),
                reason: "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set together".into(),
            }),
        }
    }

    fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Bearer(t) => Some(format!("Bearer {t}")),
            Auth::Basic { username, password } => {
                Some(format!("Basic {}", base64(format!("{username}:{password}").as_bytes())))
            }
        }
    }
}

/// Connection settings of a [`RestStore`].
#[derive(Debug, Clone)]
pub struct RestOptions {
    pub auth: Auth,
    /// Limit for one whole request (connect, send, answer, body). MLflow's
    /// `MLFLOW_HTTP_REQUEST_TIMEOUT` (seconds), default 120.
    pub request_timeout: Duration,
    /// Limit for opening the connection; short, so that a dead host is noticed
    /// quickly. Default 10 s.
    pub connect_timeout: Duration,
    /// Parent of the local folders that [`RunHandle::artifact_dir`] returns for
    /// runs of this store (`<staging_dir>/<run id>/artifacts`). Files written
    /// there are not uploaded by themselves: pass them to `log_artifact(s)`.
    pub staging_dir: PathBuf,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            auth: Auth::None,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            staging_dir: std::env::temp_dir().join("mlflow-artifact-staging"),
        }
    }
}

impl RestOptions {
    /// Defaults plus `MLFLOW_TRACKING_TOKEN` / `MLFLOW_TRACKING_USERNAME` +
    /// `MLFLOW_TRACKING_PASSWORD` and `MLFLOW_HTTP_REQUEST_TIMEOUT`.
    pub fn from_env() -> Result<Self> {
        let mut opts = RestOptions {
            auth: Auth::from_env()?,
            ..RestOptions::default()
        };
        if let Ok(v) = std::env::var("MLFLOW_HTTP_REQUEST_TIMEOUT") {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .ok_or_else(|| TrackingError::InvalidValue {
                    what: "MLFLOW_HTTP_REQUEST_TIMEOUT".into(),
                    reason: format!("{v:?} is not a positive number of seconds"),
                })?;
            opts.request_timeout = Duration::from_secs_f64(secs);
        }
        Ok(opts)
    }
}

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
        f.debug_struct("RestStore")
            .field("uri", &self.inner.base)
            .field("auth", &self.inner.auth)
            .finish()
    }
}

/// A request body.
enum Body<'a> {
    Empty,
    Json(&'a Value),
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl RestStore {
    /// Options from the environment (credentials, timeout); makes no request.
    pub fn new(uri: &str) -> Result<Self> {
        Self::with_options(uri, RestOptions::from_env()?)
    }

    /// `uri` is the tracking URI, `http(s)://host[:port][/path prefix]`. Makes no
    /// request: a server that is down is only noticed by the first call.
    pub fn with_options(uri: &str, opts: RestOptions) -> Result<Self> {
        let unsupported = |reason: &str| TrackingError::UnsupportedUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = if let Some(r) = uri.strip_prefix("http://") {
            r
        } else if let Some(r) = uri.strip_prefix("https://") {
            if !cfg!(feature = "https") {
                return Err(unsupported(
                    "this build has no TLS support; enable the `https` feature of the `tracking` crate",
                ));
            }
            r
        } else {
            return Err(unsupported("the REST backend needs an http:// or https:// URI"));
        };
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || host.contains('@') || rest.contains(['?', '#']) {
            return Err(unsupported(
                "expected scheme://host[:port][/prefix] without credentials, query or fragment \
                 (credentials go in MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)",
            ));
        }
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
        self.send("GET", &url, &[], Body::Empty).map(|_| ())
    }

    /// Downloads one artifact file of a run (through the artifact proxy), e.g.
    /// `checkpoints/last.safetensors`.
    pub fn download_artifact(&self, run_id: &str, path: &str) -> Result<Vec<u8>> {
        validate::validate_artifact_path(path)?;
        let url = format!("{}/{}", self.artifact_root_url(run_id)?, encode_path(path));
        self.send("GET", &url, &[], Body::Empty)
    }

    /// `GET url` (a full URL, e.g. below an artifact root): the body on 2xx.
    pub(crate) fn get_bytes(&self, url: &str) -> Result<Vec<u8>> {
        self.send("GET", url, &[], Body::Empty)
    }

    /// One request; the response body on 2xx, [`TrackingError::Http`] otherwise.
    fn send(&self, method: &'static str, url: &str, query: &[(&str, &str)], body: Body<'_>) -> Result<Vec<u8>> {
        let agent = &self.inner.agent;
        let auth = self.inner.auth_header.as_deref();
        macro_rules! prepare {
            ($rb:expr) => {{
                let mut rb = $rb;
                for (k, v) in query {
                    rb = rb.query(*k, *v);
                }
                if let Some(a) = auth {
                    rb = rb.header("Authorization", a);
                }
                rb
            }};
        }
        let res = match (method, body) {
            ("GET", Body::Empty) => prepare!(agent.get(url)).call(),
            (_, body) => {
                let rb = match method {
                    "POST" => prepare!(agent.post(url)),
                    "PUT" => prepare!(agent.put(url)),
                    other => unreachable!("unsupported method {other}"),
                };
                match body {
                    Body::Empty => rb.send_empty(),
                    Body::Json(v) => rb.send_json(v),
                    Body::Bytes(b) => rb.content_type("application/octet-stream").send(b),
                    Body::File(p) => {
                        let f = std::fs::File::open(p).map_err(io_err(p))?;
                        rb.content_type("application/octet-stream").send(f)
                    }
                }
            }
        };
        let mut resp = res.map_err(|e| transport_error(method, url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| transport_error(method, url, e))?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let (error_code, message) = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) if m.contains_key("error_code") || m.contains_key("message") => (
                m.get("error_code").and_then(Value::as_str).map(str::to_string),
                m.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
            ),
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                let mut msg: String = text.chars().take(500).collect();
                if msg.len() < text.len() {
                    msg.push_str("...");
                }
                if msg.is_empty() {
                    msg = "(empty body)".into();
                }
                (None, msg)
            }
        };
        Err(TrackingError::Http {
            method,
            url: url.to_string(),
            status,
            error_code,
            message,
        })
    }

    fn call(
        &self,
        method: &'static str,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}{API}/{endpoint}", self.inner.base);
        let bytes = self.send(method, &url, query, body.map_or(Body::Empty, Body::Json))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Map::new()));
        }
        serde_json::from_slice(&bytes).map_err(|e| TrackingError::BadResponse {
            url,
            reason: format!("not JSON: {e}"),
        })
    }

    pub(crate) fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value> {
        self.call("GET", endpoint, query, None)
    }

    pub(crate) fn post(&self, endpoint: &str, body: &Value) -> Result<Value> {
        self.call("POST", endpoint, &[], Some(body))
    }

    fn get_run(&self, run_id: &str) -> Result<Value> {
        validate::validate_run_id(run_id)?;
        match self.get("runs/get", &[("run_id", run_id)]) {
            Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                Err(TrackingError::RunNotFound(run_id.to_string()))
            }
            Err(e) => Err(e),
            Ok(mut v) => Ok(v.get_mut("run").map(Value::take).unwrap_or(Value::Null)),
        }
    }

    fn handle(&self, info: &RunInfo) -> RunHandle {
        let staging = self.inner.staging_dir.join(&info.run_id).join("artifacts");
        RunHandle::new(Arc::new(self.clone()), info, staging)
    }

    /// URL of the run's artifact root in the server's artifact proxy.
    fn artifact_root_url(&self, run_id: &str) -> Result<String> {
        let run = self.get_run(run_id)?;
        let info = parse_run_info(&run["info"], &self.runs_get_url())?;
        resolve_artifact_uri(&info.artifact_uri, &self.inner.base)
    }

    fn runs_get_url(&self) -> String {
        format!("{}{API}/runs/get", self.inner.base)
    }

    /// One `runs/log-batch` request; callers keep within MLflow's limits.
    fn log_batch(&self, run_id: &str, metrics: &[Value], params: &[Value], tags: &[Value]) -> Result<()> {
        let mut body = Map::new();
        body.insert("run_id".into(), run_id.into());
        for (k, v) in [("metrics", metrics), ("params", params), ("tags", tags)] {
            if !v.is_empty() {
                body.insert(k.into(), Value::Array(v.to_vec()));
            }
        }
        self.post("runs/log-batch", &Value::Object(body)).map(|_| ())
    }

    fn put_artifact(&self, run_id: &str, rel: &str, body: Body<'_>) -> Result<()> {
        let url = format!("{}/{}", self.artifact_root_url(run_id)?, encode_path(rel));
        self.send("PUT", &url, &[], body).map(|_| ())
    }
}

impl Tracker for RestStore {
    fn get_or_create_experiment(&self, name: &str) -> Result<String> {
        validate::validate_experiment_name(name)?;
        // Two attempts: another client may create the experiment between our
        // lookup and our create (RESOURCE_ALREADY_EXISTS), then the lookup wins.
        for attempt in 0..2 {
            match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
                Ok(v) => {
                    let exp = &v["experiment"];
                    let id = str_field(exp, "experiment_id")
                        .ok_or_else(|| TrackingError::BadResponse {
                            url: format!("{}{API}/experiments/get-by-name", self.inner.base),
                            reason: format!("no experiment_id in {v}"),
                        })?
                        .to_string();
                    if str_field(exp, "lifecycle_stage") == Some("deleted") {
                        return Err(TrackingError::ExperimentDeleted {
                            name: name.to_string(),
                            id,
                        });
                    }
                    return Ok(id);
                }
                Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {}
                Err(e) => return Err(e),
            }
            match self.post("experiments/create", &json!({ "name": name })) {
                Ok(v) => {
                    return str_field(&v, "experiment_id").map(str::to_string).ok_or_else(|| {
                        TrackingError::BadResponse {
                            url: format!("{}{API}/experiments/create", self.inner.base),
                            reason: format!("no experiment_id in {v}"),
                        }
                    })
                }
                Err(e) if attempt == 0 && e.mlflow_error_code() == Some("RESOURCE_ALREADY_EXISTS") => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt always returns")
    }

    fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[(String, String)]) -> Result<RunHandle> {
        validate::validate_experiment_id(experiment_id)?;
        for (k, v) in tags {
            validate_key("tag", k)?;
            validate::validate_value_len("tag", k, v, MAX_TAG_VALUE_LEN)?;
        }
        let tag_name = tags
            .iter()
            .rev()
            .find(|(k, _)| k == tags::RUN_NAME)
            .map(|(_, v)| v.as_str());
        if let Some(t) = tag_name {
            if !run_name.is_empty() && t != run_name {
                return Err(TrackingError::InvalidValue {
                    what: "run name".into(),
                    reason: format!("run_name {run_name:?} conflicts with tag {}={t:?}", tags::RUN_NAME),
                });
            }
        }
        // With neither, the server makes up one of its names ("bold-cat-123").
        let run_name = if run_name.is_empty() {
            tag_name.unwrap_or("")
        } else {
            run_name
        };
        validate::validate_value_len("tag", tags::RUN_NAME, run_name, MAX_TAG_VALUE_LEN)?;

        let user = util::current_user();
        let source = std::env::args().next().unwrap_or_else(|| "<console>".into());
        let mut all_tags: BTreeMap<&str, &str> = BTreeMap::new();
        all_tags.insert(tags::USER, &user);
        all_tags.insert(tags::SOURCE_NAME, &source);
        all_tags.insert(tags::SOURCE_TYPE, "LOCAL");
        for (k, v) in tags {
            all_tags.insert(k, v);
        }
        if !run_name.is_empty() {
            all_tags.insert(tags::RUN_NAME, run_name);
        }
        let mut body = json!({
            "experiment_id": experiment_id,
            "user_id": user,
            "start_time": now_ms(),
            "tags": all_tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        });
        if !run_name.is_empty() {
            body["run_name"] = run_name.into();
        }
        let v = match self.post("runs/create", &body) {
            Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                return Err(TrackingError::ExperimentNotFound(experiment_id.to_string()))
            }
            other => other?,
        };
        let info = parse_run_info(&v["run"]["info"], &format!("{}{API}/runs/create", self.inner.base))?;
        Ok(self.handle(&info))
    }

    fn open_run(&self, run_id: &str) -> Result<RunHandle> {
        let info = self.run_info(run_id)?;
        Ok(self.handle(&info))
    }

    fn run_info(&self, run_id: &str) -> Result<RunInfo> {
        let run = self.get_run(run_id)?;
        parse_run_info(&run["info"], &self.runs_get_url())
    }

    /// `end_time: None` leaves the server's end time as it is: MLflow's
    /// `runs/update` cannot clear it (a resumed run keeps its old end time until
    /// it ends again, exactly as with the Python client).
    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        validate::validate_run_id(run_id)?;
        let mut body = json!({ "run_id": run_id, "run_uuid": run_id, "status": status.as_str() });
        if let Some(t) = end_time {
            body["end_time"] = t.into();
        }
        match self.post("runs/update", &body) {
            Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                Err(TrackingError::RunNotFound(run_id.to_string()))
            }
            other => other.map(|_| ()),
        }
    }

    /// All-or-nothing per request of up to 100 params (the server checks
    /// immutability for the whole batch before writing any).
    fn log_params(&self, run_id: &str, params: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_params(params)?;
        let items: Vec<Value> = params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        for chunk in chunk_values(items, MAX_PARAMS_PER_BATCH) {
            match self.log_batch(run_id, &[], &chunk, &[]) {
                Err(e @ TrackingError::Http { status: 400, .. }) => {
                    return Err(self.explain_param_error(run_id, params, e))
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn log_metrics(&self, run_id: &str, metrics: &[(&str, f64)], step: i64, timestamp_ms: i64) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_metrics(metrics, timestamp_ms)?;
        let items: Vec<Value> = metrics
            .iter()
            .map(|&(k, v)| json!({"key": k, "value": float_to_json(v), "timestamp": timestamp_ms, "step": step}))
            .collect();
        for chunk in chunk_values(items, MAX_METRICS_PER_BATCH) {
            self.log_batch(run_id, &chunk, &[], &[])?;
        }
        Ok(())
    }

    /// Setting `mlflow.runName` renames the run, as on the server side.
    fn set_tags(&self, run_id: &str, tags: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_tags(tags)?;
        let items: Vec<Value> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        for chunk in chunk_values(items, MAX_TAGS_PER_BATCH) {
            self.log_batch(run_id, &[], &[], &chunk)?;
        }
        Ok(())
    }

    fn log_artifact(&self, run_id: &str, local_file: &Path, artifact_subdir: Option<&str>) -> Result<String> {
        let name = util::artifact_file_name(local_file)?;
        let rel = artifact_rel_path(name, artifact_subdir)?;
        self.put_artifact(run_id, &rel, Body::File(local_file))?;
        Ok(rel)
    }

    fn log_artifact_bytes(
        &self,
        run_id: &str,
        name: &str,
        bytes: &[u8],
        artifact_subdir: Option<&str>,
    ) -> Result<String> {
        let rel = artifact_rel_path(name, artifact_subdir)?;
        self.put_artifact(run_id, &rel, Body::Bytes(bytes))?;
        Ok(rel)
    }

    /// In the server's order: by timestamp, then step, then value.
    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>> {
        validate::validate_run_id(run_id)?;
        validate_key("metric", key)?;
        let url = format!("{}{API}/metrics/get-history", self.inner.base);
        let page_size = HISTORY_PAGE_SIZE.to_string();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", page_size.as_str()),
            ];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let v = match self.get("metrics/get-history", &query) {
                Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                    return Err(TrackingError::RunNotFound(run_id.to_string()))
                }
                other => other?,
            };
            for m in v
                .get("metrics")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let bad = || TrackingError::BadResponse {
                    url: url.clone(),
                    reason: format!("malformed metric {m}"),
                };
                let ts = m.get("timestamp").and_then(json_i64).ok_or_else(bad)?;
                let value = m.get("value").and_then(json_f64).ok_or_else(bad)?;
                let step = match m.get("step") {
                    None | Some(Value::Null) => 0,
                    Some(s) => json_i64(s).ok_or_else(bad)?,
                };
                out.push((ts, value, step));
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && t != token => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        let run = self.get_run(run_id)?;
        Ok(key_values(&run["data"]["params"]))
    }

    fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        let run = self.get_run(run_id)?;
        Ok(key_values(&run["data"]["tags"]))
    }
}

impl RestStore {
    /// The server answers a changed param with a 400 whose message embeds a
    /// Python repr; re-read the params instead to report [`TrackingError::ParamChanged`].
    fn explain_param_error(&self, run_id: &str, params: &[(&str, &str)], err: TrackingError) -> TrackingError {
        if err.mlflow_error_code() != Some("INVALID_PARAMETER_VALUE") {
            return err;
        }
        let Ok(existing) = self.params(run_id) else { return err };
        for &(k, v) in params {
            if let Some(old) = existing.get(k) {
                if old != v {
                    return TrackingError::ParamChanged {
                        run_id: run_id.to_string(),
                        key: k.to_string(),
                        existing: old.clone(),
                        new: v.to_string(),
                    };
                }
            }
        }
        err
    }
}

/// The local checks a `log_params` passes before any request; shared with the
/// buffering wrapper so that what it queues cannot fail these later.
pub(crate) fn check_params(params: &[(&str, &str)]) -> Result<()> {
    let mut seen = HashSet::new();
    for &(k, v) in params {
        validate_key("param", k)?;
        validate::validate_value_len("param", k, v, MAX_PARAM_VALUE_LEN)?;
        if !seen.insert(k) {
            return Err(TrackingError::InvalidValue {
                what: format!("param {k:?}"),
                reason: "logged twice in one batch".into(),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_metrics(metrics: &[(&str, f64)], timestamp_ms: i64) -> Result<()> {
    for &(k, _) in metrics {
        validate_key("metric", k)?;
    }
    if timestamp_ms < 0 {
        return Err(TrackingError::InvalidValue {
            what: "metric timestamp".into(),
            reason: format!("{timestamp_ms} is negative"),
        });
    }
    Ok(())
}

pub(crate) fn check_tags(tags: &[(&str, &str)]) -> Result<()> {
    for &(k, v) in tags {
        validate_key("tag", k)?;
        validate::validate_value_len("tag", k, v, MAX_TAG_VALUE_LEN)?;
    }
    Ok(())
}

fn artifact_rel_path(name: &str, subdir: Option<&str>) -> Result<String> {
    validate::validate_artifact_path(name)?;
    Ok(match subdir {
        Some(s) if !s.is_empty() => {
            validate::validate_artifact_path(s)?;
            format!("{s}/{name}")
        }
        _ => name.to_string(),
    })
}

/// Splits into requests of at most `max` entries and [`MAX_BATCH_BYTES`].
fn chunk_values(items: Vec<Value>, max: usize) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.to_string().len() + 1;
        if !cur.is_empty() && (cur.len() == max || bytes + size > MAX_BATCH_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Protobuf's JSON mapping for doubles: non-finite values are strings.
fn float_to_json(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "Infinity".into()
    } else {
        "-Infinity".into()
    }
}

fn json_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            s => s.parse().ok(),
        },
        _ => None,
    }
}

/// int64 fields: MLflow writes numbers, plain protobuf JSON writes strings.
fn json_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn key_values(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| {
            Some((
                str_field(kv, "key")?.to_string(),
                str_field(kv, "value").unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// `RunInfo` from its proto JSON (`run.info`).
fn parse_run_info(info: &Value, url: &str) -> Result<RunInfo> {
    let bad = |reason: String| TrackingError::BadResponse {
        url: url.to_string(),
        reason,
    };
    let run_id = str_field(info, "run_id")
        .or_else(|| str_field(info, "run_uuid"))
        .ok_or_else(|| bad(format!("no run_id in run info {info}")))?;
    let status = match str_field(info, "status") {
        None => RunStatus::Running,
        Some(s) => RunStatus::parse(s).ok_or_else(|| bad(format!("unknown run status {s:?}")))?,
    };
    let int = |k: &str| info.get(k).filter(|v| !v.is_null()).and_then(json_i64);
    Ok(RunInfo {
        run_id: run_id.to_string(),
        experiment_id: str_field(info, "experiment_id")
            .ok_or_else(|| bad(format!("no experiment_id in run info {info}")))?
            .to_string(),
        run_name: str_field(info, "run_name").unwrap_or_default().to_string(),
        user_id: str_field(info, "user_id").unwrap_or_default().to_string(),
        status,
        start_time: int("start_time").unwrap_or(0),
        end_time: int("end_time"),
        artifact_uri: str_field(info, "artifact_uri").unwrap_or_default().to_string(),
        lifecycle_stage: str_field(info, "lifecycle_stage").unwrap_or("active").to_string(),
    })
}

/// MLflow's `MlflowArtifactsRepository.resolve_uri` (and plain http(s) artifact
/// roots, which `HttpArtifactRepository` uses as they are): the URL under which
/// the run's artifacts are PUT and GET, without a trailing slash.
pub(crate) fn resolve_artifact_uri(artifact_uri: &str, tracking_uri: &str) -> Result<String> {
    let unsupported = |reason: &str| TrackingError::UnsupportedUri {
        uri: artifact_uri.to_string(),
        reason: reason.to_string(),
    };
    if artifact_uri.starts_with("http://") || artifact_uri.starts_with("https://") {
        return Ok(artifact_uri.trim_end_matches('/').to_string());
    }
    let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
        return Err(unsupported(
            "the run's artifacts are not served by the tracking server (start it with \
             --serve-artifacts, the default, to upload through it)",
        ));
    };
    let (scheme, tracking_rest) = tracking_uri
        .split_once("://")
        .ok_or_else(|| unsupported("tracking URI is not http(s)"))?;
    let (track_host, track_path) = match tracking_rest.find('/') {
        Some(i) => tracking_rest.split_at(i),
        None => (tracking_rest, ""),
    };
    // `mlflow-artifacts://host:port/path` names its own server; `mlflow-artifacts:/path` uses ours.
    let (host, path) = match rest.strip_prefix("//") {
        Some(r) => match r.find('/') {
            Some(i) => (if i == 0 { track_host } else { &r[..i] }, &r[i..]),
            None => (if r.is_empty() { track_host } else { r }, ""),
        },
        None => (track_host, rest),
    };
    let joined = format!("{track_path}/{ARTIFACTS_API}/{path}");
    let mut collapsed = String::with_capacity(joined.len());
    for c in joined.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    Ok(format!("{scheme}://{host}{}", collapsed.trim_end_matches('/')))
}

/// Percent-encodes each segment of an artifact path (keeps `/`).
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Maps a transport failure: network-level ones are [`TrackingError::Unreachable`]
/// (retry later), the rest [`TrackingError::Request`].
fn transport_error(method: &'static str, url: &str, e: ureq::Error) -> TrackingError {
    use ureq::Error as E;
    let transient = matches!(
        e,
        E::Io(_) | E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::Protocol(_) | E::BodyStalled
    );
    let url = url.to_string();
    if transient {
        TrackingError::Unreachable {
            method,
            url,
            source: Box::new(e),
        }
    } else {
        TrackingError::Request {
            method,
            url,
            source: Box::new(e),
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pässword", "dXNlcjpww6Rzc3dvcmQ="),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i:?}");
        }
        assert_eq!(
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
            .header()
            .unwrap(),
            "Basic dTpw"
        );
        assert_eq!(Auth::Bearer("t".into()).header().unwrap(), "Bearer t");
        assert!(!format!("{:?}", Auth::Bearer("secret".into())).contains("secret"));
    }

    #[test]
    fn artifact_uris_resolve_like_mlflow() {
        let t = "http://127.0.0.1:5000";
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts:/1/abc/artifacts", t).unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts:/1/abc/artifacts", "https://h/prefix").unwrap(),
            "https://h/prefix/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts://other:81/1/abc/artifacts", t).unwrap(),
            "http://other:81/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("http://h/x/artifacts/", t).unwrap(),
            "http://h/x/artifacts"
        );
        assert!(matches!(
            resolve_artifact_uri("/srv/mlruns/1/abc/artifacts", t),
            Err(TrackingError::UnsupportedUri { .. })
        ));
        assert!(resolve_artifact_uri("s3://b/1/abc/artifacts", t).is_err());
        assert_eq!(encode_path("ckpt dir/a+b=1.bin"), "ckpt%20dir/a%2Bb%3D1.bin");
    }

    #[test]
    fn json_numbers() {
        assert_eq!(float_to_json(0.1 + 0.2).to_string(), "0.30000000000000004");
        assert_eq!(float_to_json(f64::NAN), "NaN");
        assert_eq!(float_to_json(f64::NEG_INFINITY), "-Infinity");
        assert!(json_f64(&"NaN".into()).unwrap().is_nan());
        assert_eq!(json_f64(&json!(1e-20)), Some(1e-20));
        assert_eq!(json_i64(&json!("1700000000000")), Some(1_700_000_000_000));
        assert_eq!(json_i64(&json!(3)), Some(3));
    }

    #[test]
    fn chunks_respect_count_and_size() {
        let items: Vec<Value> = (0..250)
            .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
            .collect();
        let c = chunk_values(items, 100);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
        // Value limits count characters: 100 tags of 8000 two-byte characters are 1.6 MB.
        let big: Vec<Value> = (0..100)
            .map(|i| json!({"key": format!("k{i}"), "value": "é".repeat(8000)}))
            .collect();
        let c = chunk_values(big, 100);
        assert!(c.len() >= 2);
        assert!(c
            .iter()
            .all(|ch| Value::Array(ch.clone()).to_string().len() < MAX_BATCH_BYTES + 10_000));
        assert_eq!(c.iter().map(Vec::len).sum::<usize>(), 100);
    }

    #[test]
    fn uris_checked_without_network() {
        assert!(RestStore::with_options("http://127.0.0.1:1/", RestOptions::default()).is_ok());
        assert_eq!(
            RestStore::with_options("http://h:5000/", RestOptions::default())
                .unwrap()
                .uri(),
            "http://h:5000"
        );
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

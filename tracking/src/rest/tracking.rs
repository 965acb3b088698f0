//! The tracking calls of [`RestStore`]: experiments, runs, params, metrics, tags and
//! artifacts, as `mlflow.store.tracking.rest_store` makes them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::client::Body;
use super::urls::{artifact_url, resolve_artifact_uri};
use super::wire::{self, KeyValue, KeyValueOwned, LogBatch, Metric, ProtoF64};
use super::{RestStore, MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH};
use crate::error::{Result, TrackingError};
use crate::util::{self, now_ms};
use crate::validate::{self, artifact_rel_path, check_metrics, check_params, check_tags, validate_key};
use crate::{tags, MetricPoint, RunHandle, RunInfo, RunStatus, Tracker, MAX_TAG_VALUE_LEN};

/// MLflow refuses `log-batch` bodies over 1 MB (`MAX_BATCH_LOG_REQUEST_SIZE`);
/// chunks are cut below that, leaving room for the envelope.
const MAX_BATCH_BYTES: usize = 900_000;
/// Page size for `metrics/get-history`.
const HISTORY_PAGE_SIZE: usize = 25_000;

const NOT_FOUND: &str = "RESOURCE_DOES_NOT_EXIST";

impl RestStore {
    /// Downloads one artifact file of a run (through the artifact proxy), e.g.
    /// `checkpoints/last.safetensors`.
    pub fn download_artifact(&self, run_id: &str, path: &str) -> Result<Vec<u8>> {
        validate::validate_artifact_path(path)?;
        self.get_bytes(&artifact_url(&self.artifact_root_url(run_id)?, path))
    }

    fn get_run(&self, run_id: &str) -> Result<wire::Run> {
        validate::validate_run_id(run_id)?;
        match self.get::<wire::RunResponse>("runs/get", &[("run_id", run_id)]) {
            Err(e) if e.mlflow_error_code() == Some(NOT_FOUND) => Err(TrackingError::RunNotFound(run_id.to_string())),
            other => Ok(other?.run),
        }
    }

    fn handle(&self, info: &RunInfo) -> RunHandle {
        let staging = self.inner.staging_dir.join(&info.run_id).join("artifacts");
        RunHandle::new(Arc::new(self.clone()), info, staging)
    }

    /// URL of the run's artifact root in the server's artifact proxy.
    fn artifact_root_url(&self, run_id: &str) -> Result<String> {
        let info = self.run_info(run_id)?;
        resolve_artifact_uri(&info.artifact_uri, &self.inner.base)
    }

    /// One `runs/log-batch` request; callers keep within MLflow's limits.
    fn log_batch(&self, batch: &LogBatch<'_>) -> Result<()> {
        self.post::<wire::Ignored>("runs/log-batch", batch).map(|_| ())
    }

    fn put_artifact(&self, run_id: &str, rel: &str, body: Body<'_>) -> Result<()> {
        let url = artifact_url(&self.artifact_root_url(run_id)?, rel);
        self.send("PUT", &url, &[], body).map(|_| ())
    }

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

    /// A `BadResponse` for `endpoint`.
    fn bad_response(&self, endpoint: &str, reason: String) -> TrackingError {
        TrackingError::BadResponse { url: self.endpoint_url(endpoint), reason }
    }
}

impl Tracker for RestStore {
    fn get_or_create_experiment(&self, name: &str) -> Result<String> {
        validate::validate_experiment_name(name)?;
        // Two attempts: another client may create the experiment between our
        // lookup and our create (RESOURCE_ALREADY_EXISTS), then the lookup wins.
        for attempt in 0..2 {
            let endpoint = "experiments/get-by-name";
            match self.get::<wire::GetExperiment>(endpoint, &[("experiment_name", name)]) {
                Ok(wire::GetExperiment { experiment }) => {
                    let id = experiment
                        .experiment_id
                        .ok_or_else(|| self.bad_response(endpoint, "no experiment_id in the answer".into()))?;
                    if experiment.lifecycle_stage.as_deref() == Some("deleted") {
                        return Err(TrackingError::ExperimentDeleted { name: name.to_string(), id });
                    }
                    return Ok(id);
                }
                Err(e) if e.mlflow_error_code() == Some(NOT_FOUND) => {}
                Err(e) => return Err(e),
            }
            let endpoint = "experiments/create";
            match self.post::<wire::CreatedExperiment>(endpoint, &wire::Named { name }) {
                Ok(created) => {
                    return created
                        .experiment_id
                        .ok_or_else(|| self.bad_response(endpoint, "no experiment_id in the answer".into()))
                }
                Err(e) if attempt == 0 && e.mlflow_error_code() == Some("RESOURCE_ALREADY_EXISTS") => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt always returns")
    }

    fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[(String, String)]) -> Result<RunHandle> {
        validate::validate_experiment_id(experiment_id)?;
        check_tags(tags)?;
        let tag_name = tags.iter().rev().find(|(k, _)| k == tags::RUN_NAME).map(|(_, v)| v.as_str());
        if let Some(t) = tag_name {
            if !run_name.is_empty() && t != run_name {
                return Err(TrackingError::InvalidValue {
                    what: "run name".into(),
                    reason: format!("run_name {run_name:?} conflicts with tag {}={t:?}", tags::RUN_NAME),
                });
            }
        }
        // With neither, the server makes up one of its names ("bold-cat-123").
        let run_name = if run_name.is_empty() { tag_name.unwrap_or("") } else { run_name };
        validate::validate_value_len("tag", tags::RUN_NAME, run_name, MAX_TAG_VALUE_LEN)?;

        let user = util::current_user();
        let source = util::run_source();
        // Later entries win: caller tags override the context defaults.
        let mut all_tags = util::run_context_tags(&user, &source, tags);
        if !run_name.is_empty() {
            all_tags.insert(tags::RUN_NAME, run_name);
        }
        let body = wire::CreateRun {
            experiment_id,
            user_id: &user,
            start_time: now_ms(),
            tags: all_tags.iter().map(|(&key, &value)| KeyValue { key, value }).collect(),
            run_name: Some(run_name).filter(|n| !n.is_empty()),
        };
        let endpoint = "runs/create";
        let created = match self.post::<wire::RunResponse>(endpoint, &body) {
            Err(e) if e.mlflow_error_code() == Some(NOT_FOUND) => {
                return Err(TrackingError::ExperimentNotFound(experiment_id.to_string()))
            }
            other => other?,
        };
        let info = run_info(created.run.info).map_err(|reason| self.bad_response(endpoint, reason))?;
        Ok(self.handle(&info))
    }

    fn open_run(&self, run_id: &str) -> Result<RunHandle> {
        let info = self.run_info(run_id)?;
        Ok(self.handle(&info))
    }

    fn run_info(&self, run_id: &str) -> Result<RunInfo> {
        let run = self.get_run(run_id)?;
        run_info(run.info).map_err(|reason| self.bad_response("runs/get", reason))
    }

    /// `end_time: None` leaves the server's end time as it is: MLflow's
    /// `runs/update` cannot clear it (a resumed run keeps its old end time until
    /// it ends again, exactly as with the Python client).
    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        validate::validate_run_id(run_id)?;
        let body = wire::UpdateRun { run_id, run_uuid: run_id, status: status.as_str(), end_time };
        match self.post::<wire::Ignored>("runs/update", &body) {
            Err(e) if e.mlflow_error_code() == Some(NOT_FOUND) => Err(TrackingError::RunNotFound(run_id.to_string())),
            other => other.map(|_| ()),
        }
    }

    /// All-or-nothing per request of up to 100 params (the server checks
    /// immutability for the whole batch before writing any).
    fn log_params(&self, run_id: &str, params: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_params(params)?;
        let items: Vec<KeyValue> = params.iter().map(|&(key, value)| KeyValue { key, value }).collect();
        for chunk in chunk_values(items, MAX_PARAMS_PER_BATCH) {
            let batch = LogBatch { run_id, metrics: &[], params: &chunk, tags: &[] };
            match self.log_batch(&batch) {
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
        let items: Vec<Metric> =
            metrics.iter().map(|&(key, v)| Metric { key, value: ProtoF64(v), timestamp: timestamp_ms, step }).collect();
        for chunk in chunk_values(items, MAX_METRICS_PER_BATCH) {
            self.log_batch(&LogBatch { run_id, metrics: &chunk, params: &[], tags: &[] })?;
        }
        Ok(())
    }

    /// Setting `mlflow.runName` renames the run, as on the server side.
    fn set_tags(&self, run_id: &str, tags: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_tags(tags)?;
        let items: Vec<KeyValue> = tags.iter().map(|&(key, value)| KeyValue { key, value }).collect();
        for chunk in chunk_values(items, MAX_TAGS_PER_BATCH) {
            self.log_batch(&LogBatch { run_id, metrics: &[], params: &[], tags: &chunk })?;
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
        let page_size = HISTORY_PAGE_SIZE.to_string();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("run_id", run_id), ("metric_key", key), ("max_results", page_size.as_str())];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page = match self.get::<wire::MetricHistory>("metrics/get-history", &query) {
                Err(e) if e.mlflow_error_code() == Some(NOT_FOUND) => {
                    return Err(TrackingError::RunNotFound(run_id.to_string()))
                }
                other => other?,
            };
            out.extend(page.metrics.iter().map(|m| (m.timestamp.0, m.value.0, m.step.map_or(0, |s| s.0))));
            match page.next_page_token {
                Some(t) if !t.is_empty() && t != token => token = t,
                _ => return Ok(out),
            }
        }
    }

    fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        Ok(key_values(self.get_run(run_id)?.data.params))
    }

    fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        Ok(key_values(self.get_run(run_id)?.data.tags))
    }
}

fn key_values(list: Vec<KeyValueOwned>) -> BTreeMap<String, String> {
    list.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// `RunInfo` from its wire form (`run.info`); the reason on failure.
fn run_info(info: wire::RunInfo) -> std::result::Result<RunInfo, String> {
    let status = match &info.status {
        None => RunStatus::Running,
        Some(s) => RunStatus::parse(s).ok_or_else(|| format!("unknown run status {s:?}"))?,
    };
    let (Some(run_id), Some(experiment_id)) =
        (info.run_id.clone().or(info.run_uuid.clone()), info.experiment_id.clone())
    else {
        return Err(format!("no run_id or experiment_id in run info {info:?}"));
    };
    Ok(RunInfo {
        run_id,
        experiment_id,
        run_name: info.run_name.unwrap_or_default(),
        user_id: info.user_id.unwrap_or_default(),
        status,
        start_time: info.start_time.map_or(0, |t| t.0),
        end_time: info.end_time.map(|t| t.0),
        artifact_uri: info.artifact_uri.unwrap_or_default(),
        lifecycle_stage: info.lifecycle_stage.unwrap_or_else(|| "active".into()),
    })
}

/// Splits into requests of at most `max` entries and [`MAX_BATCH_BYTES`].
fn chunk_values<T: Serialize>(items: Vec<T>, max: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = serde_json::to_string(&item).map_or(0, |s| s.len()) + 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn chunks_respect_count_and_size() {
        let items: Vec<Value> = (0..250).map(|i| json!({"key": format!("k{i}"), "value": "v"})).collect();
        let c = chunk_values(items, 100);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
        // Value limits count characters: 100 tags of 8000 two-byte characters are 1.6 MB.
        let big: Vec<Value> = (0..100).map(|i| json!({"key": format!("k{i}"), "value": "é".repeat(8000)})).collect();
        let c = chunk_values(big, 100);
        assert!(c.len() >= 2);
        assert!(c.iter().all(|ch| Value::Array(ch.clone()).to_string().len() < MAX_BATCH_BYTES + 10_000));
        assert_eq!(c.iter().map(Vec::len).sum::<usize>(), 100);
    }

    #[test]
    fn run_info_from_the_wire() {
        let info: wire::RunInfo = serde_json::from_value(json!({
            "run_uuid": "abc", "experiment_id": "1", "status": "FINISHED", "end_time": 5
        }))
        .unwrap();
        let info = run_info(info).unwrap();
        assert_eq!((info.run_id.as_str(), info.status, info.end_time), ("abc", RunStatus::Finished, Some(5)));
        assert_eq!((info.start_time, info.lifecycle_stage.as_str()), (0, "active"));
        assert!(run_info(wire::RunInfo::default()).is_err());
        let bad: wire::RunInfo =
            serde_json::from_value(json!({"run_id": "a", "experiment_id": "1", "status": "X"})).unwrap();
        assert!(run_info(bad).unwrap_err().contains("unknown run status"));
    }
}

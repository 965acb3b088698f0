//! MLflow's JSON wire format (`mlflow/protos/service.proto` and
//! `model_registry.proto` through protobuf's JSON mapping) as typed serde structs:
//! the request bodies we send and the parts of the answers we read.
//!
//! Answers are decoded leniently, as MLflow's own clients read them: fields we do
//! not use are ignored, missing ones default, int64 fields may be JSON numbers
//! (what MLflow writes) or strings (plain protobuf JSON), doubles may be the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"`.

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Numbers

/// A protobuf `double`: non-finite values travel as strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ProtoF64(pub f64);

/// A protobuf `int64`: MLflow writes numbers, plain protobuf JSON writes strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProtoI64(pub i64);

/// A JSON number or a string holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(serde_json::Number),
    String(String),
}

impl Serialize for ProtoF64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
}

impl<'de> Deserialize<'de> for ProtoF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match NumberOrString::deserialize(d)? {
            NumberOrString::Number(n) => n.as_f64(),
            NumberOrString::String(s) => match s.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                s => s.parse().ok(),
            },
        };
        v.map(ProtoF64).ok_or_else(|| de::Error::custom("expected a double"))
    }
}

impl<'de> Deserialize<'de> for ProtoI64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match NumberOrString::deserialize(d)? {
            NumberOrString::Number(n) => {
                n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            }
            NumberOrString::String(s) => s.parse().ok(),
        };
        v.map(ProtoI64).ok_or_else(|| de::Error::custom("expected an int64"))
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A param or tag (`Param`, `RunTag`, `ExperimentTag`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct KeyValue<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// One metric observation of `runs/log-batch`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Metric<'a> {
    pub key: &'a str,
    pub value: ProtoF64,
    pub timestamp: i64,
    pub step: i64,
}

/// `runs/log-batch`; empty lists are left out.
#[derive(Debug, Serialize)]
pub(super) struct LogBatch<'a> {
    pub run_id: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub metrics: &'a [Metric<'a>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub params: &'a [KeyValue<'a>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tags: &'a [KeyValue<'a>],
}

/// Requests naming only a model or experiment: `experiments/create`,
/// `registered-models/create`, `registered-models/get-latest-versions`.
#[derive(Debug, Serialize)]
pub(super) struct Named<'a> {
    pub name: &'a str,
}

/// `runs/create`.
#[derive(Debug, Serialize)]
pub(super) struct CreateRun<'a> {
    pub experiment_id: &'a str,
    pub user_id: &'a str,
    pub start_time: i64,
    pub tags: Vec<KeyValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_name: Option<&'a str>,
}

/// `runs/update`; `run_uuid` repeats `run_id` for older servers.
#[derive(Debug, Serialize)]
pub(super) struct UpdateRun<'a> {
    pub run_id: &'a str,
    pub run_uuid: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
}

/// `model-versions/create`.
#[derive(Debug, Serialize)]
pub(super) struct CreateModelVersion<'a> {
    pub name: &'a str,
    pub source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<&'a str>,
}

/// `registered-models/alias` (POST); the version is a string in MLflow's proto.
#[derive(Debug, Serialize)]
pub(super) struct SetAlias<'a> {
    pub name: &'a str,
    pub alias: &'a str,
    pub version: String,
}

// ---------------------------------------------------------------------------------------------
// Responses

/// MLflow's error body: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ErrorBody {
    pub error_code: Option<String>,
    pub message: Option<String>,
}

/// An answer whose content is not used (`runs/log-batch`, `runs/update`...).
pub(super) type Ignored = de::IgnoredAny;

/// `experiments/get-by-name`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct GetExperiment {
    pub experiment: Experiment,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Experiment {
    pub experiment_id: Option<String>,
    pub lifecycle_stage: Option<String>,
}

/// `experiments/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CreatedExperiment {
    pub experiment_id: Option<String>,
}

/// `runs/get` and `runs/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RunResponse {
    pub run: Run,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Run {
    pub info: RunInfo,
    pub data: RunData,
}

/// `RunInfo`; everything optional, as the server may leave fields out.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RunInfo {
    pub run_id: Option<String>,
    /// Deprecated alias of `run_id`, still sent by older servers.
    pub run_uuid: Option<String>,
    pub experiment_id: Option<String>,
    pub run_name: Option<String>,
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub start_time: Option<ProtoI64>,
    pub end_time: Option<ProtoI64>,
    pub artifact_uri: Option<String>,
    pub lifecycle_stage: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RunData {
    pub params: Vec<KeyValueOwned>,
    pub tags: Vec<KeyValueOwned>,
}

/// A param or tag as read back; a missing value is empty.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct KeyValueOwned {
    pub key: String,
    pub value: String,
}

/// One page of `metrics/get-history`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct MetricHistory {
    pub metrics: Vec<MetricPoint>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct MetricPoint {
    pub timestamp: ProtoI64,
    pub value: ProtoF64,
    /// A missing step is step 0.
    #[serde(default)]
    pub step: Option<ProtoI64>,
}

/// `model-versions/create`, `model-versions/get`, `registered-models/alias` (GET).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ModelVersionResponse {
    pub model_version: Option<ModelVersion>,
}

/// `registered-models/get-latest-versions`: one latest version per stage.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct LatestVersions {
    pub model_versions: Vec<ModelVersion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ModelVersion {
    pub name: Option<String>,
    /// A string in MLflow's proto; numbers are accepted too.
    pub version: Option<VersionNumber>,
    pub source: Option<String>,
    pub run_id: Option<String>,
    pub status: Option<String>,
}

/// A model version number, sent as a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VersionNumber(pub u64);

impl<'de> Deserialize<'de> for VersionNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match NumberOrString::deserialize(d)? {
            NumberOrString::Number(n) => n.as_u64(),
            NumberOrString::String(s) => s.parse().ok(),
        };
        v.map(VersionNumber).ok_or_else(|| de::Error::custom("expected a version number"))
    }
}

/// `model-versions/get-download-uri`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DownloadUri {
    pub artifact_uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f64_of(v: serde_json::Value) -> Option<f64> {
        serde_json::from_value::<ProtoF64>(v).ok().map(|p| p.0)
    }

    fn i64_of(v: serde_json::Value) -> Option<i64> {
        serde_json::from_value::<ProtoI64>(v).ok().map(|p| p.0)
    }

    #[test]
    fn json_numbers() {
        let to_json = |v: f64| serde_json::to_value(ProtoF64(v)).unwrap();
        assert_eq!(to_json(0.1 + 0.2).to_string(), "0.30000000000000004");
        assert_eq!(to_json(f64::NAN), "NaN");
        assert_eq!(to_json(f64::NEG_INFINITY), "-Infinity");
        assert!(f64_of("NaN".into()).unwrap().is_nan());
        assert_eq!(f64_of(json!(1e-20)), Some(1e-20));
        assert_eq!(i64_of(json!("1700000000000")), Some(1_700_000_000_000));
        assert_eq!(i64_of(json!(3)), Some(3));
        assert_eq!(i64_of(json!(3.0)), Some(3));
        assert_eq!(i64_of(json!(3.5)), None);
    }

    #[test]
    fn answers_decode_leniently() {
        let run: RunResponse = serde_json::from_value(json!({
            "run": {
                "info": {"run_uuid": "abc", "experiment_id": "1", "start_time": "17", "extra": 1},
                "data": {"params": [{"key": "lr"}], "metrics": []}
            }
        }))
        .unwrap();
        assert_eq!(run.run.info.run_uuid.as_deref(), Some("abc"));
        assert_eq!(run.run.info.start_time, Some(ProtoI64(17)));
        assert_eq!(run.run.data.params[0].value, "");
        let page: MetricHistory =
            serde_json::from_value(json!({"metrics": [{"timestamp": 5, "value": "-Infinity", "step": null}]})).unwrap();
        assert_eq!(page.metrics[0].value.0, f64::NEG_INFINITY);
        assert_eq!(page.metrics[0].step, None);
        let mv: ModelVersionResponse =
            serde_json::from_value(json!({"model_version": {"name": "m", "version": "3"}})).unwrap();
        assert_eq!(mv.model_version.unwrap().version, Some(VersionNumber(3)));
        let batch = LogBatch { run_id: "r", metrics: &[], params: &[KeyValue { key: "k", value: "v" }], tags: &[] };
        assert_eq!(
            serde_json::to_value(&batch).unwrap(),
            json!({"run_id": "r", "params": [{"key": "k", "value": "v"}]})
        );
    }
}

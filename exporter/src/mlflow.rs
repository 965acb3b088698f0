//! The exported model as an MLflow model directory (`MLmodel` + `model.onnx`), the layout
//! `mlflow.onnx.save_model` writes, so `mlflow.pyfunc.load_model`, `mlflow models serve` and the
//! MLflow UI treat it like a model logged from Python.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use models::CheckpointMeta;
use tracking::RunHandle;

use crate::{ExportError, ExportOptions, INPUT_NAME, OUTPUT_NAME};

/// Artifact sub-directory of the run holding the model (`runs:/<run_id>/model`).
pub const MODEL_ARTIFACT_DIR: &str = "model";
pub const ONNX_FILE: &str = "model.onnx";
pub const MLMODEL_FILE: &str = "MLmodel";

/// The Python stack the model was checked against: the pins of scripts/requirements.txt (the
/// tests compare them with the venv). MLflow only warns when a loader's versions differ.
pub const MLFLOW_VERSION: &str = "3.17.2";
pub const ONNX_VERSION: &str = "1.23.2";
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";
pub const PYTHON_VERSION: &str = "3.11";

/// The files of the model directory, in the order they should be written: `MLmodel` last, as
/// it is what marks the directory as a model.
pub fn model_files(
    onnx: &[u8],
    meta: &CheckpointMeta,
    opts: &ExportOptions,
    run_id: Option<&str>,
) -> Result<Vec<(&'static str, Vec<u8>)>, ExportError> {
    let mlmodel = mlmodel_yaml(onnx.len(), meta, opts, run_id, &new_uuid()?, &utc_now());
    let requirements =
        format!("mlflow=={MLFLOW_VERSION}\nonnx=={ONNX_VERSION}\nonnxruntime=={ONNXRUNTIME_VERSION}\nnumpy\n");
    let python_env =
        format!("python: {}\nbuild_dependencies:\n- pip\ndependencies:\n- -r requirements.txt\n", q(PYTHON_VERSION));
    let conda = format!(
        "channels:\n- conda-forge\ndependencies:\n- python={PYTHON_VERSION}\n- pip\n- pip:\n  - mlflow=={MLFLOW_VERSION}\n  - onnx=={ONNX_VERSION}\n  - onnxruntime=={ONNXRUNTIME_VERSION}\n  - numpy\nname: mlflow-env\n"
    );
    Ok(vec![
        (ONNX_FILE, onnx.to_vec()),
        ("requirements.txt", requirements.into_bytes()),
        ("python_env.yaml", python_env.into_bytes()),
        ("conda.yaml", conda.into_bytes()),
        (MLMODEL_FILE, mlmodel.into_bytes()),
    ])
}

/// Writes the model directory at `dir` (each file atomically).
pub fn write_model_dir(
    dir: &Path,
    onnx: &[u8],
    meta: &CheckpointMeta,
    opts: &ExportOptions,
) -> Result<(), ExportError> {
    for (name, bytes) in model_files(onnx, meta, opts, meta.run_id.as_deref())? {
        let path = dir.join(name);
        data::atomic_write(&path, &bytes).map_err(|source| ExportError::Write { path, source })?;
    }
    Ok(())
}

/// Logs the model into `run`'s artifacts under `model/`; returns that directory.
pub fn log_model(
    run: &RunHandle,
    onnx: &[u8],
    meta: &CheckpointMeta,
    opts: &ExportOptions,
) -> Result<PathBuf, ExportError> {
    let err = |source| ExportError::Tracking { run_id: run.run_id().to_string(), source: Box::new(source) };
    for (name, bytes) in model_files(onnx, meta, opts, Some(run.run_id()))? {
        run.log_artifact_bytes(name, &bytes, Some(MODEL_ARTIFACT_DIR)).map_err(err)?;
    }
    Ok(run.artifact_dir().join(MODEL_ARTIFACT_DIR))
}

/// The `MLmodel` YAML, field for field what `mlflow.onnx.save_model` writes (keys sorted, as
/// PyYAML dumps them), with `providers` limited to the CPU and a tensor signature.
pub fn mlmodel_yaml(
    onnx_size: usize,
    meta: &CheckpointMeta,
    opts: &ExportOptions,
    run_id: Option<&str>,
    uuid: &str,
    utc_time: &str,
) -> String {
    let cfg = &meta.model;
    let batch = opts.fixed_batch().map_or(-1, |b| b as i64);
    let s = cfg.image_size;
    let spec = |name: &str, shape: String| {
        format!(
            r#"[{{"type": "tensor", "tensor-spec": {{"dtype": "float32", "shape": [{shape}]}}, "name": "{name}"}}]"#
        )
    };
    let inputs = spec(INPUT_NAME, format!("{batch}, 1, {s}, {s}"));
    let outputs = spec(OUTPUT_NAME, format!("{batch}, {}", cfg.num_classes));
    let mut y = String::new();
    y.push_str(&format!("artifact_path: {MODEL_ARTIFACT_DIR}\n"));
    y.push_str("flavors:\n");
    y.push_str("  onnx:\n    code: null\n");
    y.push_str(&format!(
        "    data: {ONNX_FILE}\n    onnx_session_options: null\n    onnx_version: {}\n",
        q(ONNX_VERSION)
    ));
    y.push_str("    providers:\n    - CPUExecutionProvider\n");
    y.push_str("  python_function:\n");
    y.push_str(&format!(
        "    data: {ONNX_FILE}\n    env:\n      conda: conda.yaml\n      virtualenv: python_env.yaml\n"
    ));
    y.push_str(&format!("    loader_module: mlflow.onnx\n    python_version: {}\n", q(PYTHON_VERSION)));
    y.push_str("metadata:\n");
    for (k, v) in crate::lower::model_metadata(meta, opts) {
        y.push_str(&format!("  {k}: {}\n", q(&v)));
    }
    y.push_str(&format!("mlflow_version: {}\n", q(MLFLOW_VERSION)));
    y.push_str(&format!("model_size_bytes: {onnx_size}\n"));
    y.push_str(&format!("model_uuid: {}\n", q(uuid)));
    if let Some(r) = run_id {
        y.push_str(&format!("run_id: {}\n", q(r)));
    }
    y.push_str(&format!("signature:\n  inputs: {}\n  outputs: {}\n  params: null\n", q(&inputs), q(&outputs)));
    y.push_str(&format!("utc_time_created: {}\n", q(utc_time)));
    y
}

/// A YAML double-quoted scalar: JSON string syntax is a subset of it, and quoting keeps values
/// like `3.11` or an all-digit run id strings.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// 32 hex digits, like `uuid.uuid4().hex`.
fn new_uuid() -> Result<String, ExportError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| ExportError::InvalidOptions(format!("no random bytes for the model uuid: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Now as Python's `str(datetime.utcnow())`: `2024-05-01 12:34:56.789012`.
pub fn utc_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_micros())
}

fn format_utc(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_format_matches_python() {
        // datetime.datetime.utcfromtimestamp(t) for these t.
        assert_eq!(format_utc(0, 0), "1970-01-01 00:00:00.000000");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29 00:00:00.000005");
        assert_eq!(format_utc(1_719_835_199, 999_999), "2024-07-01 11:59:59.999999");
    }

    #[test]
    fn uuid_is_32_hex() {
        let u = new_uuid().unwrap();
        assert_eq!(u.len(), 32);
        assert!(u.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(u, new_uuid().unwrap());
    }
}

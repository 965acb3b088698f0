//! The exporter logs the ONNX into the checkpoint's MLflow run as a model that MLflow itself
//! loads (`mlflow.onnx.load_model`, `mlflow.pyfunc.load_model`) and that predicts like PyTorch.

mod common;

use std::process::Command;

use common::*;
use models::{Arch, ModelConfig};
use serde_json::json;
use tracking::{FileStore, Tracker};

#[test]
fn logged_mlflow_model_loads_in_mlflow_and_predicts_like_torch() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("mlruns");
    let store = FileStore::new(&store_dir).unwrap();
    let exp = store.get_or_create_experiment("exporter-test").unwrap();
    let run = store.create_run(&exp, "export", &[]).unwrap();

    let ckpt = tmp.path().join("ckpt");
    let mut meta = meta_for(ModelConfig::new(Arch::ResnetDigits));
    meta.run_id = Some(run.run_id().to_string());
    meta.tracking_uri = Some(store_dir.display().to_string());
    write_checkpoint(&ckpt, &meta, 11);

    let out = tmp.path().join("model.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_exporter"))
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let model_dir = run.artifact_dir().join("model");
    assert!(stdout.contains(run.run_id()) && stdout.contains(&model_dir.display().to_string()), "{stdout}");
    assert_eq!(std::fs::read(model_dir.join("model.onnx")).unwrap(), std::fs::read(&out).unwrap());
    eprintln!("MLmodel:\n{}", std::fs::read_to_string(model_dir.join("MLmodel")).unwrap());

    let jobs = json!([{
        "name": "mlflow",
        "checkpoint": ckpt,
        "onnx": out,
        "tol": MAX_ABS_DIFF,
        "mlflow_model_dir": model_dir,
        "mlflow_tracking_uri": store.uri(),
        "mlflow_model_uri": format!("runs:/{}/model", run.run_id()),
    }]);
    let r = &run_reference(&jobs, tmp.path())[0];
    assert!(r["error"].is_null(), "{}", r["error"].as_str().unwrap_or(""));
    assert!(r["max_abs_diff"].as_f64().unwrap() <= MAX_ABS_DIFF, "{r}");
    for key in ["pyfunc", "pyfunc_uri"] {
        let p = &r[key];
        assert!(p["max_abs_diff"].as_f64().unwrap() <= MAX_ABS_DIFF, "{key}: {p}");
        assert_eq!(p["argmax_agree"].as_u64(), r["argmax_agree"].as_u64(), "{key}: {p}");
        assert_eq!(p["argmax_flips_beyond_tol"], 0, "{key}: {p}");
    }
    assert_eq!(r["mlflow_same_onnx"], true, "mlflow.onnx.load_model returns our model");
    assert_eq!(r["mlflow_flavors"], json!(["onnx", "python_function"]));
    let onnx_flavor = &r["mlflow_onnx_flavor"];
    assert_eq!(onnx_flavor["providers"], json!(["CPUExecutionProvider"]));
    assert_eq!(onnx_flavor["data"], "model.onnx");
    assert_eq!(onnx_flavor["onnx_version"], exporter::mlflow::ONNX_VERSION);
    // MLflow's own parse of our signature (the JSON strings inside MLmodel).
    let sig = &r["mlflow_signature"];
    let inputs: serde_json::Value = serde_json::from_str(sig["inputs"].as_str().unwrap()).unwrap();
    let outputs: serde_json::Value = serde_json::from_str(sig["outputs"].as_str().unwrap()).unwrap();
    assert_eq!(
        inputs,
        json!([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 28, 28]}, "name": "input"}])
    );
    assert_eq!(
        outputs,
        json!([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}, "name": "logits"}])
    );
    assert_eq!(r["mlflow_uuid"].as_str().map(str::len), Some(32));
    // The versions written into MLmodel are the venv's (scripts/requirements.txt pins them).
    assert_eq!(r["versions"]["mlflow"], exporter::mlflow::MLFLOW_VERSION);
    assert_eq!(r["versions"]["onnx"], exporter::mlflow::ONNX_VERSION);
    assert_eq!(r["versions"]["onnxruntime"], exporter::mlflow::ONNXRUNTIME_VERSION);
}

#[test]
fn unreachable_server_and_missing_store_fail_but_keep_the_onnx() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let mut meta = meta_for(ModelConfig::new(Arch::M5));
    meta.run_id = Some("0123456789abcdef0123456789abcdef".into());
    // A port nobody listens on: the bound socket is closed again at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    meta.tracking_uri = Some(format!("http://127.0.0.1:{port}"));
    write_checkpoint(&ckpt, &meta, 12);
    let out = tmp.path().join("m.onnx");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_exporter"))
            .arg("--checkpoint")
            .arg(&ckpt)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // The run's tracking server is down: logging fails loudly; the complete ONNX file stays.
    let o = run(&[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && out.exists(), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("--no-mlflow"), "{stderr}");

    // A local store that does not exist is an error (and is not created), unless --no-mlflow.
    std::fs::remove_file(&out).unwrap();
    let gone = tmp.path().join("gone-mlruns");
    let o = run(&["--tracking-uri", gone.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("gone-mlruns") && stderr.contains("--no-mlflow"), "{stderr}");
    assert!(!gone.exists());
    let o = run(&["--tracking-uri", gone.to_str().unwrap(), "--no-mlflow"]);
    assert!(o.status.success());

    // An existing store without that run: the run id is named.
    let store_dir = tmp.path().join("mlruns");
    FileStore::new(&store_dir).unwrap();
    let o = run(&["--tracking-uri", store_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("0123456789abcdef0123456789abcdef"), "{stderr}");
}

//! The REST backend against a real `mlflow server` (from the workspace's
//! `.venv`, sqlite backend, artifact proxy), judged from Rust and from MLflow's
//! own Python client. One test function, because the server takes many seconds
//! to start: it runs the steps in order and restarts the server once, on the
//! same port and database, to check that a run survives the outage.
//!
//! Fails when `.venv/bin/python` (with mlflow) is missing; `SKIP_PYTHON_TESTS=1`
//! skips it on a machine without the venv (reported as skipped, and a failure under CI).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/mlflow_server.rs"]
mod mlflow_server;
use mlflow_server::{venv_python, MlflowServer};
use tracking::{
    open_tracker, BufferOptions, BufferedTracker, RestOptions, RestStore, RunHandle, RunStatus, Tracker, TrackingError,
};

/// Judges the server's data with MlflowClient; one process for all checks
/// (importing mlflow takes seconds).
const PY_CHECK: &str = r#"
import json, math, sys, tempfile
from mlflow.tracking import MlflowClient

uri, exp_file = sys.argv[1], sys.argv[2]
exp = json.load(open(exp_file))
c = MlflowClient(tracking_uri=uri)
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

e = c.get_experiment_by_name(exp["experiment_name"])
check(e is not None and e.experiment_id == exp["experiment_id"], f"experiment {e}")
for want in exp["runs"]:
    rid = want["run_id"]
    r = c.get_run(rid)
    check(r.info.experiment_id == exp["experiment_id"], f"{rid}: experiment {r.info.experiment_id}")
    check(r.info.run_name == want["run_name"], f"{rid}: run_name {r.info.run_name!r}")
    check(r.info.status == want["status"], f"{rid}: status {r.info.status} != {want['status']}")
    if want["status"] != "RUNNING":
        check(r.info.end_time is not None and r.info.end_time >= r.info.start_time, f"{rid}: end_time {r.info.end_time}")
    check(r.info.artifact_uri == f"mlflow-artifacts:/{exp['experiment_id']}/{rid}/artifacts", f"{rid}: artifact_uri {r.info.artifact_uri}")
    if "params" in want:
        check(r.data.params == want["params"], f"{rid}: params {r.data.params}")
    for k, v in want.get("tags", {}).items():
        check(r.data.tags.get(k) == v, f"{rid}: tag {k}: {r.data.tags.get(k)!r} != {v!r}")
    for key, pts in want.get("metrics", {}).items():
        got = [[m.timestamp, m.value, m.step] for m in c.get_metric_history(rid, key)]
        check(got == pts, f"{rid}: history of {key}: {got} != {pts}")
    for folder, entries in want.get("artifacts", {}).items():
        got = sorted([f.path, f.is_dir, f.file_size] for f in c.list_artifacts(rid, folder or None))
        check(got == sorted(entries), f"{rid}: artifacts in {folder!r}: {got} != {entries}")
    with tempfile.TemporaryDirectory() as d:
        for path, hexed in want.get("contents", {}).items():
            local = c.download_artifacts(rid, path, d)
            check(open(local, "rb").read() == bytes.fromhex(hexed), f"{rid}: content of {path}")

if errors:
    print("MLflow disagrees with the REST backend:")
    for m in errors:
        print(" -", m)
    sys.exit(1)
print("ok")
"#;

fn run_python_check(py: &Path, uri: &str, expect: &Value, dir: &Path) {
    let file = dir.join("expect.json");
    fs::write(&file, expect.to_string()).unwrap();
    let out = Command::new(py)
        .arg("-c")
        .arg(PY_CHECK)
        .arg(uri)
        .arg(&file)
        .env_remove("MLFLOW_TRACKING_URI")
        .env("GIT_PYTHON_REFRESH", "quiet")
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "python check failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn points(hist: &[(i64, f64, i64)]) -> Value {
    Value::Array(hist.iter().map(|(t, v, s)| json!([t, v, s])).collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A tracker whose warnings are recorded (and still printed).
fn buffered(store: &RestStore, flush_timeout: Duration) -> (BufferedTracker, Arc<Mutex<Vec<String>>>) {
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let w = warnings.clone();
    let t = BufferedTracker::new(
        Arc::new(store.clone()),
        BufferOptions {
            flush_timeout,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            warn: Arc::new(move |m: &str| {
                eprintln!("{m}");
                w.lock().unwrap().push(m.to_string());
            }),
            ..BufferOptions::default()
        },
    );
    (t, warnings)
}

#[test]
fn rest_backend_against_mlflow_server() {
    let Some(py) = venv_python("rest_backend_against_mlflow_server") else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = MlflowServer::new(&py, tmp.path());
    server.start();
    let uri = server.uri();
    let store = RestStore::with_options(
        &uri,
        RestOptions { staging_dir: tmp.path().join("staging"), ..RestOptions::default() },
    )
    .unwrap();

    // Experiments: get-or-create is idempotent; Default is "0".
    let exp = store.get_or_create_experiment("rest check").unwrap();
    assert_eq!(store.get_or_create_experiment("rest check").unwrap(), exp);
    assert_eq!(store.get_or_create_experiment("Default").unwrap(), "0");

    // A run with caller tags and a name.
    let run = store.create_run(&exp, "rest-run", &[("stage".to_string(), "train".to_string())]).unwrap();
    assert_eq!(run.run_id().len(), 32);
    assert_eq!(run.experiment_id(), exp);
    assert_eq!(run.run_name(), "rest-run");
    let info = run.info().unwrap();
    assert_eq!(info.status, RunStatus::Running);
    assert_eq!(info.artifact_uri, format!("mlflow-artifacts:/{exp}/{}/artifacts", run.run_id()));
    assert!(info.start_time > 1_600_000_000_000 && info.end_time.is_none());
    assert!(run.artifact_dir().starts_with(tmp.path().join("staging")));

    // Params: immutable, validated before any request.
    run.log_params(&[("lr", "0.001"), ("arch", "resnet/small"), ("note", "it's: #1")]).unwrap();
    run.log_param("lr", "0.001").unwrap();
    match run.log_param("lr", 0.01) {
        Err(TrackingError::ParamChanged { existing, new, .. }) => {
            assert_eq!((existing.as_str(), new.as_str()), ("0.001", "0.01"))
        }
        other => panic!("expected ParamChanged, got {other:?}"),
    }
    assert!(matches!(run.log_params(&[("ok", "1"), ("../x", "2")]), Err(TrackingError::InvalidName { .. })));
    assert_eq!(run.params().unwrap().len(), 3);

    // Metrics: exact values and steps, non-finite values too.
    let loss = [0.5, 0.1 + 0.2, 1e-20];
    let acc = [0.9, 0.975, 0.99];
    for step in 0..3 {
        run.log_metrics(&[("loss", loss[step]), ("val/acc", acc[step])], step as i64 + 1).unwrap();
    }
    let hist = run.metric_history("loss").unwrap();
    assert_eq!(hist.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(), [(0.5, 1), (0.1 + 0.2, 2), (1e-20, 3)]);
    assert!(hist.iter().all(|p| p.0 > 1_600_000_000_000));
    run.log_metric("odd", f64::NAN, 0).unwrap();
    run.log_metric("odd", f64::NEG_INFINITY, 1).unwrap();
    let odd = run.metric_history("odd").unwrap();
    // MLflow's SQL store keeps NaN but clamps infinities to +-f64::MAX.
    assert!(odd[0].1.is_nan() && odd[1].1 == f64::MIN, "{odd:?}");
    assert!(run.metric_history("never").unwrap().is_empty());
    // More than one log-batch request's worth, in one call.
    let many: Vec<(String, f64)> = (0..1500).map(|i| (format!("layer{i}/norm"), i as f64)).collect();
    run.log_metrics(&many, 0).unwrap();
    assert_eq!(run.metric_history("layer1499/norm").unwrap()[0].1, 1499.0);

    // Tags.
    run.set_tag("note", "multi\nline: 'quoted' #x").unwrap();
    let tags: BTreeMap<String, String> = run.tags().unwrap();
    assert_eq!(tags["mlflow.runName"], "rest-run");
    assert_eq!(tags["mlflow.source.type"], "LOCAL");
    assert!(tags.contains_key("mlflow.user") && tags.contains_key("mlflow.source.name"));
    assert_eq!(tags["stage"], "train");
    assert_eq!(tags["note"], "multi\nline: 'quoted' #x");

    // Artifacts through the proxy: names needing URL encoding, binary bytes.
    let weights: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let src = tmp.path().join("model weights+v1.bin");
    fs::write(&src, &weights).unwrap();
    assert_eq!(run.log_artifact(&src, Some("checkpoints")).unwrap(), "checkpoints/model weights+v1.bin");
    assert_eq!(run.log_artifact_bytes("notes.txt", b"hello", None).unwrap(), "notes.txt");
    let export = tmp.path().join("export");
    fs::create_dir_all(export.join("sub")).unwrap();
    fs::write(export.join("model.onnx"), b"onnx!").unwrap();
    fs::write(export.join("sub/meta.json"), b"{}").unwrap();
    assert_eq!(run.log_artifacts(&export, Some("model")).unwrap(), ["model/model.onnx", "model/sub/meta.json"]);
    assert!(run.log_artifact_bytes("x", b"", Some("../out")).is_err());
    assert_eq!(store.download_artifact(run.run_id(), "checkpoints/model weights+v1.bin").unwrap(), weights);

    // Lookups and errors keep MLflow's codes.
    let missing = "0123456789abcdef0123456789abcdef";
    assert!(matches!(store.open_run(missing), Err(TrackingError::RunNotFound(_))));
    assert!(matches!(store.create_run("987654321", "x", &[]), Err(TrackingError::ExperimentNotFound(_))));
    match store.set_tags(missing, &[("k", "v")]) {
        Err(e @ TrackingError::Http { status: 404, .. }) => {
            assert_eq!(e.mlflow_error_code(), Some("RESOURCE_DOES_NOT_EXIST"));
            assert!(!e.is_transient());
        }
        other => panic!("expected HTTP 404, got {other:?}"),
    }

    // Statuses through runs/update, via the URI entry point (buffered tracker).
    let dynamic = open_tracker(&uri).unwrap();
    let reopened = dynamic.open_run(run.run_id()).unwrap();
    assert_eq!(reopened.run_name(), "rest-run");
    reopened.end(RunStatus::Finished).unwrap();
    let info = run.info().unwrap();
    assert_eq!(info.status, RunStatus::Finished);
    assert!(info.end_time.unwrap() >= info.start_time);
    reopened.resume().unwrap();
    assert_eq!(run.status().unwrap(), RunStatus::Running);
    run.end(RunStatus::Finished).unwrap();
    let failed = dynamic.create_run(&exp, "", &[("mlflow.runName".into(), "will-fail".into())]).unwrap();
    assert_eq!(failed.run_name(), "will-fail");
    failed.end(RunStatus::Failed).unwrap();
    let killed = dynamic.create_run(&exp, "", &[]).unwrap();
    assert!(!killed.run_name().is_empty(), "the server names unnamed runs");
    killed.end(RunStatus::Killed).unwrap();
    assert!(killed.end(RunStatus::Running).is_err());
    // A 4xx through the buffering wrapper is an error, not a buffered value.
    let e = reopened.log_param("lr", "0.5").unwrap_err();
    assert!(matches!(e, TrackingError::ParamChanged { .. }), "{e:?}");
    assert!(dynamic.log_metrics(missing, &[("m", 1.0)], 0, 1).is_err());

    // ---- The server goes away in the middle of a run and comes back. ----
    let (tracker, warnings) = buffered(&store, Duration::from_secs(60));
    let survivor = tracker.create_run(&exp, "survivor", &[]).unwrap();
    survivor.log_param("epochs", 5).unwrap();
    let epoch_loss = |e: i64| 1.0 / e as f64;
    for epoch in 1..=2 {
        survivor.log_metrics(&[("loss", epoch_loss(epoch)), ("epoch", epoch as f64)], epoch).unwrap();
    }
    // A second run whose end must give up quickly while the server is down.
    let (impatient_tracker, _) = buffered(&store, Duration::from_secs(1));
    let impatient = impatient_tracker.create_run(&exp, "impatient", &[]).unwrap();

    server.stop();
    for epoch in 3..=4 {
        survivor.log_metrics(&[("loss", epoch_loss(epoch)), ("epoch", epoch as f64)], epoch).unwrap();
    }
    survivor.set_tag("outage", "seen").unwrap();
    assert_eq!(tracker.pending(), 5);
    {
        let w = warnings.lock().unwrap();
        assert_eq!(w.len(), 1, "one warning per outage: {w:?}");
        assert!(w[0].starts_with("warning: MLflow server unreachable, buffering 2 metric(s)"), "{w:?}");
    }
    impatient.log_metric("loss", 0.75, 1).unwrap();
    let t = Instant::now();
    match impatient.end(RunStatus::Finished) {
        Err(e @ TrackingError::Unsent { pending: 1, .. }) => assert!(e.to_string().starts_with("1 value(s)"), "{e}"),
        other => panic!("expected Unsent {{ pending: 1 }}, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "end waited {:?}", t.elapsed());

    server.start();
    survivor.log_metrics(&[("loss", epoch_loss(5)), ("epoch", 5.0)], 5).unwrap();
    survivor.end(RunStatus::Finished).unwrap();
    assert_eq!(tracker.pending(), 0);
    let survived = survivor.metric_history("loss").unwrap();
    assert_eq!(survived.iter().map(|p| p.2).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "{survived:?}");
    assert_eq!(survived.iter().map(|p| p.1).collect::<Vec<_>>(), (1..=5).map(epoch_loss).collect::<Vec<_>>());
    assert_eq!(survivor.metric_history("epoch").unwrap().len(), 5);
    assert_eq!(survivor.tags().unwrap()["outage"], "seen");
    assert_eq!(survivor.status().unwrap(), RunStatus::Finished);
    assert_eq!(warnings.lock().unwrap().iter().filter(|w| w.contains("unreachable")).count(), 1);
    impatient.end(RunStatus::Finished).unwrap();
    assert_eq!(impatient.metric_history("loss").unwrap().len(), 1);

    // ---- MLflow's own client agrees with all of it. ----
    let run_json = |h: &RunHandle, status: &str, extra: Value| {
        let mut v = json!({"run_id": h.run_id(), "run_name": h.run_name(), "status": status});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    let expect = json!({
        "experiment_name": "rest check",
        "experiment_id": exp,
        "runs": [
            run_json(&run, "FINISHED", json!({
                "params": {"lr": "0.001", "arch": "resnet/small", "note": "it's: #1"},
                "tags": tags,
                "metrics": {
                    "loss": points(&run.metric_history("loss").unwrap()),
                    "val/acc": points(&run.metric_history("val/acc").unwrap()),
                },
                "artifacts": {
                    "": [["checkpoints", true, null], ["model", true, null], ["notes.txt", false, 5]],
                    "checkpoints": [["checkpoints/model weights+v1.bin", false, weights.len()]],
                    "model/sub": [["model/sub/meta.json", false, 2]],
                },
                "contents": {
                    "checkpoints/model weights+v1.bin": hex(&weights),
                    "notes.txt": hex(b"hello"),
                    "model/model.onnx": hex(b"onnx!"),
                },
            })),
            run_json(&failed, "FAILED", json!({"tags": {"mlflow.runName": "will-fail"}})),
            run_json(&killed, "KILLED", json!({})),
            run_json(&survivor, "FINISHED", json!({
                "params": {"epochs": "5"},
                "tags": {"outage": "seen"},
                "metrics": {"loss": points(&survived)},
            })),
            run_json(&impatient, "FINISHED", json!({})),
        ],
    });
    assert_eq!(expect["runs"][3]["metrics"]["loss"].as_array().unwrap().len(), 5);
    run_python_check(&py, &uri, &expect, tmp.path());

    drop(dynamic);
    drop(server);
    eprintln!("REST backend test took {:.1}s", started.elapsed().as_secs_f64());
}

//! Rust-only: what we write we read back, and the store keeps MLflow's rules
//! (immutable params, validated keys, atomic files) without Python to judge.

use std::fs;
use std::path::Path;

use tracking::{open_tracker, FileStore, RunStatus, Tracker, TrackingError};

fn all_files(dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn write_then_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ml runs"); // a space: URIs must be encoded
    let store = FileStore::new(&root).unwrap();

    // Default experiment and trash exist, as MLflow creates them.
    let default_meta = fs::read_to_string(root.join("0/meta.yaml")).unwrap();
    assert!(default_meta.contains("name: Default\n"), "{default_meta}");
    assert!(default_meta.contains("experiment_id: '0'\n"), "{default_meta}");
    assert!(root.join(".trash").is_dir());
    assert_eq!(store.get_or_create_experiment("Default").unwrap(), "0");

    let exp = store.get_or_create_experiment("digits").unwrap();
    assert_eq!(exp.len(), 18);
    assert_eq!(store.get_or_create_experiment("digits").unwrap(), exp);
    let exp_meta = fs::read_to_string(root.join(&exp).join("meta.yaml")).unwrap();
    let uri = format!("artifact_location: file://{}/{exp}\n", root.display().to_string().replace(' ', "%20"));
    assert!(exp_meta.contains(&uri), "{exp_meta}\nexpected {uri}");

    let run = store.create_run(&exp, "baseline", &[("stage".to_string(), "train".to_string())]).unwrap();
    assert_eq!(run.run_id().len(), 32);
    assert!(run.run_id().chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(run.experiment_id(), exp);
    assert_eq!(run.status().unwrap(), RunStatus::Running);
    assert_eq!(run.artifact_dir(), root.join(&exp).join(run.run_id()).join("artifacts"));

    run.log_param("lr", 0.001).unwrap();
    run.log_params(&[("batch_size", "64"), ("arch", "resnet/small")]).unwrap();
    run.log_param("lr", "0.001").unwrap(); // same value again: fine
    match run.log_param("lr", 0.01) {
        Err(TrackingError::ParamChanged { existing, new, .. }) => {
            assert_eq!((existing.as_str(), new.as_str()), ("0.001", "0.01"))
        }
        other => panic!("expected ParamChanged, got {other:?}"),
    }
    // All-or-nothing: the bad key stops the good one too.
    assert!(run.log_params(&[("ok_key", "1"), ("../escape", "2")]).is_err());
    assert!(!run.params().unwrap().contains_key("ok_key"));

    for bad in ["../x", "/abs", "a//b", "", "a\nb", "semi;colon"] {
        assert!(
            matches!(run.log_metric(bad, 1.0, 0), Err(TrackingError::InvalidName { .. })),
            "metric key {bad:?} accepted"
        );
        assert!(run.set_tag(bad, "v").is_err(), "tag key {bad:?} accepted");
    }
    assert!(run.log_param("long", "x".repeat(6001)).is_err());

    let values = [0.5, 0.1 + 0.2, 1e-20];
    for (step, v) in values.iter().enumerate() {
        run.log_metrics(&[("train/loss", *v), ("acc", 1.0 - v)], step as i64).unwrap();
    }
    let hist = run.metric_history("train/loss").unwrap();
    assert_eq!(hist.len(), 3);
    for (i, (ts, v, step)) in hist.iter().enumerate() {
        assert!(*ts > 1_600_000_000_000);
        assert_eq!(*v, values[i]); // exact: repr round-trips
        assert_eq!(*step, i as i64);
    }
    assert!(run.metric_history("never_logged").unwrap().is_empty());
    let line = fs::read_to_string(run.artifact_dir().parent().unwrap().join("metrics/train/loss")).unwrap();
    let second: Vec<&str> = line.lines().nth(1).unwrap().split(' ').collect();
    assert_eq!(&second[1..], ["0.30000000000000004", "1"]);

    run.set_tag("note", "multi\nline: 'quoted' #x").unwrap();
    let tags = run.tags().unwrap();
    assert_eq!(tags["mlflow.runName"], "baseline");
    assert_eq!(tags["mlflow.source.type"], "LOCAL");
    assert!(tags.contains_key("mlflow.user"));
    assert!(tags.contains_key("mlflow.source.name"));
    assert_eq!(tags["stage"], "train");
    assert_eq!(tags["note"], "multi\nline: 'quoted' #x");

    let src = tmp.path().join("weights.bin");
    fs::write(&src, b"\x00\x01weights").unwrap();
    assert_eq!(run.log_artifact(&src, Some("checkpoints")).unwrap(), "checkpoints/weights.bin");
    assert_eq!(run.log_artifact_bytes("summary.json", b"{}", None).unwrap(), "summary.json");
    assert_eq!(fs::read(run.artifact_dir().join("checkpoints/weights.bin")).unwrap(), b"\x00\x01weights");
    assert!(run.log_artifact_bytes("x", b"", Some("../out")).is_err());
    assert!(run.log_artifact(tmp.path(), None).is_err(), "a directory is not a file artifact");

    run.end(RunStatus::Finished).unwrap();
    assert!(run.end(RunStatus::Running).is_err());
    let info = run.info().unwrap();
    assert_eq!(info.status, RunStatus::Finished);
    assert!(info.end_time.unwrap() >= info.start_time);
    assert_eq!(info.run_name, "baseline");
    let meta = fs::read_to_string(root.join(&exp).join(run.run_id()).join("meta.yaml")).unwrap();
    assert!(meta.contains("status: 3\n") && meta.contains("tags: []\n"), "{meta}");

    // A fresh store (another process) finds the run in its experiment and resumes it.
    let again = FileStore::new(&root).unwrap();
    let resumed = again.open_run(run.run_id()).unwrap();
    assert_eq!(resumed.experiment_id(), exp);
    assert_eq!(resumed.run_name(), "baseline");
    assert_eq!(resumed.artifact_dir(), run.artifact_dir());
    assert_eq!(resumed.params().unwrap()["arch"], "resnet/small");
    assert_eq!(resumed.params().unwrap().len(), 3);
    resumed.resume().unwrap();
    assert_eq!(resumed.status().unwrap(), RunStatus::Running);
    assert_eq!(resumed.info().unwrap().end_time, None);
    let last_step = resumed.metric_history("train/loss").unwrap().last().unwrap().2;
    resumed.log_metric("train/loss", 0.01, last_step + 1).unwrap();
    assert_eq!(run.metric_history("train/loss").unwrap().len(), 4);
    resumed.end(RunStatus::Killed).unwrap();
    assert_eq!(run.status().unwrap(), RunStatus::Killed);

    // Via the URI entry point and a trait object.
    let dynamic = open_tracker(again.uri()).unwrap();
    assert_eq!(dynamic.open_run(run.run_id()).unwrap().experiment_id(), exp);
    // http(s) opens the REST backend lazily (no request), anything else non-local is refused.
    assert!(open_tracker("http://localhost:5000").is_ok());
    assert!(matches!(open_tracker("ftp://host/x"), Err(TrackingError::UnsupportedUri { .. })));

    assert!(matches!(store.open_run("0123456789abcdef0123456789abcdef"), Err(TrackingError::RunNotFound(_))));
    assert!(store.open_run("../../etc").is_err());
    assert!(matches!(store.create_run("123", "x", &[]), Err(TrackingError::ExperimentNotFound(_))));
    assert!(store.create_run(&exp, "a", &[("mlflow.runName".into(), "b".into())]).is_err());

    // No temp files left anywhere.
    let mut files = Vec::new();
    all_files(&root, &mut files);
    assert!(files.iter().all(|f| !f.contains(".tmp-")), "{files:#?}");
}

#[test]
fn deleted_experiment_name_is_not_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path()).unwrap();
    let id = store.get_or_create_experiment("old").unwrap();
    // What `mlflow experiments delete` does in a file store.
    let meta = tmp.path().join(&id).join("meta.yaml");
    let text = fs::read_to_string(&meta).unwrap().replace("lifecycle_stage: active", "lifecycle_stage: deleted");
    fs::write(&meta, text).unwrap();
    fs::rename(tmp.path().join(&id), tmp.path().join(".trash").join(&id)).unwrap();
    assert!(matches!(store.get_or_create_experiment("old"), Err(TrackingError::ExperimentDeleted { .. })));
}

#[test]
fn concurrent_handles_share_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path()).unwrap();
    let exp = store.get_or_create_experiment("threads").unwrap();
    let run = store.create_run(&exp, "", &[]).unwrap();
    assert!(run.run_name().starts_with("run-"));
    std::thread::scope(|s| {
        for t in 0..4 {
            let run = run.clone();
            s.spawn(move || {
                for step in 0..50 {
                    run.log_metric("m", (t * 100 + step) as f64, step).unwrap();
                }
            });
        }
    });
    let hist = run.metric_history("m").unwrap();
    assert_eq!(hist.len(), 200);
}

/// Trainers started side by side (an ensemble's members) each look up their experiment and
/// create it when missing; without the store's create lock several of them would find none and
/// make experiments of the same name. Each thread opens its own store, as each process does.
#[test]
fn concurrent_get_or_create_makes_one_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    FileStore::new(&root).unwrap();
    for round in 0..5 {
        let name = format!("side-by-side-{round}");
        let barrier = std::sync::Barrier::new(8);
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let store = FileStore::new(&root).unwrap();
                        barrier.wait();
                        store.get_or_create_experiment(&name).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "round {round}: ids {ids:?}");
        let named = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path().join("meta.yaml"))
            .filter(|m| fs::read_to_string(m).is_ok_and(|t| t.contains(&format!("name: {name}\n"))))
            .count();
        assert_eq!(named, 1, "round {round}: {named} experiments named {name}");
    }
}

//! `exporter --run ... --register NAME --alias champion` against a real `mlflow server` (sqlite,
//! artifact proxy, 127.0.0.1 on a free port) and against a file store, judged by MLflow itself:
//! `mlflow.pyfunc.load_model` on `runs:/<id>/model`, `models:/NAME/1` and `models:/NAME@champion`
//! must predict what our inference predicts on the registry model `infer` resolves.

mod common;
#[path = "../../tracking/tests/common/mlflow_server.rs"]
mod mlflow_server;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use data::Split;
use models::approx::Tolerance;
use models::{Arch, ModelConfig};
use tracking::{FileStore, RestStore, Tracker};

const NAME: &str = "digits";
const ALIAS: &str = "champion";
/// Sample test images predicted on both sides.
const IMAGES: usize = 64;
/// Logits from Python onnxruntime and ours may differ by float32 rounding (other batch size).
const TOL: f32 = 1e-4;

fn exporter(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exporter"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .expect("run exporter")
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "exporter failed\nstdout:\n{out}\nstderr:\n{err}");
    out.into_owned()
}

/// MLflow's predictions (flat logits per model URI) and registry view, from tests/registry.py.
fn mlflow_view(uri: &str, model_uris: &[String], work: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry.py");
    let o = Command::new(venv_python())
        .arg(&script)
        .args([uri, sample_zip().to_str().unwrap(), &IMAGES.to_string(), NAME, ALIAS])
        .args(model_uris)
        .current_dir(work)
        .env("MLFLOW_ALLOW_FILE_STORE", "true")
        .env("GIT_PYTHON_REFRESH", "quiet")
        .output()
        .expect("run the venv python");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "registry.py failed:\n{out}\n{err}");
    let line =
        out.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("no RESULT in:\n{out}\n{err}"));
    serde_json::from_str(line).unwrap()
}

/// Our side: the model `infer` would load for `spec`, run with ONNX Runtime on the same images.
fn our_logits(spec: &str, tracking_uri: &str, cache: &Path) -> (Vec<f32>, inference::ResolvedModel) {
    let opts = inference::ResolveOptions {
        models_dirs: vec![cache.join("no-models-here")],
        tracking_uri: Some(tracking_uri.to_string()),
        cache_dir: cache.to_path_buf(),
    };
    let resolved = inference::resolve_model(spec, &opts).unwrap_or_else(|e| panic!("resolving {spec}: {e}"));
    let model = inference::Model::load(&resolved.path, inference::BackendKind::Ort, 1).unwrap();
    let test = data::load(&sample_zip(), Split::Test).unwrap();
    let images = test.subset(&(0..IMAGES).collect::<Vec<_>>());
    (inference::predict(&model, &images, 16).unwrap().logits, resolved)
}

/// Same class wherever the top two logits are further apart than the tolerance, and logits
/// within it; and the random network must not predict one class for everything (or the
/// comparison would prove little).
fn assert_same_predictions(ours: &[f32], theirs: &serde_json::Value, what: &str) {
    let theirs: Vec<f32> = theirs
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no logits"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    // Lengths, NaN and infinities included: they fail naming the value.
    models::approx::assert_close(
        ours,
        &theirs,
        Tolerance::abs(f64::from(TOL)),
        &format!("{what}: ours vs MLflow's logits"),
    );
    let ref_labels = common_labels(&theirs);
    let our_labels = inference::labels_from_logits(ours, IMAGES, 10);
    let mut classes = ref_labels.iter().map(|(l, _)| *l).collect::<Vec<_>>();
    for (i, ((r, decisive), o)) in ref_labels.iter().zip(&our_labels).enumerate() {
        if *decisive {
            assert_eq!(usize::from(*o), *r, "{what}: image {i}");
        }
    }
    classes.sort_unstable();
    classes.dedup();
    assert!(classes.len() >= 3, "{what}: the test network predicts only classes {classes:?}");
}

/// A resnet_digits checkpoint of random weights whose classifier is recentred: each logit's
/// mean over sample images (measured with the Rust reference evaluator) is subtracted and it is
/// scaled to unit spread. Plain random weights give every image the same class, which would
/// make "predicts the same classes" prove little.
fn write_varied_checkpoint(dir: &Path, meta: &models::CheckpointMeta, seed: u64) -> models::Graph {
    const CALIBRATION: usize = 16;
    let graph = models::build(&meta.model).unwrap();
    let mut w = random_weights(&graph, seed);
    let all: std::collections::BTreeMap<&str, Vec<f32>> = w.iter().map(|(k, t)| (k.as_str(), t.data.clone())).collect();
    let images = data::load(&sample_zip(), Split::Test).unwrap();
    let pixels = images.to_f32(&(0..CALIBRATION).collect::<Vec<_>>());
    let z = models::reference::forward(&graph, &meta.model, &|k| all.get(k).map(Vec::as_slice), &pixels, CALIBRATION)
        .unwrap();
    let classes = meta.model.num_classes;
    let (mut weight, mut bias) = (all["fc.weight"].clone(), all["fc.bias"].clone());
    let features = weight.len() / classes;
    for c in 0..classes {
        let col: Vec<f32> = (0..CALIBRATION).map(|i| z[i * classes + c]).collect();
        let mean = col.iter().sum::<f32>() / CALIBRATION as f32;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / CALIBRATION as f32).sqrt();
        // At least a tenth of the mean: float32 cancellation stays within the self-check's tolerance.
        let scale = std.max(0.1 * mean.abs()).max(1e-3);
        weight[c * features..(c + 1) * features].iter_mut().for_each(|v| *v /= scale);
        bias[c] = (bias[c] - mean) / scale;
    }
    w.insert("fc.weight".into(), F32Tensor::new(vec![classes, features], &weight));
    w.insert("fc.bias".into(), F32Tensor::new(vec![classes], &bias));
    write_weights(dir, &w);
    write_meta(dir, meta);
    graph
}

/// A run in `tracker` that logged a (varied, random) resnet_digits checkpoint under
/// `checkpoint/`, as the trainer logs its best one; the checkpoint is also left in `ckpt`.
fn training_run(
    tracker: &dyn Tracker,
    uri: &str,
    ckpt: &Path,
    seed: u64,
) -> (tracking::RunHandle, models::CheckpointMeta, models::Graph) {
    let exp = tracker.get_or_create_experiment("registry-test").unwrap();
    let run = tracker.create_run(&exp, "resnet_digits", &[]).unwrap();
    let mut meta = meta_for(ModelConfig::new(Arch::ResnetDigits));
    meta.run_id = Some(run.run_id().to_string());
    meta.tracking_uri = Some(uri.to_string());
    let graph = write_varied_checkpoint(ckpt, &meta, seed);
    for f in [models::CHECKPOINT_META_FILE, models::CHECKPOINT_WEIGHTS_FILE] {
        run.log_artifact(ckpt.join(f), Some("checkpoint")).unwrap();
    }
    (run, meta, graph)
}

fn common_labels(logits: &[f32]) -> Vec<(usize, bool)> {
    logits
        .chunks_exact(10)
        .map(|row| {
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            (inference::argmax(row), s[0] - s[1] > 2.0 * TOL)
        })
        .collect()
}

#[test]
fn export_register_alias_on_a_tracking_server() {
    let Some(python) = mlflow_server::venv_python("export_register_alias_on_a_tracking_server") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = mlflow_server::MlflowServer::new(&python, tmp.path());
    server.start();
    let uri = server.uri();

    // A training run on the server that logged its best checkpoint as the trainer does.
    let rest = RestStore::new(&uri).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let (run, _, _) = training_run(&rest, &uri, &ckpt, 21);

    let out = tmp.path().join("exported").join("a.onnx");
    let stdout = ok(&exporter(
        &[
            "--run",
            run.run_id(),
            "--tracking-uri",
            &uri,
            "-o",
            out.to_str().unwrap(),
            "--register",
            NAME,
            "--alias",
            ALIAS,
        ],
        tmp.path(),
    ));
    assert!(stdout.contains(&format!("fetched the checkpoint of run {}", run.run_id())), "{stdout}");
    assert!(stdout.contains(&format!("registered models:/{NAME}/1 (new registered model)")), "{stdout}");
    assert!(stdout.contains(&format!("alias models:/{NAME}@{ALIAS} -> version 1")), "{stdout}");
    // Through the artifact proxy: the same bytes as the local file.
    let onnx = std::fs::read(&out).unwrap();
    assert_eq!(rest.download_artifact(run.run_id(), "model/model.onnx").unwrap(), onnx);
    let mlmodel = String::from_utf8(rest.download_artifact(run.run_id(), "model/MLmodel").unwrap()).unwrap();
    assert!(mlmodel.contains(&format!("run_id: \"{}\"", run.run_id())), "{mlmodel}");

    // --checkpoint whose config.json names the server run: logged there too; the name exists,
    // so this is version 2 and the alias stays on 1.
    let stdout = ok(&exporter(
        &["--checkpoint", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap(), "--register", NAME],
        tmp.path(),
    ));
    assert!(stdout.contains(&format!("registered models:/{NAME}/2 (new version)")), "{stdout}");

    let cache = tmp.path().join("cache");
    let (by_alias, resolved) = our_logits(&format!("models:/{NAME}@{ALIAS}"), &uri, &cache);
    let reg = resolved.registry.as_ref().expect("resolved through the registry");
    assert_eq!((reg.version.version, reg.version.run_id.as_deref(), reg.downloaded), (1, Some(run.run_id()), true));
    assert!(resolved.path.starts_with(&cache), "{}", resolved.path.display());
    assert_eq!(std::fs::read(&resolved.path).unwrap(), onnx);
    let (by_version, resolved) = our_logits(&format!("models:/{NAME}/1"), &uri, &cache);
    assert!(!resolved.registry.unwrap().downloaded, "version 1 is cached by now");
    assert_eq!(by_alias, by_version);
    // A plain name goes through the registry when a server is configured: the champion.
    let (_, resolved) = our_logits(NAME, &uri, &cache);
    assert_eq!(resolved.registry.map(|r| r.version.version), Some(1));

    let model_uris =
        [format!("runs:/{}/model", run.run_id()), format!("models:/{NAME}/1"), format!("models:/{NAME}@{ALIAS}")];
    let view = mlflow_view(&uri, &model_uris, tmp.path());
    for m in &model_uris {
        assert_same_predictions(&by_alias, &view["logits"][m], m);
    }
    assert_eq!(view["alias_version"], 1);
    assert_eq!(view["versions"], serde_json::json!([1, 2]));
    assert_eq!(view["run_ids"], serde_json::json!([run.run_id(), run.run_id()]));
    assert_eq!(view["statuses"], serde_json::json!(["READY", "READY"]));
    let artifact_uri = run.info().unwrap().artifact_uri;
    assert_eq!(view["sources"][0], format!("{artifact_uri}/model"));

    // Unknown versions and aliases are clear errors naming what is missing.
    let opts =
        inference::ResolveOptions { models_dirs: vec![], tracking_uri: Some(uri.clone()), cache_dir: cache.clone() };
    let err =
        format!("{:#}", anyhow::Error::new(inference::resolve_model(&format!("models:/{NAME}/9"), &opts).unwrap_err()));
    assert!(err.contains("models:/digits/9") && err.contains("version 9"), "{err}");
    let err = format!(
        "{:#}",
        anyhow::Error::new(inference::resolve_model(&format!("models:/{NAME}@nope"), &opts).unwrap_err())
    );
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn export_register_alias_on_a_file_store_and_bad_checkpoints_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("mlruns");
    let store = FileStore::new(&store_dir).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let (run, meta, graph) = training_run(&store, &store_dir.display().to_string(), &ckpt, 22);
    let exp = run.experiment_id().to_string();
    let store_arg = store_dir.to_str().unwrap();

    // No -o: exported/<arch>.onnx under the current folder.
    let stdout = ok(&exporter(
        &["--run", run.run_id(), "--tracking-uri", store_arg, "--register", NAME, "--alias", ALIAS],
        tmp.path(),
    ));
    assert!(stdout.contains(&format!("registered models:/{NAME}/1")), "{stdout}");
    let out = tmp.path().join("exported/resnet_digits.onnx");
    let onnx = std::fs::read(&out).unwrap();
    assert_eq!(std::fs::read(run.artifact_dir().join("model/model.onnx")).unwrap(), onnx);

    // --no-mlflow: the run's checkpoint is exported, the run is left alone.
    let plain = tmp.path().join("plain.onnx");
    let stdout = ok(&exporter(
        &["--run", run.run_id(), "--tracking-uri", store_arg, "--no-mlflow", "-o", plain.to_str().unwrap()],
        tmp.path(),
    ));
    assert!(!stdout.contains("logged") && std::fs::read(&plain).unwrap() == onnx, "{stdout}");

    let cache = tmp.path().join("cache");
    let (ours, resolved) = our_logits(&format!("models:/{NAME}@{ALIAS}"), store.uri(), &cache);
    assert_eq!(resolved.path, run.artifact_dir().join("model/model.onnx"), "a file store's model is used in place");
    assert!(!cache.exists());

    let model_uris =
        [format!("runs:/{}/model", run.run_id()), format!("models:/{NAME}/1"), format!("models:/{NAME}@{ALIAS}")];
    let view = mlflow_view(store.uri(), &model_uris, tmp.path());
    for m in &model_uris {
        assert_same_predictions(&ours, &view["logits"][m], m);
    }
    assert_eq!(view["alias_version"], 1);
    assert_eq!(view["versions"], serde_json::json!([1]));
    assert_eq!(view["run_ids"], serde_json::json!([run.run_id()]));

    // A second run whose checkpoint has one tensor of the wrong shape and one missing: a clear
    // error, and nothing written - no ONNX file, no MLflow model, no registry version.
    let bad_run = store.create_run(&exp, "resnet_digits", &[]).unwrap();
    let bad = tmp.path().join("bad");
    let mut w = random_weights(&graph, 23);
    w.remove("layer2.0.bn1.running_var").unwrap();
    w.insert("fc.weight".into(), F32Tensor::new(vec![10, 64], &vec![0.0; 640]));
    write_weights(&bad, &w);
    write_meta(&bad, &meta);
    for f in [models::CHECKPOINT_META_FILE, models::CHECKPOINT_WEIGHTS_FILE] {
        bad_run.log_artifact(bad.join(f), Some("checkpoint")).unwrap();
    }
    let bad_out = tmp.path().join("bad.onnx");
    let o = exporter(
        &["--run", bad_run.run_id(), "--tracking-uri", store_arg, "-o", bad_out.to_str().unwrap(), "--register", NAME],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    for needle in ["layer2.0.bn1.running_var", "fc.weight", "[10, 128]", "[10, 64]"] {
        assert!(stderr.contains(needle), "stderr should name {needle}: {stderr}");
    }
    assert!(!bad_out.exists());
    assert!(!bad_run.artifact_dir().join("model").exists());
    assert!(!store_dir.join("models").join(NAME).join("version-2").exists());

    // A run without a checkpoint, and a missing store, are named.
    let empty_run = store.create_run(&exp, "nothing", &[]).unwrap();
    let o = exporter(
        &["--run", empty_run.run_id(), "--tracking-uri", store_arg, "-o", bad_out.to_str().unwrap()],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("checkpoint/config.json") && stderr.contains(empty_run.run_id()),
        "{stderr}"
    );
    let o = exporter(&["--run", run.run_id(), "--tracking-uri", tmp.path().join("gone").to_str().unwrap()], tmp.path());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("gone") && stderr.contains("does not exist"), "{stderr}");
    assert!(!bad_out.exists());
}

//! The `trainer` binary end to end on the committed sample: checkpoints, the MLflow run read
//! back with the real mlflow package, bad input handling and CPU determinism.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use models::{Arch, CheckpointMeta};
use tch::{Device, Tensor};

/// `val_accuracy` of every `epoch k/N:` line, in order.
fn printed_accuracies(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let v =
                l.split("val_accuracy ").nth(1).and_then(|r| r.split_whitespace().next()).expect("val_accuracy field");
            v.parse().expect("accuracy is a number")
        })
        .collect()
}

const READ_RUN: &str = r#"
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
run = client.get_run(sys.argv[2])
def history(key):
    return [[m.step, m.value] for m in client.get_metric_history(sys.argv[2], key)]
print(json.dumps({
    "status": run.info.status,
    "run_name": run.info.run_name,
    "experiment": client.get_experiment(run.info.experiment_id).name,
    "params": run.data.params,
    "accuracy": history("accuracy"),
    "loss": history("loss"),
    "error": history("error"),
    "val_loss": history("val_loss"),
    "lr": history("lr"),
    "epoch_seconds": history("epoch_seconds"),
    "images_per_second": history("images_per_second"),
    "tags": run.data.tags,
    "artifacts": sorted(a.path for a in client.list_artifacts(sys.argv[2], "checkpoint")),
    "root_artifacts": sorted(a.path for a in client.list_artifacts(sys.argv[2])),
}))
"#;

fn mlflow_run(mlruns: &Path, run_id: &str) -> serde_json::Value {
    let out = Command::new(common::venv_python())
        .args(["-c", READ_RUN])
        .arg(mlruns)
        .arg(run_id)
        .env("MLFLOW_ALLOW_FILE_STORE", "true")
        .output()
        .expect("venv python runs");
    assert!(out.status.success(), "mlflow could not read run {run_id}: {}", common::text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mlflow output is not JSON ({e}): {}", common::text(&out.stdout)))
}

#[test]
fn trains_on_sample_and_mlflow_reads_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpts, mlruns) = (tmp.path().join("ckpts"), tmp.path().join("mlruns"));
    let extra = ["--model", "resnet18", "--epochs", "2", "--limit", "600", "--experiment", "trainer-cli-test"];
    let sample = common::sample_zip();
    let out = common::run_trainer(&common::trainer_args(&extra, &sample, tmp.path()));
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "trainer failed:\n{stdout}\n{}", common::text(&out.stderr));
    println!("{stdout}");
    assert!(stdout.contains("480 training, 120 validation"), "{stdout}");
    assert!(stdout.contains("mlflow ui --backend-store-uri"), "{stdout}");
    let accuracies = printed_accuracies(&stdout);
    assert_eq!(accuracies.len(), 2, "{stdout}");
    let run_id = common::printed_run_id(&stdout);

    // Checkpoints.
    let arch_dir = ckpts.join("resnet18");
    for sub in ["best", "last"] {
        for file in [models::CHECKPOINT_WEIGHTS_FILE, models::CHECKPOINT_META_FILE] {
            assert!(arch_dir.join(sub).join(file).is_file(), "missing {sub}/{file}");
        }
    }
    let best_meta = CheckpointMeta::load(&arch_dir.join("best").join(models::CHECKPOINT_META_FILE)).unwrap();
    let last_meta = CheckpointMeta::load(&arch_dir.join("last").join(models::CHECKPOINT_META_FILE)).unwrap();
    assert_eq!(best_meta.model.arch, Arch::Resnet18);
    assert_eq!(last_meta.epoch, 2);
    assert_eq!(best_meta.run_id.as_deref(), Some(run_id.as_str()));
    let abs_mlruns = mlruns.canonicalize().unwrap();
    assert_eq!(best_meta.tracking_uri.as_deref().map(PathBuf::from), Some(abs_mlruns.clone()));
    let best_acc = accuracies.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(accuracies[best_meta.epoch - 1], best_acc, "best/ is not the best epoch");
    assert!((best_meta.val_accuracy.unwrap() - best_acc).abs() <= 5e-7);

    // The best checkpoint reproduces its validation accuracy on the same split.
    let (_, model) = trainer::load_checkpoint(&arch_dir.join("best"), Device::Cpu).unwrap();
    let ds = data::load(&sample, data::Split::Train).unwrap().subset(&(0..600).collect::<Vec<_>>());
    let labels = ds.labels.clone().unwrap();
    let (_, val_idx) = data::stratified_split(&labels, data::VAL_FRACTION, data::SPLIT_SEED);
    let x = Tensor::from_slice(&ds.to_f32(&val_idx)).reshape([val_idx.len() as i64, 1, 28, 28]);
    let y = Tensor::from_slice(&val_idx.iter().map(|&i| i64::from(labels[i])).collect::<Vec<_>>());
    let (_, correct) = trainer::train::evaluate(&model.net, &x, &y, 256).unwrap();
    assert_eq!(correct as f64 / val_idx.len() as f64, best_meta.val_accuracy.unwrap());

    // The MLflow run, read by mlflow itself.
    let run = mlflow_run(&abs_mlruns, &run_id);
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["run_name"], "resnet18", "{run}");
    assert_eq!(run["experiment"], "trainer-cli-test", "{run}");
    let params = &run["params"];
    for (k, v) in [
        ("model", "resnet18"),
        ("epochs", "2"),
        ("batch_size", "64"),
        ("lr", "0.001"),
        ("lr_decay", "0.75"),
        ("val_fraction", "0.2"),
        ("seed", "42"),
        ("split_seed", "42"),
        ("in_channels", "1"),
        ("device", "cpu"),
        ("limit", "600"),
        ("experiment", "trainer-cli-test"),
        ("threads", "1"),
        ("train_size", "480"),
        ("val_size", "120"),
    ] {
        assert_eq!(params[k], v, "param {k}: {params}");
    }
    for k in ["data", "output_dir", "tracking_uri"] {
        assert!(params[k].is_string(), "param {k} not logged: {params}");
    }
    let history = run["accuracy"].as_array().unwrap();
    assert_eq!(history.len(), 2, "one accuracy per epoch: {run}");
    for (i, point) in history.iter().enumerate() {
        assert_eq!(point[0].as_i64(), Some(i as i64 + 1), "steps are epochs 1..N: {run}");
        let logged = point[1].as_f64().unwrap();
        assert!((logged - accuracies[i]).abs() <= 5e-7, "epoch {}: logged {logged}, printed {}", i + 1, accuracies[i]);
    }
    for key in ["loss", "val_loss", "error", "lr", "epoch_seconds", "images_per_second"] {
        assert_eq!(run[key].as_array().map(Vec::len), Some(2), "metric {key}: {run}");
    }
    let lr: Vec<f64> = run["lr"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert!((lr[0] - 1e-3).abs() < 1e-12 && (lr[1] - 0.75e-3).abs() < 1e-12, "lr schedule {lr:?}");
    let err0 = run["error"][0][1].as_f64().unwrap();
    assert!((err0 + accuracies[0] - 1.0).abs() < 1e-6);
    assert_eq!(run["artifacts"], serde_json::json!(common::CHECKPOINT_ARTIFACTS), "{run}");
    assert_eq!(run["root_artifacts"], serde_json::json!(common::BEST_EPOCH_ARTIFACTS), "{run}");
    assert_eq!(run["tags"]["device"], "cpu", "{run}");
    assert_eq!(run["tags"]["mlflow.source.git.commit"].as_str().map(str::len), Some(40), "{run}");
    // val_loss is the validation loss the trainer printed.
    let val_loss0 = run["val_loss"][0][1].as_f64().unwrap();
    assert!(stdout.contains(&format!("val_loss {val_loss0:.6}")), "{stdout}");
}

/// A labelled CSV with the sample's first `rows` rows, as text lines (header first).
fn sample_csv_lines(rows: usize) -> Vec<String> {
    let ds = common::sample();
    let mut lines = vec![std::iter::once("label".to_string())
        .chain((0..784).map(|i| format!("pixel{i}")))
        .collect::<Vec<_>>()
        .join(",")];
    for i in 0..rows {
        let label = ds.label(i).unwrap().to_string();
        lines.push(
            std::iter::once(label).chain(ds.image(i).iter().map(|p| p.to_string())).collect::<Vec<_>>().join(","),
        );
    }
    lines
}

#[test]
fn bad_input_fails_cleanly_without_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let good = sample_csv_lines(40);
    let edit = |line: usize, f: &dyn Fn(&str) -> String| {
        let mut l = good.clone();
        l[line - 1] = f(&l[line - 1]);
        l.join("\n") + "\n"
    };
    let replace_field = |col: usize, value: &'static str| {
        move |s: &str| {
            let mut fields: Vec<&str> = s.split(',').collect();
            fields[col] = value;
            fields.join(",")
        }
    };
    // (case, file content or None for a missing file, text stderr must contain)
    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("short_row", Some(edit(7, &|s: &str| s.rsplit_once(',').unwrap().0.to_string())), "train.csv:7".into()),
        ("non_numeric", Some(edit(12, &replace_field(300, "x7"))), "train.csv:12".into()),
        ("label_10", Some(edit(5, &replace_field(0, "10"))), "train.csv:5".into()),
        ("pixel_256", Some(edit(9, &replace_field(101, "256"))), "train.csv:9".into()),
        ("empty", Some(String::new()), "train.csv".into()),
        ("missing", None, "train.csv".into()),
    ];
    for (name, content, expect) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("train.csv");
        if let Some(c) = &content {
            std::fs::write(&csv, c).unwrap();
        }
        let ckpts = dir.join("ckpts");
        let args = common::trainer_args(&["--model", "m5", "--epochs", "1"], &csv, &dir);
        let out = common::run_trainer(&args);
        let stderr = common::text(&out.stderr);
        assert!(!out.status.success(), "{name}: trainer accepted bad input:\n{}", common::text(&out.stdout));
        assert!(stderr.contains(&expect), "{name}: stderr does not name {expect:?}:\n{stderr}");
        assert!(stderr.contains(csv.to_str().unwrap()) || stderr.contains("train.csv"), "{name}: {stderr}");
        for file in [models::CHECKPOINT_WEIGHTS_FILE, models::CHECKPOINT_META_FILE] {
            assert!(common::files_named(&ckpts, file).is_empty(), "{name}: a checkpoint was written");
        }
        assert!(!dir.join("mlruns").exists(), "{name}: an MLflow store was created before the data was validated");
    }

    // The good file itself trains (so the failures above are due to the edits).
    let dir = tmp.path().join("good");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.csv"), good.join("\n") + "\n").unwrap();
    let out = common::run_trainer(&common::trainer_args(
        &["--model", "squeezenet1_1", "--epochs", "1"],
        &dir.join("train.csv"),
        &dir,
    ));
    assert!(out.status.success(), "good csv failed: {}", common::text(&out.stderr));

    // Options that cannot work fail before anything is written, too.
    let mut bad_options: Vec<Vec<&str>> = vec![
        vec!["--epochs", "0"],
        vec!["--val-fraction", "1.5"],
        vec!["--in-channels", "7"],
        // Augmentation ranges while augmentation is off would be logged but never applied.
        vec!["--elastic", "5"],
        vec!["--recipe", "strong", "--no-augment", "--rotation", "5"],
        vec!["--recipe", "strong", "--elastic", "30", "--elastic-sigma", "0"],
        // Momentum cycling follows one-cycle's learning rate; the seed recipe's schedule is step.
        vec!["--cycle-momentum"],
    ];
    if !tch::Cuda::is_available() {
        bad_options.push(vec!["--device", "cuda"]);
    }
    for extra in bad_options {
        let d = tmp.path().join("opts");
        let csv = dir.join("train.csv");
        let mut args = vec![
            "--model",
            "m5",
            "--data",
            csv.to_str().unwrap(),
            "--output-dir",
            d.to_str().unwrap(),
            "--mlruns",
            d.to_str().unwrap(),
        ];
        args.extend(&extra);
        let out = common::run_trainer(&args);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(!common::text(&out.stderr).is_empty(), "{extra:?}: no message");
        assert!(!d.exists(), "{extra:?}: output written");
    }
}

#[test]
fn same_seed_gives_same_metrics_and_weights_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = common::sample_zip();
    let run = |name: &str| {
        let dir = tmp.path().join(name);
        let extra = ["--model", "squeezenet1_1", "--epochs", "1", "--limit", "300", "--seed", "5"];
        let out = common::run_trainer(&common::trainer_args(&extra, &sample, &dir));
        let stdout = common::text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", common::text(&out.stderr));
        // Metrics without the throughput, which depends on the machine's load.
        let metrics: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with("epoch "))
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect();
        assert_eq!(metrics.len(), 1, "{stdout}");
        let weights =
            std::fs::read(dir.join("ckpts/squeezenet1_1/best").join(models::CHECKPOINT_WEIGHTS_FILE)).unwrap();
        (metrics, weights)
    };
    let (m1, w1) = run("a");
    let (m2, w2) = run("b");
    assert_eq!(m1, m2);
    assert!(w1 == w2, "same seed, different weights");
}

/// Scripts take the architectures from `--list-archs` (models::Arch::ALL), so it must print
/// exactly that list, one name per line, and the torchvision subset the golden files cover.
#[test]
fn list_archs_prints_the_zoo_one_name_per_line() {
    let list = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trainer")).arg("--list-archs").args(extra).output().unwrap();
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        common::text(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(list(&[]), Arch::names());
    assert_eq!(list(&["all"]), Arch::names());
    let torchvision: Vec<&str> = Arch::ALL.iter().filter(|a| a.in_torchvision()).map(|a| a.name()).collect();
    assert_eq!(list(&["torchvision"]), torchvision);
    assert!(torchvision.contains(&"resnet18") && !torchvision.contains(&"cnn_digits"));
}

/// Scripts read the training defaults (the validation split above all) from `--print-config`
/// instead of repeating them: it must print what --recipe and the flags resolve to.
#[test]
fn print_config_shows_the_resolved_training_values() {
    let config = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trainer")).arg("--print-config").args(extra).output().unwrap();
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let seed = config(&[]);
    assert_eq!(seed["val_fraction"], data::VAL_FRACTION);
    assert_eq!(seed["split_seed"], data::SPLIT_SEED);
    assert_eq!(seed["recipe"], "seed");
    let strong = config(&["--recipe", "strong", "--val-fraction", "0.1"]);
    assert_eq!((strong["val_fraction"].as_f64(), strong["optimizer"].as_str()), (Some(0.1), Some("adamw")));
}

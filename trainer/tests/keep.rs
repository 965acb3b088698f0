//! `--keep last`: a fixed-length run's `best/` holds its last epoch, whatever the validation
//! split says; the default keeps the epoch with the best validation accuracy.

mod common;

use std::path::Path;

/// Epoch and validation accuracy of the checkpoint in `dir/ckpts/cnn_digits/best`, and the
/// printed epoch lines.
fn run(keep: Option<&str>, dir: &Path) -> (usize, f64, Vec<String>) {
    // A learning rate that grows x4 per epoch peaks early and then wrecks the model, so that
    // the best and the last epoch differ.
    let mut extra = vec![
        "--model",
        "cnn_digits",
        "--epochs",
        "4",
        "--limit",
        "600",
        "--lr",
        "0.01",
        "--lr-decay",
        "4",
        "--seed",
        "3",
    ];
    if let Some(k) = keep {
        extra.extend(["--keep", k]);
    }
    let out = common::run_trainer(&common::trainer_args(&extra, &common::sample_zip(), dir));
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", common::text(&out.stderr));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ckpts/cnn_digits/best/config.json")).unwrap()).unwrap();
    (meta["epoch"].as_u64().unwrap() as usize, meta["val_accuracy"].as_f64().unwrap(), common::epoch_lines(&stdout))
}

fn accuracies(lines: &[String]) -> Vec<f64> {
    lines
        .iter()
        .map(|l| l.split("val_accuracy ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn keep_last_checkpoints_the_last_epoch_and_the_default_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let (best_epoch, best_acc, lines) = run(None, &tmp.path().join("best"));
    let acc = accuracies(&lines);
    assert_eq!(acc.len(), 4, "{lines:?}");
    let argmax = 1 + (0..4).fold(0, |b, i| if acc[i] > acc[b] { i } else { b });
    assert_eq!(best_epoch, argmax, "{lines:?}");
    assert!((best_acc - acc[argmax - 1]).abs() < 1e-4);
    assert_ne!(argmax, 4, "this run was meant to peak before its last epoch: {lines:?}");

    let (last_epoch, last_acc, last_lines) = run(Some("last"), &tmp.path().join("last"));
    assert_eq!(last_lines, lines, "--keep changes what is kept, not the training");
    assert_eq!(last_epoch, 4);
    assert!((last_acc - acc[3]).abs() < 1e-4);
}

#[test]
fn val_fraction_0_trains_on_every_image_and_logs_no_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::sample_zip();
    // Without --keep last there is nothing to choose the best epoch on: refused, nothing written.
    let extra = ["--model", "cnn_digits", "--epochs", "2", "--limit", "600", "--val-fraction", "0"];
    let out = common::run_trainer(&common::trainer_args(&extra, &data, &tmp.path().join("refused")));
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("add --keep last"), "{}", common::text(&out.stderr));
    assert!(!tmp.path().join("refused/ckpts").exists() && !tmp.path().join("refused/mlruns").exists());

    let dir = tmp.path().join("all");
    let extra = [&extra[..], &["--keep", "last"]].concat();
    let out = common::run_trainer(&common::trainer_args(&extra, &data, &dir));
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", common::text(&out.stderr));
    // Nothing was scored, so nothing prints as a figure (no NaNs).
    assert!(!stdout.contains("NaN"), "{stdout}");
    assert_eq!(stdout.matches("(no validation split)").count(), 2, "{stdout}");
    assert!(stdout.contains("best: epoch 2 (the last; no validation split) -> "), "{stdout}");
    let run = common::python_json(
        common::READ_RUN_FULL,
        &[dir.join("mlruns").to_str().unwrap(), &common::printed_run_id(&stdout)],
    );
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["params"]["val_fraction"], "0.0", "{run}");
    assert_eq!((&run["params"]["train_size"], &run["params"]["val_size"]), (&"600".into(), &"0".into()), "{run}");
    assert!(run["tags"].get("best_accuracy").is_none(), "no accuracy to tag: {run}");
    for (metric, steps) in [("loss", 2), ("lr", 2), ("accuracy", 0), ("val_loss", 0), ("error", 0)] {
        assert_eq!(run["metrics"][metric].as_array().unwrap().len(), steps, "{metric}: {run}");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ckpts/cnn_digits/best/config.json")).unwrap()).unwrap();
    assert_eq!(meta["epoch"], 2);
    assert!(meta["val_accuracy"].is_null(), "{meta}");
}

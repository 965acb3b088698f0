//! `--keep last`: a fixed-length run's `best/` holds its last epoch, whatever the validation
//! split says; the default keeps the epoch with the best validation accuracy.

mod common;

use std::path::Path;

/// Epoch and validation accuracy of the checkpoint in `dir/ckpts/cnn_digits/best`, and the
/// printed epoch lines.
fn run(keep: Option<&str>, dir: &Path) -> (usize, f64, Vec<String>) {
    // A learning rate that grows x4 per epoch peaks early and then wrecks the model, so that
    // the best and the last epoch differ.
    let mut extra =
        vec!["--model", "cnn_digits", "--epochs", "4", "--limit", "600", "--lr", "0.01", "--lr-decay", "4", "--seed", "3"];
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
    lines.iter().map(|l| l.split("val_accuracy ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()).collect()
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

//! The export's self-check: a correct export passes and reports the runtimes' differences from
//! the reference; a corrupted lowering is refused with nothing written (no ONNX file, no MLflow
//! model); `--no-check` skips it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use exporter::check::{CheckData, CheckOptions};
use exporter::{export_checkpoint, export_checkpoint_checked, ExportError, ExportOptions, Fault};
use inference::BackendKind;
use models::{Arch, ModelConfig};
use tracking::{FileStore, Tracker};

/// What a correct lowering gives on these freshly initialised models (logits of a few units);
/// the injected faults move logits far beyond it.
const HEALTHY_MAX_DIFF: f64 = 1e-4;

fn exporter_bin(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exporter"));
    for a in args {
        cmd.arg(a);
    }
    let o = cmd.output().expect("run exporter");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    eprintln!(
        "exporter {:?}\nstdout:\n{stdout}stderr:\n{stderr}",
        args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>()
    );
    (o, stdout, stderr)
}

/// Whether this process finds libonnxruntime (the exporter binary looks the same way).
fn ort_available() -> bool {
    inference::ort_library().is_ok()
}

/// `<backend> max |diff| <value>` as printed, parsed back.
fn printed_diff(text: &str, backend: &str) -> Option<f64> {
    let key = format!("{backend} max |diff| ");
    let rest = &text[text.find(&key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A checkpoint whose config.json names an MLflow run in a fresh file store.
fn tracked_checkpoint(root: &Path, arch: Arch, seed: u64) -> (std::path::PathBuf, tracking::RunHandle) {
    let store_dir = root.join("mlruns");
    let store = FileStore::new(&store_dir).unwrap();
    let exp = store.get_or_create_experiment("selfcheck-test").unwrap();
    let run = store.create_run(&exp, "export", &[]).unwrap();
    let ckpt = root.join("ckpt");
    let mut meta = meta_for(ModelConfig::new(arch));
    meta.run_id = Some(run.run_id().to_string());
    meta.tracking_uri = Some(store_dir.display().to_string());
    write_checkpoint(&ckpt, &meta, seed);
    (ckpt, run)
}

#[test]
fn a_correct_export_passes_and_prints_each_runtimes_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, run) = tracked_checkpoint(tmp.path(), Arch::Resnet18, 21);
    let out = tmp.path().join("resnet18.onnx");
    let (o, stdout, stderr) = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out]);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("self-check passed")
            && stdout.contains("16 images of the validation split of digit-recognizer.zip:train.csv"),
        "{stdout}"
    );
    let tract = printed_diff(&stdout, "tract").unwrap_or_else(|| panic!("no tract difference printed: {stdout}"));
    assert!(tract <= HEALTHY_MAX_DIFF, "{stdout}");
    if ort_available() {
        let ort = printed_diff(&stdout, "ort").unwrap_or_else(|| panic!("no ort difference printed: {stdout}"));
        assert!(ort <= HEALTHY_MAX_DIFF, "{stdout}");
    } else {
        assert!(stdout.contains("ort not checked"), "{stdout}");
    }
    assert!(run.artifact_dir().join("model/model.onnx").is_file(), "a checked model is logged to MLflow");

    // The check does not change what is written.
    let unchecked = tmp.path().join("unchecked.onnx");
    export_checkpoint(&ckpt, &unchecked, &ExportOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&unchecked).unwrap());
}

#[test]
fn a_corrupted_lowering_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, run) = tracked_checkpoint(tmp.path(), Arch::Resnet18, 22);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.onnx");
    let (o, stdout, stderr) = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out, &"--debug-corrupt-folded-bias"]);
    assert!(!o.status.success(), "a corrupted model must fail the check; stdout:\n{stdout}");
    assert!(stderr.contains("self-check failed, nothing was written") && stderr.contains("TOO LARGE"), "{stderr}");
    let tract = printed_diff(&stderr, "tract").unwrap_or_else(|| panic!("no tract difference printed: {stderr}"));
    assert!(tract > HEALTHY_MAX_DIFF, "{stderr}");
    if ort_available() {
        assert!(printed_diff(&stderr, "ort").is_some_and(|d| d > HEALTHY_MAX_DIFF), "{stderr}");
    }
    assert!(!out.exists(), "no ONNX file after a failed check");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "no temporary file left either");
    assert!(!run.artifact_dir().join("model").exists(), "no MLflow model after a failed check");

    // The library says the same, with the measurements.
    let opts = ExportOptions { fault: Some(Fault::PerturbFoldedBias), ..Default::default() };
    let err = export_checkpoint_checked(&ckpt, &out, &opts, Some(&CheckOptions::default())).unwrap_err();
    let ExportError::CheckFailed(report) = &err else { panic!("expected CheckFailed, got {err:?}") };
    assert!(!report.runtimes.is_empty() && !report.passed(), "{report}");
    assert!(report.runtimes.iter().all(|r| r.max_abs_diff > report.allowed()), "{report}");
    assert_eq!(report.runtimes.iter().any(|r| r.backend == BackendKind::Ort), ort_available(), "{report}");
    assert!(!out.exists());

    // --no-check skips the check: the (corrupted) model is written and logged.
    let (o, stdout, stderr) =
        exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out, &"--debug-corrupt-folded-bias", &"--no-check"]);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("self-check skipped") && !stdout.contains("max |diff|"), "{stdout}");
    assert!(out.is_file() && run.artifact_dir().join("model/model.onnx").is_file());
    let clean = tmp.path().join("clean.onnx");
    export_checkpoint(&ckpt, &clean, &ExportOptions::default()).unwrap();
    assert_ne!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&clean).unwrap(),
        "the skipped model really is the corrupted one"
    );
}

#[test]
fn unfolded_fixed_batch_exports_and_other_check_data_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::MobilenetV3Small)), 23);
    let out = tmp.path().join("m.onnx");

    // BatchNormalization nodes kept, batch fixed: checked as a dynamic-batch copy.
    let opts = ExportOptions { fold_bn: false, dynamic_batch: false, batch_size: 4, ..Default::default() };
    let report = export_checkpoint_checked(&ckpt, &out, &opts, Some(&CheckOptions::default())).unwrap();
    let check = report.check.expect("check ran");
    assert!(check.passed() && check.images == 16 && check.runtimes[0].backend == BackendKind::Tract, "{check}");
    assert!(check.notes.iter().any(|n| n.contains("dynamic batch")), "{check}");
    eprintln!("mobilenet_v3_small unfolded, batch 4: {check}");

    // Synthetic images, and unlabelled rows of a CSV given directly.
    let synth = CheckOptions { data: CheckData::Synthetic, ..Default::default() };
    let check = export_checkpoint_checked(&ckpt, &out, &ExportOptions::default(), Some(&synth)).unwrap().check.unwrap();
    assert!(check.passed() && check.data == exporter::check::SYNTHETIC, "{check}");
    let csv = tmp.path().join("test.csv");
    let header: Vec<String> = (0..784).map(|i| format!("pixel{i}")).collect();
    let rows: Vec<String> =
        (0..3).map(|r| (0..784).map(|i| ((i * 7 + r * 31) % 256).to_string()).collect::<Vec<_>>().join(",")).collect();
    std::fs::write(&csv, format!("{}\n{}\n", header.join(","), rows.join("\n"))).unwrap();
    let from_csv = CheckOptions { data: CheckData::Path(csv.clone()), ..Default::default() };
    let check =
        export_checkpoint_checked(&ckpt, &out, &ExportOptions::default(), Some(&from_csv)).unwrap().check.unwrap();
    assert!(check.passed() && check.images == 3 && check.data.contains("test.csv (unlabelled)"), "{check}");

    // Unreadable check data is an error naming it, and nothing is written.
    std::fs::remove_file(&out).unwrap();
    let missing = tmp.path().join("no-such-data.zip");
    let (o, _, stderr) = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out, &"--check-data", &missing]);
    assert!(!o.status.success() && stderr.contains("no-such-data.zip"), "{stderr}");
    assert!(!out.exists());
}

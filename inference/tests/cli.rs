//! The `infer` binary end to end: submissions, ensembles, --evaluate, and every error
//! path exiting non-zero with a message naming the file and no submission left behind.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, reference_labels, sample_zip, MEMBERS, N_REF};
use data::Split;

/// Same tolerance the library tests hold the backends to.
const TOL_VS_ONNXRUNTIME: f32 = 1e-4;
/// Rows in the committed sample's test.csv.
const SAMPLE_TEST_ROWS: usize = 1000;

fn infer(args: &[&dyn AsRef<std::ffi::OsStr>], cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    cmd.current_dir(cwd);
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("spawn infer")
}

fn infer_env(args: &[&dyn AsRef<std::ffi::OsStr>], cwd: &Path, key: &str, value: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    cmd.current_dir(cwd).env(key, value);
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("spawn infer")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn assert_ok(o: &Output) -> (String, String) {
    let (out, err) = text(o);
    assert!(o.status.success(), "infer failed\nstdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// Non-zero exit, `needle` (a file name) in stderr, no panic, and no submission.
fn assert_fails(o: &Output, needle: &str, submission: &Path) -> String {
    let (out, err) = text(o);
    assert!(!o.status.success(), "infer should fail\nstdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(needle), "stderr does not mention {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "infer panicked:\n{err}");
    assert!(!submission.exists(), "{} was written by a failed run", submission.display());
    err
}

/// Writes the sample's test.csv (Kaggle header) as a plain CSV file.
fn write_test_csv(path: &Path) {
    let test = data::load(&sample_zip(), Split::Test).unwrap();
    let mut s = String::new();
    s.push_str(&(0..784).map(|i| format!("pixel{i}")).collect::<Vec<_>>().join(","));
    s.push('\n');
    for i in 0..test.len() {
        s.push_str(&test.image(i).iter().map(u8::to_string).collect::<Vec<_>>().join(","));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn read_labels(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("ImageId,Label\n"), "header of {}", path.display());
    let rows = data::read_submission(path).unwrap();
    for (i, (id, _)) in rows.iter().enumerate() {
        assert_eq!(*id as usize, i + 1, "ImageIds count from 1");
    }
    rows.into_iter().map(|(_, l)| l).collect()
}

#[test]
fn writes_a_submission_matching_python_on_each_backend() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("test.csv");
    write_test_csv(&csv);
    let reference = reference_labels(fx.expected("cnn_a"), fx.classes, TOL_VS_ONNXRUNTIME);
    for backend in ["tract", "ort"] {
        let sub = tmp.path().join(format!("sub-{backend}.csv"));
        let timings = tmp.path().join(format!("timings-{backend}.json"));
        let o = infer(
            &[&"--model", &fx.model("cnn_a"), &csv, &"-o", &sub, &"--backend", &backend, &"--timings", &timings],
            tmp.path(),
        );
        let (out, err) = assert_ok(&o);
        assert!(err.contains(&format!("backend {backend}")), "{err}");
        let labels = read_labels(&sub);
        assert_eq!(labels.len(), SAMPLE_TEST_ROWS);
        for i in 0..N_REF {
            assert_eq!(labels[i], reference[i].0, "{backend}: ImageId {}", i + 1);
        }
        // The timing table and JSON cover the 16 batches of 64 (1000 = 15*64 + 40).
        assert!(out.contains("img/s") && out.contains("cnn_a"), "{out}");
        let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&timings).unwrap()).unwrap();
        assert_eq!(t["models"][0]["batches"], 16);
        assert_eq!(t["models"][0]["images"], SAMPLE_TEST_ROWS);
        assert!(t["models"][0]["mean_ms"].as_f64().unwrap() > 0.0);
        assert!(t["ensemble"].is_null());
    }
}

#[test]
fn zip_input_and_default_output_name() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // No -o: submission.csv in the working folder; the zip's test.csv is used.
    let o = infer(&[&"--model", &fx.model("cnn_b"), &sample_zip(), &"--backend", &"tract"], tmp.path());
    assert_ok(&o);
    let labels = read_labels(&tmp.path().join("submission.csv"));
    assert_eq!(labels.len(), SAMPLE_TEST_ROWS);
    let reference = reference_labels(fx.expected("cnn_b"), fx.classes, TOL_VS_ONNXRUNTIME);
    assert!((0..N_REF).all(|i| labels[i] == reference[i].0));
}

#[test]
fn ensemble_majority_vote_matches_voting_pythons_logits() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("ens.csv");
    let timings = tmp.path().join("t.json");
    let members = MEMBERS.join(",");
    let o = infer(
        &[
            &"--ensemble",
            &members,
            &"--models-dir",
            &fx.dir,
            &sample_zip(),
            &"-o",
            &sub,
            &"--timings",
            &timings,
            &"--threads",
            &"2",
        ],
        tmp.path(),
    );
    let (out, _) = assert_ok(&o);
    let labels = read_labels(&sub);
    assert_eq!(labels.len(), SAMPLE_TEST_ROWS);
    let logits: Vec<Vec<f32>> = MEMBERS.iter().map(|m| fx.expected(m).to_vec()).collect();
    let expected = inference::majority_vote(&logits, N_REF, fx.classes);
    assert_eq!(&labels[..N_REF], &expected[..]);
    // The members disagree on some of the first 64 images (see the fixture), so the
    // report must list some.
    let member_labels: Vec<Vec<u8>> =
        logits.iter().map(|l| inference::labels_from_logits(l, N_REF, fx.classes)).collect();
    let first = inference::disagreements(&member_labels, 1).examples;
    assert!(!first.is_empty(), "fixture members agree on every reference image");
    assert!(out.contains("members disagree on"), "{out}");
    let id_line = format!("{:>6}: ", first[0].image_id);
    assert!(out.contains(&id_line), "first disagreement ImageId {} not listed:\n{out}", first[0].image_id);
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&timings).unwrap()).unwrap();
    assert_eq!(t["models"].as_array().unwrap().len(), 3);
    assert_eq!(t["ensemble"]["batches"], 16);
    // The overlap figures are the table's own numbers, not separate measurements.
    let c = &t["concurrency"];
    let sum: f64 = t["models"].as_array().unwrap().iter().map(|m| m["total_ms"].as_f64().unwrap()).sum();
    assert!((c["members_sum_ms"].as_f64().unwrap() - sum).abs() < 1e-6, "{c}");
    assert_eq!(c["ensemble_ms"], t["ensemble"]["total_ms"]);
    assert!((c["overlap"].as_f64().unwrap() - sum / c["ensemble_ms"].as_f64().unwrap()).abs() < 1e-9, "{c}");
    assert_eq!(t["views"], 1);
    assert!(out.contains("summed over members"), "{out}");

    // Soft voting through the same path.
    let sub = tmp.path().join("soft.csv");
    let o = infer(
        &[&"--ensemble", &members, &"--models-dir", &fx.dir, &"--vote", &"soft", &sample_zip(), &"-o", &sub],
        tmp.path(),
    );
    assert_ok(&o);
    let expected = inference::soft_vote(&logits, N_REF, fx.classes);
    assert_eq!(&read_labels(&sub)[..N_REF], &expected[..]);
}

#[test]
fn evaluate_prints_accuracy_matching_python() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // With --evaluate the zip's labelled train.csv is scored; no -o: nothing written.
    let o = infer(&[&"--model", &fx.model("cnn_a"), &sample_zip(), &"--evaluate"], tmp.path());
    let (out, _) = assert_ok(&o);
    let line = out.lines().find(|l| l.starts_with("accuracy: ")).unwrap_or_else(|| panic!("no accuracy:\n{out}"));
    // "accuracy: 0.9123 (3649/4000)"
    let counts = line.split('(').nth(1).unwrap().trim_end_matches(')');
    let (correct, total) = counts.split_once('/').unwrap();
    let correct: usize = correct.parse().unwrap();
    assert_eq!(total.parse::<usize>().unwrap(), fx.train_total);
    let python = fx.train_correct["cnn_a"];
    assert!(correct.abs_diff(python) <= 2, "infer got {correct} right, Python onnxruntime {python}");
    assert!(out.contains("confusion matrix"), "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("9: ")).count(), 1, "per-class line for 9:\n{out}");
    assert!(!tmp.path().join("submission.csv").exists(), "--evaluate without -o must not write");
}

#[test]
fn missing_truncated_and_non_onnx_models_fail_cleanly() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("truncated.onnx");
    std::fs::write(&truncated, &std::fs::read(fx.model("cnn_a")).unwrap()[..100]).unwrap();
    let text_file = tmp.path().join("readme.onnx");
    std::fs::write(&text_file, "not a model\n").unwrap();
    let missing = tmp.path().join("nope.onnx");
    let bad_shape = fx.dir.join("bad_shape.onnx");
    let sub = tmp.path().join("sub.csv");
    for backend in ["tract", "ort"] {
        for model in [&missing, &truncated, &text_file, &bad_shape] {
            let o = infer(&[&"--model", model, &sample_zip(), &"-o", &sub, &"--backend", &backend], tmp.path());
            let name = model.file_name().unwrap().to_str().unwrap();
            let err = assert_fails(&o, name, &sub);
            if model == &bad_shape {
                assert!(err.contains("[N,1,28,28]"), "{err}");
            }
        }
    }
}

#[test]
fn missing_ensemble_member_lists_where_it_looked() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("sub.csv");
    let o =
        infer(&[&"--ensemble", &"cnn_a,resnet99", &"--models-dir", &fx.dir, &sample_zip(), &"-o", &sub], tmp.path());
    let err = assert_fails(&o, "resnet99", &sub);
    assert!(err.contains(&fx.dir.join("resnet99.onnx").display().to_string()), "{err}");
    assert!(err.contains(&fx.dir.join("resnet99").join("model.onnx").display().to_string()), "{err}");
}

#[test]
fn bad_csv_row_fails_with_file_and_line() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bad.csv");
    let header = (0..784).map(|i| format!("pixel{i}")).collect::<Vec<_>>().join(",");
    let good = vec!["0"; 784].join(",");
    let mut bad = vec!["0"; 784];
    bad[5] = "abc";
    std::fs::write(&csv, format!("{header}\n{good}\n{}\n{good}\n", bad.join(","))).unwrap();
    let sub = tmp.path().join("sub.csv");
    let o = infer(&[&"--model", &fx.model("cnn_a"), &csv, &"-o", &sub, &"--backend", &"tract"], tmp.path());
    // Line 3: the header is line 1, the bad row the second data row.
    assert_fails(&o, "bad.csv:3", &sub);
}

#[test]
fn missing_onnx_runtime_is_a_clear_error_or_a_tract_fallback() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("sub.csv");
    let fake = "/nonexistent/ort/libonnxruntime.so";
    let o = infer_env(
        &[&"--model", &fx.model("cnn_a"), &sample_zip(), &"-o", &sub, &"--backend", &"ort"],
        tmp.path(),
        "ORT_DYLIB_PATH",
        fake,
    );
    let err = assert_fails(&o, fake, &sub);
    assert!(err.contains("ONNX Runtime is unavailable") && err.contains("ORT_DYLIB_PATH"), "{err}");

    // Without --backend the same situation falls back to tract and succeeds.
    let o =
        infer_env(&[&"--model", &fx.model("cnn_a"), &sample_zip(), &"-o", &sub], tmp.path(), "ORT_DYLIB_PATH", fake);
    let (_, err) = assert_ok(&o);
    assert!(err.contains("backend tract"), "{err}");
    assert_eq!(read_labels(&sub).len(), SAMPLE_TEST_ROWS);
}

#[test]
fn ort_cuda_never_falls_back_to_cpu_silently() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("sub.csv");
    let o = infer(&[&"--model", &fx.model("cnn_a"), &sample_zip(), &"-o", &sub, &"--backend", &"ort-cuda"], tmp.path());
    if o.status.success() {
        // An onnxruntime with working CUDA: then the results must still be right.
        let reference = reference_labels(fx.expected("cnn_a"), fx.classes, TOL_VS_ONNXRUNTIME);
        let labels = read_labels(&sub);
        assert!((0..N_REF).all(|i| labels[i] == reference[i].0));
    } else {
        // The venv's CPU-only onnxruntime: a clear CUDA error naming the model.
        let err = assert_fails(&o, "cnn_a.onnx", &sub);
        assert!(err.contains("CUDA execution provider is unavailable"), "{err}");
    }
}

/// Faults survived (issue #21): inputs that are not ours fail on one line naming the file,
/// exit non-zero and write nothing.
#[test]
fn foreign_models_and_a_zip_without_test_csv_fail_on_one_line() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // cnn_a cut short, with its input renamed, stamped with an opset too new and one too old;
    // a Kaggle zip without test.csv.
    let script = r#"
import sys, onnx
m = onnx.load(sys.argv[1])
old = m.graph.input[0].name
renamed = onnx.ModelProto(); renamed.CopyFrom(m)
renamed.graph.input[0].name = "x"
for n in renamed.graph.node:
    n.input[:] = ["x" if v == old else v for v in n.input]
onnx.save(renamed, sys.argv[2] + "/wrong_name.onnx")
for v in (99, 1):
    s = onnx.ModelProto(); s.CopyFrom(m)
    for o in s.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = v
    onnx.save(s, f"{sys.argv[2]}/opset{v}.onnx")
open(sys.argv[2] + "/truncated.onnx", "wb").write(open(sys.argv[1], "rb").read()[:100])
import zipfile
with zipfile.ZipFile(sys.argv[2] + "/no-test.zip", "w") as z:
    z.writestr("train.csv", "label,pixel0\n")
"#;
    let made = Command::new(common::venv_python())
        .arg("-c")
        .arg(script)
        .arg(fx.model("cnn_a"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let sub = tmp.path().join("sub.csv");
    let cases: [(&str, &str, Vec<String>); 5] = [
        ("truncated.onnx", "not a valid ONNX model", vec![]),
        ("wrong_name.onnx", "input is named `x`, expected `input`", vec![]),
        ("opset99.onnx", "declares ONNX opset 99", vec![]),
        ("opset1.onnx", "declares ONNX opset 1,", vec![]),
        ("no-test.zip", "no entry test.csv", vec!["--model".into(), fx.model("cnn_a").display().to_string()]),
    ];
    for (file, says, model) in &cases {
        for backend in ["tract", "ort"] {
            let path = tmp.path().join(file);
            let args: Vec<String> = if model.is_empty() {
                vec!["--model".into(), path.display().to_string(), sample_zip().display().to_string()]
            } else {
                [model.clone(), vec![path.display().to_string()]].concat()
            };
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
            cmd.current_dir(tmp.path()).args(&args).arg("-o").arg(&sub).args(["--backend", backend]);
            let err = assert_fails(&cmd.output().unwrap(), file, &sub);
            let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(lines.len(), 1, "{file} ({backend}): one error line:\n{err}");
            assert!(lines[0].starts_with("infer: error: ") && lines[0].contains(says), "{file} ({backend}): {err}");
            println!("{file} ({backend}): {}", lines[0]);
        }
    }
}

//! Test-time augmentation, `--probabilities`, and model resolution (`models:/` URIs through a
//! file-store registry, the default models folders) through the `infer` binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, sample_zip, N_REF};
use data::Split;
use inference::{predict, predict_with, shift_image, BackendKind, Model, PredictOptions, PIXELS, TTA_SHIFTS};
use models::approx::{self, Tolerance};
use tracking::{FileStore, ModelRegistry, Tracker};

fn infer(args: &[&str], cwd: &Path, tracking_uri: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    cmd.args(args).current_dir(cwd).env_remove("MLFLOW_TRACKING_URI");
    if let Some(u) = tracking_uri {
        cmd.env("MLFLOW_TRACKING_URI", u);
    }
    cmd.output().expect("spawn infer")
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "infer failed\nstdout:\n{out}\nstderr:\n{err}");
    format!("{out}{err}")
}

fn failed(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "infer should fail:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn shifted_images_move_every_pixel_and_fill_with_background() {
    // Pixel (x, y) holds 1 + x + 28 y, so every source position is recognisable.
    let src: Vec<f32> = (0..PIXELS).map(|i| 1.0 + i as f32).collect();
    let at = |img: &[f32], x: usize, y: usize| img[y * 28 + x];
    let mut dst = vec![f32::NAN; PIXELS];
    for &(dx, dy) in &TTA_SHIFTS {
        shift_image(&src, &mut dst, dx, dy);
        for y in 0..28i32 {
            for x in 0..28i32 {
                let (sx, sy) = (x - dx, y - dy);
                let want =
                    if (0..28).contains(&sx) && (0..28).contains(&sy) { 1.0 + (sx + 28 * sy) as f32 } else { 0.0 };
                assert_eq!(at(&dst, x as usize, y as usize), want, "shift ({dx},{dy}) at ({x},{y})");
            }
        }
    }
    // The documented directions, spelled out: right, left, down, up.
    assert_eq!(TTA_SHIFTS, [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]);
    shift_image(&src, &mut dst, 1, 0);
    assert_eq!((at(&dst, 0, 3), at(&dst, 1, 3), at(&dst, 27, 3)), (0.0, at(&src, 0, 3), at(&src, 26, 3)));
    shift_image(&src, &mut dst, 0, -1);
    assert_eq!((at(&dst, 5, 0), at(&dst, 5, 27)), (at(&src, 5, 1), 0.0));
    // A digit-like blob keeps its mass when nothing reaches the border.
    let mut blob = vec![0f32; PIXELS];
    for y in 10..18 {
        for x in 9..19 {
            blob[y * 28 + x] = 0.5;
        }
    }
    for &(dx, dy) in &TTA_SHIFTS {
        shift_image(&blob, &mut dst, dx, dy);
        assert_eq!(dst.iter().sum::<f32>(), blob.iter().sum::<f32>());
    }
}

#[test]
fn tta_predictions_are_sane_on_the_labelled_sample() {
    let fx = fixture();
    let train = data::load(&sample_zip(), Split::Train).unwrap();
    let truth = train.labels.clone().unwrap();
    for name in common::MEMBERS {
        let model = Model::load(&fx.model(name), BackendKind::Tract, 2).unwrap();
        let plain = predict(&model, &train, 64).unwrap();
        let tta = predict_with(&model, &train, &PredictOptions { batch_size: 64, tta: true }).unwrap();
        let acc = |labels: &[u8]| labels.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64;
        let (a_plain, a_tta) = (acc(&plain.labels()), acc(&tta.labels()));
        eprintln!("{name}: accuracy {a_plain:.4} without TTA, {a_tta:.4} with");
        // Python onnxruntime's count for the unshifted model.
        assert_eq!(plain.labels().iter().zip(&truth).filter(|(a, b)| a == b).count(), fx.train_correct[name]);
        assert!(a_tta >= a_plain - 0.01, "{name}: TTA accuracy {a_tta} vs {a_plain}");
        // Log mean probabilities: every row's softmax sums to one and no value is NaN.
        for row in tta.logits.chunks_exact(tta.classes) {
            let s: f64 = row.iter().map(|&l| f64::from(l).exp()).sum();
            assert!((s - 1.0).abs() < 1e-4, "{row:?}");
        }
        // Same result batch by batch and all at once.
        let whole = predict_with(
            &model,
            &train.subset(&(0..100).collect::<Vec<_>>()),
            &PredictOptions { batch_size: 100, tta: true },
        )
        .unwrap();
        let ragged = predict_with(
            &model,
            &train.subset(&(0..100).collect::<Vec<_>>()),
            &PredictOptions { batch_size: 7, tta: true },
        )
        .unwrap();
        approx::assert_close(
            &ragged.logits,
            &whole.logits,
            Tolerance::SAME_RUNTIME,
            &format!("{name}: TTA, batch 7 vs 100"),
        );
        // The averaged views against a reference built here from TTA's definition: a TTA that
        // ran only the unshifted view (or shifted wrongly) passes every check above.
        let first = train.subset(&(0..100).collect::<Vec<_>>());
        let reference = tta_reference(&model, &first);
        approx::assert_close(
            &whole.logits,
            &reference,
            Tolerance::RUNTIMES,
            &format!("{name}: TTA vs the views averaged by the test"),
        );
        // Not vacuous: the shifted views move the result further than the tolerance.
        let unshifted: Vec<f32> =
            predict(&model, &first, 100).unwrap().logits.chunks_exact(tta.classes).flat_map(log_softmax).collect();
        let moved = approx::max_abs_diff(&reference, &unshifted).unwrap();
        assert!(moved > 1e-2, "{name}: the shifted views change the log-probabilities by only {moved:e}");
    }
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(v)));
    let log_sum = row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&v| (f64::from(v) - log_sum) as f32).collect()
}

/// Test-time augmentation from its definition, independently of `predict_with` and
/// `shift_image`: each image moved one pixel right, left, down and up (background shifted in)
/// here, every view run through the model on its own, the views' softmax probabilities
/// averaged; the log of the mean per class.
fn tta_reference(model: &Model, images: &data::Dataset) -> Vec<f32> {
    let n = images.len();
    let pixels = images.to_f32(&(0..n).collect::<Vec<_>>());
    let views = [(0i32, 0i32), (1, 0), (-1, 0), (0, 1), (0, -1)];
    let mut mean = vec![0f64; n * model.num_classes()];
    for (dx, dy) in views {
        let moved: Vec<f32> = pixels
            .chunks_exact(PIXELS)
            .flat_map(|img| {
                (0..PIXELS as i32).map(move |p| {
                    let (sx, sy) = (p % 28 - dx, p / 28 - dy);
                    if (0..28).contains(&sx) && (0..28).contains(&sy) {
                        img[(sy * 28 + sx) as usize]
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let logits = model.run(&moved, n).unwrap();
        let rows = logits.chunks_exact(model.num_classes());
        for (m, row) in mean.chunks_exact_mut(model.num_classes()).zip(rows) {
            for (m, l) in m.iter_mut().zip(log_softmax(row)) {
                *m += f64::from(l).exp() / views.len() as f64;
            }
        }
    }
    mean.iter().map(|&p| p.ln() as f32).collect()
}

/// Parses `ImageId,p0..p9` rows.
fn read_probabilities(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ImageId,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9"));
    lines
        .enumerate()
        .map(|(i, l)| {
            let mut f = l.split(',');
            assert_eq!(f.next().unwrap(), (i + 1).to_string());
            f.map(|v| v.parse().unwrap()).collect()
        })
        .collect()
}

fn read_labels(path: &Path) -> Vec<u8> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn probabilities_file_matches_onnxruntime_and_the_submission() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (sub, probs) = (tmp.path().join("sub.csv"), tmp.path().join("p.csv"));
    let model = fx.model("cnn_a");
    let zip = sample_zip();
    ok(&infer(
        &[
            "--model",
            model.to_str().unwrap(),
            zip.to_str().unwrap(),
            "-o",
            sub.to_str().unwrap(),
            "--probabilities",
            probs.to_str().unwrap(),
        ],
        tmp.path(),
        None,
    ));
    let p = read_probabilities(&probs);
    let labels = read_labels(&sub);
    assert_eq!(p.len(), labels.len());
    for (row, &l) in p.iter().zip(&labels) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert_eq!(inference::argmax(&row.iter().map(|&v| v as f32).collect::<Vec<_>>()), usize::from(l));
    }
    // Softmax of Python onnxruntime's logits on the first images.
    for (i, row) in p.iter().take(N_REF).enumerate() {
        let want = inference::softmax(&fx.expected("cnn_a")[i * 10..(i + 1) * 10]);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "image {i}: {row:?} vs {want:?}");
        }
    }

    // An ensemble with --tta: the mean of the members' (view-averaged) probabilities.
    let members = common::MEMBERS.iter().map(|m| fx.model(m).display().to_string()).collect::<Vec<_>>().join(",");
    let out = ok(&infer(
        &[
            "--ensemble",
            &members,
            zip.to_str().unwrap(),
            "-o",
            sub.to_str().unwrap(),
            "--probabilities",
            probs.to_str().unwrap(),
            "--tta",
            "--vote",
            "soft",
        ],
        tmp.path(),
        None,
    ));
    assert!(out.contains("--tta: 5 views"), "{out}");
    let p = read_probabilities(&probs);
    let labels = read_labels(&sub);
    for (row, &l) in p.iter().zip(&labels) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        // Soft voting decides on exactly these probabilities.
        assert_eq!(inference::argmax(&row.iter().map(|&v| v as f32).collect::<Vec<_>>()), usize::from(l));
    }

    // A probabilities file that cannot be written: non-zero exit and no submission either.
    std::fs::remove_file(&sub).unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let bad = blocker.join("p.csv");
    let err = failed(&infer(
        &[
            "--model",
            model.to_str().unwrap(),
            zip.to_str().unwrap(),
            "-o",
            sub.to_str().unwrap(),
            "--probabilities",
            bad.to_str().unwrap(),
        ],
        tmp.path(),
        None,
    ));
    assert!(err.contains("a-file/p.csv"), "{err}");
    assert!(!sub.exists());
}

#[test]
fn registry_uris_and_models_folders_resolve() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let zip = sample_zip();
    let reference = tmp.path().join("reference.csv");
    ok(&infer(
        &["--model", fx.model("cnn_b").to_str().unwrap(), zip.to_str().unwrap(), "-o", reference.to_str().unwrap()],
        tmp.path(),
        None,
    ));
    let want = read_labels(&reference);

    // A file-store run holding the model as the exporter logs it, registered with an alias.
    let store = FileStore::new(tmp.path().join("mlruns")).unwrap();
    let exp = store.get_or_create_experiment("infer-test").unwrap();
    let run = store.create_run(&exp, "cnn_b", &[]).unwrap();
    run.log_artifact_bytes("model.onnx", &std::fs::read(fx.model("cnn_b")).unwrap(), Some("model")).unwrap();
    assert!(store.create_registered_model("digits").unwrap());
    assert!(!store.create_registered_model("digits").unwrap(), "second create finds it");
    let source = format!("{}/model", run.info().unwrap().artifact_uri);
    let v = store.create_model_version("digits", &source, Some(run.run_id())).unwrap();
    assert_eq!(v.version, 1);
    store.set_alias("digits", "champion", 1).unwrap();

    let sub = tmp.path().join("sub.csv");
    for uri in ["models:/digits/1", "models:/digits@champion", "models:/digits@latest"] {
        let out = ok(&infer(
            &["--model", uri, zip.to_str().unwrap(), "-o", sub.to_str().unwrap()],
            tmp.path(),
            Some(store.uri()),
        ));
        assert!(out.contains("-> models:/digits/1"), "{out}");
        assert_eq!(read_labels(&sub), want, "{uri}");
    }
    // Clear errors: no tracking URI, unknown version or alias, unknown model.
    let err = failed(&infer(&["--model", "models:/digits/1", zip.to_str().unwrap()], tmp.path(), None));
    assert!(err.contains("MLFLOW_TRACKING_URI") && err.contains("models:/digits/1"), "{err}");
    let err = failed(&infer(&["--model", "models:/digits/4", zip.to_str().unwrap()], tmp.path(), Some(store.uri())));
    assert!(err.contains("version 4") && err.contains("digits"), "{err}");
    let err =
        failed(&infer(&["--model", "models:/digits@staging", zip.to_str().unwrap()], tmp.path(), Some(store.uri())));
    assert!(err.contains("staging"), "{err}");
    let err =
        failed(&infer(&["--ensemble", "models:/nope@champion", zip.to_str().unwrap()], tmp.path(), Some(store.uri())));
    assert!(err.contains("nope"), "{err}");

    // Plain names: ./models/NAME.onnx, then ./exported/NAME/model.onnx; --models-dir replaces both.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("models")).unwrap();
    std::fs::create_dir_all(work.join("exported/b")).unwrap();
    std::fs::copy(fx.model("cnn_a"), work.join("models/a.onnx")).unwrap();
    std::fs::copy(fx.model("cnn_b"), work.join("exported/b/model.onnx")).unwrap();
    ok(&infer(&["--ensemble", "a,b", zip.to_str().unwrap(), "-o", sub.to_str().unwrap()], &work, None));
    let err = failed(&infer(&["--ensemble", "a,c", zip.to_str().unwrap()], &work, None));
    assert!(err.contains("models/c.onnx") && err.contains("exported/c/model.onnx"), "{err}");
    let err = failed(&infer(&["--ensemble", "a", "--models-dir", "exported", zip.to_str().unwrap()], &work, None));
    assert!(err.contains("exported/a.onnx") && !err.contains("models/a.onnx"), "{err}");
}

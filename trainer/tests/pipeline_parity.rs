//! The whole chain on every architecture: a network trained a few steps in tch, saved as a
//! checkpoint, exported to ONNX, then run by tract and ONNX Runtime must give tch's eval-mode
//! logits on real sample images. One parity suite, one named tolerance per backend.

use std::path::PathBuf;

use exporter::ExportOptions;
use inference::{BackendKind, Model as OnnxModel};
use models::{Arch, CheckpointMeta, ModelConfig};
use tch::{nn::OptimizerConfig, Device, Kind, Tensor};
use trainer::{save_checkpoint, Model};

/// Max |logit difference| allowed between tch (eval) and each ONNX runtime.
const TOL_TRACT: f32 = 1e-4;
const TOL_ORT: f32 = 1e-4;
/// Also relative to the largest logit: MobileNets start with logits near 0.1 (classifier init
/// std 0.01), where an absolute 1e-4 alone would let a wrong activation through.
const TOL_RELATIVE: f32 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sample_images(n: usize) -> Vec<f32> {
    let test = data::load(&root().join("sample/digit-recognizer.zip"), data::Split::Test).unwrap();
    test.to_f32(&(0..n).collect::<Vec<_>>())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Trains `arch` for a few Adam steps on labelled sample images so BatchNorm statistics and
/// weights are no longer at their initial values, then checks tch == tract == ort.
fn check(arch: Arch, n: usize, ort_available: bool) -> (f32, f32, f32) {
    tch::manual_seed(7);
    let config = ModelConfig::new(arch);
    let model = Model::new(&config, Device::Cpu).unwrap();
    let train = data::load(&root().join("sample/digit-recognizer.zip"), data::Split::Train).unwrap();
    let idx: Vec<usize> = (0..32).collect();
    let x = Tensor::from_slice(&train.to_f32(&idx)).view([32, 1, 28, 28]);
    let labels: Vec<i64> = idx.iter().map(|&i| train.labels.as_ref().unwrap()[i] as i64).collect();
    let y = Tensor::from_slice(&labels);
    let mut opt = tch::nn::Adam::default().build(&model.vs, 1e-3).unwrap();
    for _ in 0..3 {
        let loss = model.net.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }

    let images = sample_images(n);
    let input = Tensor::from_slice(&images).view([n as i64, 1, 28, 28]);
    let expected: Vec<f32> = tch::no_grad(|| model.net.forward_t(&input, false)).to_kind(Kind::Float).flatten(0, -1).try_into().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let meta = CheckpointMeta { model: config, epoch: 1, val_accuracy: None, val_loss: None, run_id: None, tracking_uri: None, producer: "parity test".into() };
    save_checkpoint(&ckpt, &model.net, &meta).unwrap();
    let onnx = dir.path().join("model.onnx");
    exporter::export_checkpoint(&ckpt, &onnx, &ExportOptions::default()).unwrap();

    let tract = OnnxModel::load(&onnx, BackendKind::Tract, 2).unwrap();
    let d_tract = max_abs_diff(&tract.run(&images, n).unwrap(), &expected);
    let d_ort = if ort_available {
        let ort = OnnxModel::load(&onnx, BackendKind::Ort, 2).unwrap();
        max_abs_diff(&ort.run(&images, n).unwrap(), &expected)
    } else {
        f32::NAN
    };
    let max_logit = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (d_tract, d_ort, max_logit)
}

#[test]
fn tch_tract_and_ort_agree_on_every_architecture() {
    // The venv's ONNX Runtime is part of the test set-up (scripts/setup.sh); its absence is a failure.
    // One libtorch thread: OpenMP stalls when the suite shares two cores with other tests.
    tch::set_num_threads(1);
    let ort_available = inference::ort_library().is_ok();
    assert!(ort_available, "ONNX Runtime not found: run scripts/setup.sh");
    let mut failures = Vec::new();
    for &arch in Arch::ALL {
        // resnet18 is the skeleton's reference case: 64 images; 16 elsewhere keeps the suite short.
        let n = if arch == Arch::Resnet18 { 64 } else { 16 };
        let (d_tract, d_ort, max_logit) = check(arch, n, ort_available);
        println!("{arch:<20} tract {d_tract:.2e} ort {d_ort:.2e} max |logit| {max_logit:.2e} ({n} images)");
        let relative = TOL_RELATIVE * max_logit;
        if !(d_tract <= TOL_TRACT.min(relative)) || !(d_ort <= TOL_ORT.min(relative)) {
            failures.push(format!("{arch}: tract {d_tract:e} (tol {TOL_TRACT:e}), ort {d_ort:e} (tol {TOL_ORT:e}), relative tol {relative:e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

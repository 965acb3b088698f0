//! The whole chain on every architecture: a network trained a few steps in tch, saved as a
//! checkpoint, exported to ONNX, then run by tract and ONNX Runtime must give tch's eval-mode
//! logits on real sample images. One parity suite, one named tolerance per backend.

use std::path::PathBuf;

use exporter::ExportOptions;
use inference::{BackendKind, Model as OnnxModel};
use models::approx::{self, Agreement, Mismatch, Tolerance};
use models::{Arch, CheckpointMeta, ModelConfig};
use tch::{nn::OptimizerConfig, Device, Kind, Tensor};
use trainer::{save_checkpoint, Model};

/// Max |logit difference| allowed between tch (eval) and each ONNX runtime: 1e-4, and also 1e-5
/// of the largest logit: MobileNets start with logits near 0.1 (classifier init std 0.01), where
/// an absolute 1e-4 alone would let a wrong activation through.
const TOL_TRACT: Tolerance = Tolerance::RUNTIMES_SCALED;
const TOL_ORT: Tolerance = Tolerance::RUNTIMES_SCALED;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sample_images(n: usize) -> Vec<f32> {
    let test = data::load(&root().join("sample/digit-recognizer.zip"), data::Split::Test).unwrap();
    test.to_f32(&(0..n).collect::<Vec<_>>())
}

/// Trains `arch` for a few Adam steps on labelled sample images so BatchNorm statistics and
/// weights are no longer at their initial values, then compares tract and ort with tch: NaN or
/// infinite logits are a mismatch, never "no difference".
fn check(arch: Arch, n: usize) -> [Result<Agreement, Mismatch>; 2] {
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
    let expected: Vec<f32> =
        tch::no_grad(|| model.net.forward_t(&input, false)).to_kind(Kind::Float).flatten(0, -1).try_into().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let meta = CheckpointMeta {
        model: config,
        epoch: 1,
        val_accuracy: None,
        val_loss: None,
        run_id: None,
        tracking_uri: None,
        producer: "parity test".into(),
    };
    save_checkpoint(&ckpt, &model.net, &meta).unwrap();
    let onnx = dir.path().join("model.onnx");
    exporter::export_checkpoint(&ckpt, &onnx, &ExportOptions::default()).unwrap();

    [(BackendKind::Tract, TOL_TRACT), (BackendKind::Ort, TOL_ORT)].map(|(backend, tol)| {
        let got = OnnxModel::load(&onnx, backend, 2).unwrap().run(&images, n).unwrap();
        approx::check(&got, &expected, tol)
    })
}

#[test]
fn tch_tract_and_ort_agree_on_every_architecture() {
    // The venv's ONNX Runtime is part of the test set-up (scripts/setup.sh); its absence is a failure.
    // One libtorch thread: OpenMP stalls when the suite shares two cores with other tests.
    tch::set_num_threads(1);
    assert!(inference::ort_library().is_ok(), "ONNX Runtime not found: run scripts/setup.sh");
    let mut failures = Vec::new();
    for &arch in Arch::ALL {
        // resnet18 is the skeleton's reference case: 64 images; 16 elsewhere keeps the suite short.
        let n = if arch == Arch::Resnet18 { 64 } else { 16 };
        for (backend, result) in ["tract", "ort"].iter().zip(check(arch, n)) {
            match result {
                Ok(a) => {
                    println!("{arch:<20} {backend:<5} {:.2e} max |logit| {:.2e} ({n} images)", a.max_abs_diff, a.scale)
                }
                Err(e) => failures.push(format!("{arch}: {backend} vs tch: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

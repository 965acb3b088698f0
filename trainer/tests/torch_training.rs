//! Training itself against PyTorch: from the same initial weights and the same batches, the
//! seed recipe's steps (train-mode forward, cross-entropy, backward, Adam) give the same losses
//! step by step, the same BatchNorm statistics and the same eval logits as torchvision's
//! resnet18 under torch.optim.Adam (torch_training.py, run with the project venv's python).
//! Forward parity alone (torch_reference.rs) would not catch a wrong optimizer, loss or
//! parameter set.

mod common;

use std::path::Path;
use std::process::Command;

use models::{Arch, ModelConfig};
use tch::{Device, Tensor};
use trainer::{save_weights, Model};

const BATCH: usize = 64;
const STEPS: usize = 12;
const LR: f64 = 1e-3;

#[test]
fn seed_recipe_steps_match_pytorch() {
    let python = common::venv_python();
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let model = Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap();
    let net = &model.net;
    let tmp = tempfile::tempdir().unwrap();
    save_weights(&tmp.path().join("init.safetensors"), net).unwrap();

    let (x, y) = common::sample_batch(BATCH * STEPS + BATCH);
    let mut opt = trainer::train::adam(net, LR).unwrap();
    let losses: Vec<f64> = (0..STEPS)
        .map(|i| {
            let (s, n) = ((i * BATCH) as i64, BATCH as i64);
            trainer::train::train_step(net, &mut opt, &x.narrow(0, s, n), &y.narrow(0, s, n)).unwrap()
        })
        .collect();
    // Held-out images, in eval mode: depends on the weights and the running statistics.
    let held_out = x.narrow(0, (BATCH * STEPS) as i64, BATCH as i64);
    let eval_logits = tch::no_grad(|| net.forward_t(&held_out, false));
    save_weights(&tmp.path().join("after.safetensors"), net).unwrap();
    Tensor::write_safetensors(
        &[("x", &x), ("y", &y), ("losses", &Tensor::from_slice(&losses)), ("eval_logits", &eval_logits)],
        tmp.path().join("io.safetensors"),
    )
    .unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_training.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(tmp.path())
        .args([BATCH.to_string(), STEPS.to_string(), LR.to_string()])
        .output()
        .expect("venv python runs");
    let stdout = common::text(&out.stdout);
    println!("ours: {losses:.5?}\n{stdout}");
    assert!(out.status.success(), "PyTorch training differs:\n{stdout}\n{}", common::text(&out.stderr));
    assert!(stdout.contains("steps compared: 12"), "{stdout}");
    // The losses moved: a test on a model that does not learn would prove nothing.
    assert!(losses[STEPS - 1] < losses[0] - 0.5, "{losses:?}");
}

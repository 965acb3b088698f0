//! Our lowering against PyTorch itself: the same weights give the same eval logits,
//! train-mode logits and BatchNorm running-statistic updates as torchvision's models
//! (see torch_reference.py, run with the project venv's python).

mod common;

use std::path::Path;
use std::process::Command;

use models::{Arch, ModelConfig, Normalization, Op};
use tch::{Device, Kind, Tensor};
use trainer::{save_checkpoint, save_weights, Model, PRODUCER};

struct Case {
    name: String,
    config: ModelConfig,
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> =
        Arch::ALL.iter().map(|&a| Case { name: a.name().to_string(), config: ModelConfig::new(a) }).collect();
    // The input prologue: gray repeated to 3 channels, and a non-identity normalization.
    cases.push(Case {
        name: "mobilenet_v3_small_rgb_norm".into(),
        config: ModelConfig {
            in_channels: 3,
            normalization: Normalization { scale: 1.0 / 255.0, mean: 0.1307, std: 0.3081 },
            ..ModelConfig::new(Arch::MobilenetV3Small)
        },
    });
    cases.push(Case {
        name: "resnet18_rgb".into(),
        config: ModelConfig { in_channels: 3, ..ModelConfig::new(Arch::Resnet18) },
    });
    cases
}

/// Writes the files torch_reference.py reads for one case.
fn prepare(case: &Case, dir: &Path, seed: i64) -> serde_json::Value {
    tch::manual_seed(seed);
    let mut graph = models::build(&case.config).unwrap();
    // Train-mode outputs must be deterministic to compare: no dropout, no stochastic depth
    // (the python side sets the same p = 0).
    for node in &mut graph.nodes {
        match &mut node.op {
            Op::Dropout { p } | Op::StochasticDepth { p } => *p = 0.0,
            _ => {}
        }
    }
    let model = Model::from_graph(graph, &case.config, Device::Cpu).unwrap();
    let net = &model.net;

    // Realistic, non-default state: running stats warmed up on real digits, BN affine
    // parameters moved away from 1/0 so that a lowering ignoring them would fail.
    let (warm, _) = common::sample_batch(96);
    tch::no_grad(|| {
        for chunk in 0..3 {
            let _ = net.forward_t(&warm.narrow(0, 32 * chunk, 32), true);
        }
        for (spec, t) in net.params() {
            let is_bn_affine = net.graph().nodes.iter().any(|n| match &n.op {
                Op::BatchNorm(b) => {
                    spec.name == format!("{}.weight", b.name) || spec.name == format!("{}.bias", b.name)
                }
                _ => false,
            });
            if is_bn_affine {
                let mut t = t.shallow_clone();
                let noise = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2;
                t.copy_(&(&t + noise));
            }
        }
    });
    let meta = models::CheckpointMeta {
        model: case.config.clone(),
        epoch: 0,
        val_accuracy: None,
        val_loss: None,
        run_id: None,
        tracking_uri: None,
        producer: PRODUCER.into(),
    };
    save_checkpoint(&dir.join("before"), net, &meta).unwrap();

    // 16 real images not used for the warm-up.
    let ds = common::sample();
    let idx: Vec<usize> = (200..216).collect();
    let x = Tensor::from_slice(&ds.to_f32(&idx)).reshape([16, 1, 28, 28]);
    let (eval_logits, train_logits) = tch::no_grad(|| (net.forward_t(&x, false), net.forward_t(&x, true)));
    assert_eq!(eval_logits.size(), [16, 10], "{}", case.name);
    Tensor::write_safetensors(
        &[("input", &x), ("eval_logits", &eval_logits), ("train_logits", &train_logits)],
        dir.join("io.safetensors"),
    )
    .unwrap();
    save_weights(&dir.join("after.safetensors"), net).unwrap();

    let n = case.config.normalization;
    serde_json::json!({
        "name": case.name,
        "arch": case.config.arch.name(),
        "in_channels": case.config.in_channels,
        "num_classes": case.config.num_classes,
        "normalization": {"scale": n.scale, "mean": n.mean, "std": n.std},
        "dir": dir.display().to_string(),
    })
}

#[test]
fn lowering_matches_torchvision_eval_train_and_running_stats() {
    let python = common::venv_python();
    // One thread: OpenMP barriers stall on a loaded 2-core machine (see overfit.rs).
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let specs: Vec<serde_json::Value> =
        cases().iter().enumerate().map(|(i, c)| prepare(c, &tmp.path().join(&c.name), 100 + i as i64)).collect();
    let list = tmp.path().join("cases.json");
    std::fs::write(&list, serde_json::to_string_pretty(&specs).unwrap()).unwrap();
    let prepared = started.elapsed();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_reference.py");
    let out = Command::new(&python).arg(&script).arg(&list).output().expect("venv python runs");
    let stdout = common::text(&out.stdout);
    println!("{stdout}");
    println!("(rust side {prepared:.1?}, total {:.1?})", started.elapsed());
    assert!(out.status.success(), "torch reference failed:\n{stdout}\n{}", common::text(&out.stderr));
    // Every case was really compared.
    assert_eq!(stdout.lines().filter(|l| l.contains("eval logits max|diff|")).count(), specs.len(), "{stdout}");
}

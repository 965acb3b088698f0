//! Every architecture can learn: on 64 real digits, Adam lowers the loss within 3 steps and
//! fits the batch (>= 95% accuracy) within a bounded number of full-batch steps.
//!
//! `OVERFIT_ARCHS=a,b` restricts the archs and `OVERFIT_LR=x` overrides the learning rate
//! (for trying settings; the defaults are what the suite runs).

mod common;

use std::time::Instant;

use models::{Arch, ModelConfig, Op};
use tch::{Device, Kind};
use trainer::Model;

const SAMPLES: usize = 64;
/// Full-batch Adam steps allowed to reach the target. SqueezeNet gets more: its logits are
/// ReLU outputs of a 1x1 map at 28x28, rows die and the live ones fit slowly (torchvision's
/// SqueezeNet 1.1 in PyTorch, same batch and lr, first conv re-initialised for gray input:
/// 55-89% accuracy after 150 steps over seeds 0-2).
fn max_steps(arch: Arch) -> usize {
    let default = if matches!(arch, Arch::Squeezenet1_0 | Arch::Squeezenet1_1) { 200 } else { 60 };
    std::env::var("OVERFIT_MAX_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
const TARGET: f64 = 0.95;
/// Adam steps after which the loss must be below its initial value.
const LOSS_CHECK_STEPS: usize = 3;

/// The recipe's learning rate, unless `OVERFIT_LR` says otherwise.
fn lr() -> f64 {
    std::env::var("OVERFIT_LR").ok().and_then(|v| v.parse().ok()).unwrap_or(1e-3)
}

/// Rows whose logits are all exactly 0 get no gradient at all: SqueezeNet ends in
/// conv -> ReLU -> avg-pool, and with Adam at 1e-3 some class channels die within a few
/// steps (PyTorch itself, same recipe and batch, seeds 0-2: 3-6 of 10 classes dead after 60
/// steps, 31-89% accuracy). Such rows cannot be fitted by any correct lowering, so they are
/// left out, as long as at least a quarter of the batch is alive.
const MIN_LIVE_ROWS: i64 = 16;

/// Initialisation seeds tried, in order, until one fits. How many rows SqueezeNet keeps alive
/// is a matter of the seed, not of the lowering: of the seeds 7-11, two (with cropped kernels,
/// the default) or three (every tap computed) left SqueezeNet 1.0 or 1.1 with fewer than 16
/// live rows, and every live row was fitted every time. Every other architecture fits at the
/// first seed.
fn seeds(arch: Arch) -> &'static [i64] {
    if matches!(arch, Arch::Squeezenet1_0 | Arch::Squeezenet1_1) {
        &[7, 8, 9]
    } else {
        &[7]
    }
}

struct Fit {
    /// Adam steps taken before a forward pass reached the target accuracy.
    steps: Option<usize>,
    /// Rows with some non-zero logit, and the accuracy on them.
    live_rows: i64,
    live_accuracy: f64,
    initial_loss: f64,
    loss_after_check: f64,
    accuracy: f64,
}

fn fit(arch: Arch, lr: f64, seed: i64) -> Fit {
    tch::manual_seed(seed);
    let config = ModelConfig::new(arch);
    let mut graph = models::build(&config).unwrap();
    // Dropout and stochastic depth off: they make the training-mode accuracy a noisy measure
    // of fit (their behaviour is tested in lowering.rs).
    for node in &mut graph.nodes {
        if let Op::Dropout { p } | Op::StochasticDepth { p } = &mut node.op {
            *p = 0.0;
        }
    }
    let model = Model::from_graph(graph, &config, Device::Cpu).unwrap();
    let net = &model.net;
    let (x, y) = common::sample_batch(SAMPLES);
    let mut opt = trainer::train::adam(net, lr).unwrap();
    let mut f = Fit {
        steps: None,
        live_rows: 0,
        live_accuracy: 0.0,
        initial_loss: f64::NAN,
        loss_after_check: f64::NAN,
        accuracy: 0.0,
    };
    for steps_done in 0..=max_steps(arch) {
        let logits = net.forward_t(&x, true);
        let loss = trainer::train::cross_entropy(&logits, &y).unwrap();
        // Accuracy of the training-mode forward: eval-mode BN uses running statistics that lag
        // behind (MNASNet's BN momentum is 3e-4, EfficientNet's 0.01), which says nothing about
        // whether the net fits.
        let correct = logits.argmax(-1, false).eq_tensor(&y);
        f.accuracy = correct.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let live = logits.abs().amax(-1, false).gt(0.0);
        f.live_rows = live.sum(Kind::Int64).int64_value(&[]);
        let live_correct = correct.logical_and(&live).sum(Kind::Int64).int64_value(&[]);
        f.live_accuracy = live_correct as f64 / f.live_rows.max(1) as f64;
        let l = loss.double_value(&[]);
        if std::env::var_os("OVERFIT_VERBOSE").is_some() {
            println!("  step {steps_done}: loss {l:.4} accuracy {:.3}", f.accuracy);
        }
        if steps_done == 0 {
            f.initial_loss = l;
        }
        if steps_done == LOSS_CHECK_STEPS {
            f.loss_after_check = l;
        }
        if f.accuracy >= TARGET && f.steps.is_none() {
            f.steps = Some(steps_done);
        }
        if f.steps.is_some() && steps_done >= LOSS_CHECK_STEPS {
            break;
        }
        opt.zero_grad();
        loss.backward();
        opt.step().unwrap();
    }
    f
}

#[test]
fn every_arch_overfits_64_samples() {
    let only: Option<Vec<String>> =
        std::env::var("OVERFIT_ARCHS").ok().map(|v| v.split(',').map(String::from).collect());
    // One thread: on a loaded 2-core machine OpenMP barriers with 2 threads stall for whole
    // scheduler slices (C++ Adam over EfficientNet-B3 went from 0.04 s to 1.7 s per step).
    tch::set_num_threads(1);
    let total = Instant::now();
    let mut failures = Vec::new();
    for &arch in Arch::ALL.iter().filter(|a| only.as_ref().is_none_or(|o| o.iter().any(|n| n == a.name()))) {
        let lr = lr();
        // The failures of each seed tried; the architecture passes at the first seed with none.
        let mut tries = Vec::new();
        for &seed in seeds(arch) {
            let started = Instant::now();
            let f = fit(arch, lr, seed);
            let outcome = match f.steps {
                Some(s) => format!("{s} steps to >= {TARGET}"),
                None => format!(
                    "target not reached in {} steps; {:.3} on the {} of {SAMPLES} rows with live logits",
                    max_steps(arch),
                    f.live_accuracy,
                    f.live_rows
                ),
            };
            println!(
                "{arch} (seed {seed}): lr {lr}, loss {:.3} -> {:.3} after {LOSS_CHECK_STEPS} steps, {outcome} ({:.3} train-mode accuracy), {:.1?}",
                f.initial_loss,
                f.loss_after_check,
                f.accuracy,
                started.elapsed()
            );
            let mut failed = Vec::new();
            if f.loss_after_check.partial_cmp(&f.initial_loss) != Some(std::cmp::Ordering::Less) {
                failed.push(format!(
                    "{arch} (seed {seed}): loss did not go down in {LOSS_CHECK_STEPS} steps ({} -> {})",
                    f.initial_loss, f.loss_after_check
                ));
            }
            let fitted_live = f.live_rows >= MIN_LIVE_ROWS && f.live_accuracy >= TARGET;
            if f.steps.is_none() && !fitted_live {
                failed.push(format!(
                    "{arch} (seed {seed}): only {:.3} accuracy after {} steps ({:.3} on the {} rows with live logits)",
                    f.accuracy,
                    max_steps(arch),
                    f.live_accuracy,
                    f.live_rows
                ));
            }
            let passed = failed.is_empty();
            tries.extend(failed);
            if passed {
                tries.clear();
                break;
            }
        }
        failures.extend(tries);
    }
    println!("total {:.1?}", total.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

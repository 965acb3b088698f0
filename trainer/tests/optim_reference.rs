//! Our Adam/AdamW and learning-rate schedules against torch.optim (AdamW + OneCycleLR with
//! and without cycle_momentum, Adam with coupled weight decay + the per-epoch step decay) on
//! the same parameters and gradients, step by step.

mod common;

use std::process::Command;

use tch::{Device, Kind, Tensor};
use trainer::optim::Optimizer;
use trainer::{Hyper, OptimizerKind, Recipe, Schedule};

const STEPS: usize = 12;

const TORCH: &str = r#"
import json, math, sys, torch
kind, schedule, lr, wd, warmup, decay = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
steps, cycle = int(sys.argv[7]), sys.argv[8] == "cycle"
torch.set_default_dtype(torch.float32)
p1 = torch.nn.Parameter(torch.sin(torch.arange(12, dtype=torch.float32)).reshape(4, 3))
p2 = torch.nn.Parameter(torch.cos(torch.arange(3, dtype=torch.float32)))
groups = [{"params": [p1], "weight_decay": wd}, {"params": [p2], "weight_decay": 0.0}]
opt = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(groups, lr=lr)
if schedule == "onecycle":
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup, cycle_momentum=cycle)
lrs, beta1s = [], []
for step in range(steps):
    if schedule == "step":
        for g in opt.param_groups:
            g["lr"] = lr * decay ** (step // 4)  # "epochs" of 4 steps
    lrs.append(opt.param_groups[0]["lr"])
    beta1s.append(opt.param_groups[0]["betas"][0])
    k = step + 1.0
    loss = torch.sin(p1 * k).sum() + (p2 * p2 * k).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if schedule == "onecycle":
        sched.step()
print(json.dumps({"lrs": lrs, "beta1s": beta1s, "p1": p1.detach().flatten().tolist(), "p2": p2.detach().tolist()}))
"#;

fn run_case(kind: OptimizerKind, schedule: Schedule, cycle_momentum: bool, lr: f64, wd: f64, warmup: f64, decay: f64) {
    let kind_name = if kind == OptimizerKind::Adamw { "adamw" } else { "adam" };
    let sched_name = if schedule == Schedule::Onecycle { "onecycle" } else { "step" };
    let out = Command::new(common::venv_python())
        .args(["-c", TORCH, kind_name, sched_name])
        .args([lr, wd, warmup, decay].map(|v| v.to_string()))
        .arg(STEPS.to_string())
        .arg(if cycle_momentum { "cycle" } else { "fixed" })
        .output()
        .expect("venv python runs");
    assert!(out.status.success(), "torch reference failed: {}", common::text(&out.stderr));
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let hyper = Hyper {
        optimizer: kind,
        schedule,
        cycle_momentum,
        lr,
        weight_decay: wd,
        warmup,
        lr_decay: decay,
        ..Hyper::new(Recipe::Seed)
    };
    hyper.validate().unwrap();
    let p1 = Tensor::arange(12, (Kind::Float, Device::Cpu)).sin().reshape([4, 3]).set_requires_grad(true);
    let p2 = Tensor::arange(3, (Kind::Float, Device::Cpu)).cos().set_requires_grad(true);
    let mut opt = Optimizer::new(
        kind,
        lr,
        wd,
        vec![("p1".into(), p1.shallow_clone(), true), ("p2".into(), p2.shallow_clone(), false)],
    )
    .unwrap();
    for step in 0..STEPS {
        let epoch = step / 4 + 1;
        let lr_now = hyper.lr_at(epoch, step, STEPS);
        let want_lr = want["lrs"][step].as_f64().unwrap();
        assert!(
            (lr_now - want_lr).abs() <= 1e-12 * want_lr.abs().max(1.0),
            "{sched_name} step {step}: lr {lr_now} vs torch {want_lr}"
        );
        opt.set_lr(lr_now);
        let (beta1, want_beta1) = (hyper.beta1_at(step, STEPS), want["beta1s"][step].as_f64().unwrap());
        assert!((beta1 - want_beta1).abs() <= 1e-12, "{sched_name} step {step}: beta1 {beta1} vs torch {want_beta1}");
        opt.set_beta1(beta1);
        let k = step as f64 + 1.0;
        let loss = (&p1 * k).sin().sum(Kind::Float) + (&p2 * &p2 * k).sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step().unwrap();
    }
    for (name, t) in [("p1", &p1), ("p2", &p2)] {
        let ours = Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap();
        let theirs: Vec<f64> = want[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-6, "{kind_name}/{sched_name}: {name}[{i}] = {a}, torch {b}");
        }
    }
}

#[test]
fn adamw_with_one_cycle_matches_torch() {
    run_case(OptimizerKind::Adamw, Schedule::Onecycle, false, 0.01, 0.05, 0.25, 1.0);
}

#[test]
fn adamw_with_one_cycle_and_cycled_momentum_matches_torch() {
    run_case(OptimizerKind::Adamw, Schedule::Onecycle, true, 0.01, 0.05, 0.25, 1.0);
}

#[test]
fn adam_with_coupled_decay_and_step_schedule_matches_torch() {
    run_case(OptimizerKind::Adam, Schedule::Step, false, 0.01, 0.05, 0.0, 0.75);
}

#[test]
fn cosine_schedule_warms_up_then_decays_to_zero() {
    let h = Hyper { schedule: Schedule::Cosine, lr: 1.0, warmup: 0.1, ..Hyper::new(Recipe::Seed) };
    let lrs: Vec<f64> = (0..100).map(|s| h.lr_at(1, s, 100)).collect();
    assert!((lrs[0] - 0.1).abs() < 1e-12 && (lrs[9] - 1.0).abs() < 1e-12, "{:?}", &lrs[..10]);
    assert!(lrs[10..].windows(2).all(|w| w[1] <= w[0]), "not decreasing after warm-up");
    assert!(lrs[99] < 1e-3 && lrs[99] >= 0.0);
}

/// Our Adam against libtorch's own C++ `torch::optim::Adam` (tch's COptimizer) on a real
/// network: same init, same batches, a few steps, same weights.
#[test]
fn adam_matches_libtorch_cpp_adam_on_a_network() {
    use models::{Arch, ModelConfig, Op};
    use trainer::Model;
    let config = ModelConfig::new(Arch::Squeezenet1_1);
    let build = || {
        tch::manual_seed(7);
        let mut graph = models::build(&config).unwrap();
        for node in &mut graph.nodes {
            if let Op::Dropout { p } | Op::StochasticDepth { p } = &mut node.op {
                *p = 0.0;
            }
        }
        Model::from_graph(graph, &config, Device::Cpu).unwrap()
    };
    let (ours, theirs) = (build(), build());
    let (x, y) = common::sample_batch(32);
    let mut opt = trainer::train::adam(&ours.net, 1e-3).unwrap();
    let mut cpp = tch::COptimizer::adam(1e-3, 0.9, 0.999, 0.0, 1e-8, false).unwrap();
    for (spec, t) in theirs.net.params() {
        if spec.kind == models::ParamKind::Trainable {
            cpp.add_parameters(t, 0).unwrap();
        }
    }
    for _ in 0..5 {
        trainer::train::train_step(&ours.net, &mut opt, &x, &y).unwrap();
        let loss = trainer::train::cross_entropy(&theirs.net.forward_t(&x, true), &y).unwrap();
        cpp.zero_grad().unwrap();
        loss.backward();
        cpp.step().unwrap();
    }
    for ((spec, a), (_, b)) in ours.net.params().iter().zip(theirs.net.params()) {
        let diff = f64::try_from((a - b).abs().max()).unwrap();
        assert!(diff < 1e-5, "{}: ours and libtorch's Adam differ by {diff}", spec.name);
    }
}

//! The trainer on a CUDA GPU: the training set on the device, every recipe with and without
//! `--amp`, `--device auto`, a kill and `--resume`, MLflow's metrics, and 20 seed-recipe steps
//! against PyTorch on the same GPU.
//!
//! Where the build host has no NVIDIA driver (build.rs sets `cfg(cuda_host)` when it has one)
//! these tests are listed as ignored, never as passed. A binary built on a CPU machine runs
//! them on a GPU host with `--include-ignored` (scripts/gpu_check.sh does); without a GPU they
//! then fail.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Device;
use trainer::loader::DeviceSet;

fn cuda() -> Device {
    assert!(tch::Cuda::is_available(), "libtorch sees no CUDA device: this test needs a GPU");
    Device::Cuda(0)
}

fn trainer(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .arg("--no-progress")
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .expect("trainer starts")
}

/// A short run on the sample: `extra`, then data, folders and `--limit`.
fn args(extra: &[&str], dir: &Path) -> Vec<String> {
    let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for (flag, value) in [
        ("--data", common::sample_zip()),
        ("--output-dir", dir.join("ckpts")),
        ("--mlruns", dir.join("mlruns")),
        ("--limit", PathBuf::from("1200")),
    ] {
        a.extend([flag.to_string(), value.display().to_string()]);
    }
    a
}

/// Values logged for `metric` in the one run of a file store (read from MLflow's files, as
/// the GPU host has no MLflow client).
fn metric_steps(mlruns: &Path, metric: &str) -> Vec<i64> {
    let files = common::files_named(mlruns, metric);
    let file = files.iter().find(|f| f.parent().is_some_and(|p| p.ends_with("metrics"))).expect("metric file");
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap()).collect()
}

fn ok(out: &Output) -> String {
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "trainer failed:\n{stdout}\n{}", common::text(&out.stderr));
    stdout
}

#[test]
#[cfg_attr(not(cuda_host), ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored")]
fn device_set_lives_on_the_gpu_and_gathers_the_cpu_batches() {
    let device = cuda();
    let ds = common::sample().subset(&(0..300).collect::<Vec<_>>());
    let (gpu, cpu) = (DeviceSet::new(&ds, device).unwrap(), DeviceSet::new(&ds, Device::Cpu).unwrap());
    assert_eq!(gpu.device(), device);
    let order: Vec<usize> = (0..300).rev().collect();
    let pairs = gpu.epoch(&order, 64).unwrap().zip(cpu.epoch(&order, 64).unwrap());
    for (g, c) in pairs {
        let ((gx, gy), (cx, cy)) = (g.unwrap(), c.unwrap());
        assert_eq!((gx.device(), gy.device()), (device, device), "a batch left the GPU");
        assert!(gx.to_device(Device::Cpu).equal(&cx) && gy.to_device(Device::Cpu).equal(&cy));
    }
}

#[test]
#[cfg_attr(not(cuda_host), ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored")]
fn every_recipe_trains_on_cuda_with_and_without_amp() {
    cuda();
    let tmp = tempfile::tempdir().unwrap();
    for (i, extra) in [
        &["--recipe", "seed", "--device", "cuda"][..],
        &["--recipe", "seed", "--device", "auto", "--amp"],
        &["--recipe", "strong", "--device", "cuda"],
        &["--recipe", "strong", "--device", "cuda", "--amp", "--elastic", "34"],
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(i.to_string());
        let mut a = vec!["--model", "cnn_digits", "--epochs", "2"];
        a.extend_from_slice(extra);
        let stdout = ok(&trainer(&args(&a, &dir)));
        assert!(stdout.contains("device: cuda:0"), "{extra:?} did not train on the GPU:\n{stdout}");
        assert_eq!(common::epoch_lines(&stdout).len(), 2, "{stdout}");
        assert_eq!(metric_steps(&dir.join("mlruns"), "accuracy"), [1, 2], "one value per epoch");
        let acc: f64 = stdout
            .lines()
            .rev()
            .filter_map(|l| l.split("val_accuracy ").nth(1))
            .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
            .next()
            .unwrap();
        assert!(acc > 0.5, "{extra:?}: cnn_digits should pass 0.5 in 2 epochs on 960 images:\n{stdout}");
        assert!(dir.join("ckpts/cnn_digits/best/model.safetensors").is_file());
    }
}

#[test]
#[cfg_attr(not(cuda_host), ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored")]
fn a_run_killed_on_the_gpu_resumes_and_logs_each_epoch_once() {
    cuda();
    let tmp = tempfile::tempdir().unwrap();
    let a = args(
        &["--model", "cnn_digits", "--recipe", "strong", "--device", "cuda", "--epochs", "3", "--no-progress"],
        tmp.path(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&a)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut run_id = None;
    for line in BufReader::new(child.stdout.as_mut().unwrap()).lines() {
        let line = line.unwrap();
        run_id = run_id.or_else(|| line.strip_prefix("MLflow run id: ").map(|r| r.trim().to_string()));
        if line.starts_with("epoch 1/") {
            break;
        }
    }
    // The epoch line comes before the checkpoint: wait for the checkpoint itself.
    let last = tmp.path().join("ckpts/cnn_digits/last");
    let deadline = Instant::now() + Duration::from_secs(60);
    while trainer::state::TrainState::load(&last).map_or(true, |s| s.epoch < 1) {
        assert!(Instant::now() < deadline, "no epoch-1 checkpoint after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = run_id.expect("run id printed");
    let out = trainer(&[
        "--resume".into(),
        run_id.clone(),
        "--mlruns".into(),
        tmp.path().join("mlruns").display().to_string(),
        "--device".into(),
        "cuda".into(),
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("device: cuda:0"), "{stdout}");
    assert_eq!(common::printed_run_id(&stdout), run_id);
    assert_eq!(metric_steps(&tmp.path().join("mlruns"), "accuracy"), [1, 2, 3], "one value per epoch");
}

/// Relative loss tolerance of 20 resnet18 steps against PyTorch on the same GPU: cuDNN may pick
/// other algorithms for the two callers, and TF32 convolutions (on by default in both) round
/// differently per algorithm, so bit equality (as on the CPU) is not expected.
const CUDA_LOSS_RTOL: f64 = 1e-3;
/// Eval logits and BatchNorm statistics after those 20 steps, absolute: the rounding above,
/// carried through 20 Adam steps. A real difference (a wrong eps, momentum or parameter set)
/// moves them by 1e-1 or more.
const CUDA_STATE_TOL: f64 = 2e-2;

#[test]
#[cfg_attr(not(cuda_host), ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored")]
fn seed_recipe_steps_match_pytorch_on_the_gpu() {
    let env =
        [("TORCH_TRAINING_LOSS_RTOL", CUDA_LOSS_RTOL.to_string()), ("TORCH_TRAINING_TOL", CUDA_STATE_TOL.to_string())];
    common::assert_steps_match_pytorch(cuda(), 20, common::StepsCase::RESNET18, &env);
}

//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tch::Tensor;

/// The workspace root (the folder above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate folder has a parent").to_path_buf()
}

/// A tensor's elements as f32, in logical order.
pub fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

/// The committed sample archive (4000 labelled rows).
pub fn sample_zip() -> PathBuf {
    workspace_root().join("sample").join("digit-recognizer.zip")
}

/// The project venv's python; fails the test (never skips it) when the venv is missing.
pub fn venv_python() -> PathBuf {
    let py = workspace_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/setup.sh to create the venv with torch, torchvision and mlflow \
         (this test compares against them)",
        py.display()
    );
    py
}

/// The labelled sample, loaded once per test binary.
pub fn sample() -> &'static data::Dataset {
    static DS: OnceLock<data::Dataset> = OnceLock::new();
    DS.get_or_init(|| data::load(&sample_zip(), data::Split::Train).expect("committed sample loads"))
}

/// The first `n` sample images as `[n,1,28,28]` pixel/255 and their labels (int64).
pub fn sample_batch(n: usize) -> (Tensor, Tensor) {
    let ds = sample();
    let idx: Vec<usize> = (0..n).collect();
    let x = Tensor::from_slice(&ds.to_f32(&idx)).reshape([n as i64, 1, 28, 28]);
    let labels = ds.labels.as_ref().expect("train split has labels");
    let y: Vec<i64> = idx.iter().map(|&i| i64::from(labels[i])).collect();
    (x, Tensor::from_slice(&y))
}

/// What a run's artifact root holds after its best epoch (sorted, as MLflow lists them).
pub const BEST_EPOCH_ARTIFACTS: [&str; 5] =
    ["checkpoint", "confusion_matrix.csv", "confusion_matrix.png", "per_class_accuracy.csv", "train_config.json"];
/// What the run's `checkpoint/` artifact folder holds.
pub const CHECKPOINT_ARTIFACTS: [&str; 2] = ["checkpoint/config.json", "checkpoint/model.safetensors"];

/// `extra` followed by what every test run shares: CPU, one thread (test binaries run in
/// parallel), `data`, checkpoints in `dir/ckpts` and the MLflow store in `dir/mlruns`.
pub fn trainer_args(extra: &[&str], data: &Path, dir: &Path) -> Vec<String> {
    let paths = [("--data", data.to_path_buf()), ("--output-dir", dir.join("ckpts")), ("--mlruns", dir.join("mlruns"))];
    let mut args: Vec<String> =
        extra.iter().chain(&["--device", "cpu", "--threads", "1"]).map(|s| s.to_string()).collect();
    for (flag, path) in paths {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args
}

/// Runs the trainer binary with `args`, without progress bars.
pub fn run_trainer<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).arg("--no-progress").output().expect("trainer binary starts")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Printed epoch lines without the throughput (which depends on the machine's load).
pub fn epoch_lines(stdout: &str) -> Vec<String> {
    stdout.lines().filter(|l| l.starts_with("epoch ")).map(|l| l.split(" (").next().unwrap().to_string()).collect()
}

/// The run id the trainer printed last.
pub fn printed_run_id(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("MLflow run id: "))
        .unwrap_or_else(|| panic!("no run id printed:\n{stdout}"))
        .trim()
        .to_string()
}

/// Runs `script` with the venv's python and `args`, returning its stdout parsed as JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("MLFLOW_ALLOW_FILE_STORE", "true")
        .env("GIT_PYTHON_REFRESH", "quiet")
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .expect("venv python runs");
    assert!(out.status.success(), "python failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python output is not JSON ({e}): {}", text(&out.stdout)))
}

/// Reads a run with MlflowClient: status, params, tags, every metric's (step, value) history
/// and the artifact paths (root and `checkpoint/`).
pub const READ_RUN_FULL: &str = r#"
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
run = client.get_run(sys.argv[2])
keys = ["loss", "val_loss", "error", "accuracy", "lr", "epoch_seconds", "images_per_second"]
print(json.dumps({
    "status": run.info.status,
    "run_name": run.info.run_name,
    "experiment": client.get_experiment(run.info.experiment_id).name,
    "params": run.data.params,
    "tags": run.data.tags,
    "metrics": {k: [[m.step, m.value] for m in client.get_metric_history(sys.argv[2], k)] for k in keys},
    "artifacts": sorted(a.path for a in client.list_artifacts(sys.argv[2])),
    "checkpoint": sorted(a.path for a in client.list_artifacts(sys.argv[2], "checkpoint")),
}))
"#;

/// Asserts every per-epoch metric has exactly one value per epoch 1..=epochs.
pub fn assert_one_value_per_epoch(run: &serde_json::Value, epochs: i64) {
    for (key, hist) in run["metrics"].as_object().unwrap() {
        let steps: Vec<i64> = hist.as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(steps, (1..=epochs).collect::<Vec<_>>(), "metric {key}: {run}");
    }
}

/// Every file called `name` under `dir`, recursively.
pub fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                found.extend(files_named(&p, name));
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found
}

/// How [`assert_steps_match_pytorch`] runs both sides.
#[derive(Debug, Clone, Copy)]
pub struct StepsCase {
    /// resnet18 (torchvision's, 1-channel first conv) or a digit net of torch_nets.py.
    pub arch: models::Arch,
    /// Our trainer's default: convolutions whose kernel overhangs the map on the taps that touch
    /// real input ([`trainer::Net::set_kernel_crops`]); PyTorch then runs the same crops
    /// (written to `crops.json`), else every tap.
    pub crop: bool,
    /// Weights channels-last on both sides (`model.to(memory_format=torch.channels_last)`).
    pub channels_last: bool,
}

impl StepsCase {
    pub const RESNET18: StepsCase = StepsCase { arch: models::Arch::Resnet18, crop: true, channels_last: false };
}

/// Trains `case.arch` for `steps` seed-recipe steps (batch 64, Adam 1e-3) on `device` from
/// fixed initial weights and sample batches, then has torch_training.py replay them in PyTorch
/// on the same device (`env` sets its tolerances) and asserts it agrees. The shared body of
/// torch_training.rs (CPU, bit for bit) and cuda.rs (GPU, within tolerances). Both sides seed
/// their generator alike before the first step, so dropout draws the same masks.
pub fn assert_steps_match_pytorch(device: tch::Device, steps: usize, case: StepsCase, env: &[(&str, String)]) {
    const BATCH: usize = 64;
    const LR: f64 = 1e-3;
    const STEP_SEED: i64 = 11;
    // libtorch's generator is global: two of these at once would interleave their draws.
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let python = venv_python();
    tch::manual_seed(3);
    let mut model = trainer::Model::new(&models::ModelConfig::new(case.arch), device).unwrap();
    model.net.set_kernel_crops(case.crop);
    model.net.set_channels_last(case.channels_last).unwrap();
    let net = &model.net;
    let tmp = tempfile::tempdir().unwrap();
    // {"layer4.0.conv2": [[first, len, pad_before, pad_after] of h, the same of w], ...}
    let crops: serde_json::Map<String, serde_json::Value> = net
        .live_taps()
        .into_iter()
        .map(|(name, k)| {
            let axes = k.0.map(|a| serde_json::json!([a.first, a.len, a.pad_before, a.pad_after]));
            (name.trim_end_matches(".weight").to_string(), serde_json::json!(axes))
        })
        .collect();
    assert_eq!(crops.is_empty(), !case.crop || case.arch != models::Arch::Resnet18);
    std::fs::write(tmp.path().join("crops.json"), serde_json::Value::Object(crops).to_string()).unwrap();
    trainer::save_weights(&tmp.path().join("init.safetensors"), net).unwrap();
    let (x, y) = sample_batch(BATCH * steps + BATCH);
    let (xd, yd) = (x.to_device(device), y.to_device(device));
    let mut opt = trainer::train::adam(net, LR).unwrap();
    tch::manual_seed(STEP_SEED);
    let losses: Vec<f64> = (0..steps)
        .map(|i| {
            let (s, n) = ((i * BATCH) as i64, BATCH as i64);
            trainer::train::train_step(net, &mut opt, &xd.narrow(0, s, n), &yd.narrow(0, s, n)).unwrap()
        })
        .collect();
    // Held-out images, in eval mode: depends on the weights and the running statistics.
    let held_out = xd.narrow(0, (BATCH * steps) as i64, BATCH as i64);
    let eval_logits = tch::no_grad(|| net.forward_t(&held_out, false)).to_device(tch::Device::Cpu);
    trainer::save_weights(&tmp.path().join("after.safetensors"), net).unwrap();
    Tensor::write_safetensors(
        &[("x", &x), ("y", &y), ("losses", &Tensor::from_slice(&losses)), ("eval_logits", &eval_logits)],
        tmp.path().join("io.safetensors"),
    )
    .unwrap();
    let device_name = if device.is_cuda() { "cuda" } else { "cpu" };
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_training.py"))
        .arg(tmp.path())
        .args([BATCH.to_string(), steps.to_string(), LR.to_string()])
        .env("TORCH_TRAINING_DEVICE", device_name)
        .env("TORCH_TRAINING_ARCH", case.arch.name())
        .env("TORCH_TRAINING_CHANNELS_LAST", if case.channels_last { "1" } else { "0" })
        .env("TORCH_TRAINING_STEP_SEED", STEP_SEED.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("venv python runs");
    let stdout = text(&out.stdout);
    println!("ours: {losses:.5?}\n{stdout}");
    assert!(out.status.success(), "PyTorch training on {device_name} differs:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&format!("steps compared: {steps}")), "{stdout}");
    // The losses moved: a test on a model that does not learn would prove nothing.
    assert!(losses[steps - 1] < losses[0] - 0.5, "{losses:?}");
}

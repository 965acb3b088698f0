//! Shared by the integration tests: random checkpoints and the Python reference.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use models::{CheckpointMeta, Graph, Init, ModelConfig, Weights, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};

/// Largest |torch - onnxruntime| accepted on the logits (absolute, float32 inference).
pub const MAX_ABS_DIFF: f64 = 1e-4;
/// Largest |torch - onnxruntime| relative to the largest |logit|: float32 rounding grows with
/// magnitude, and some nets (MobileNet's 0.01-std classifier) have logits far below 1, where
/// the absolute bound alone would let a wrong activation constant through.
pub const MAX_REL_DIFF: f64 = 1e-5;
/// Images the reference runs through both runtimes.
pub const BATCH: usize = 16;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("exporter/ has a parent").to_path_buf()
}

/// The venv python with torch, torchvision, onnx, onnxruntime and mlflow; fails (never skips)
/// when it is missing, so a CI without it cannot pass by accident.
pub fn venv_python() -> PathBuf {
    let py = workspace_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/setup.sh to create the venv the exporter tests compare against",
        py.display()
    );
    py
}

pub fn sample_zip() -> PathBuf {
    let z = workspace_root().join("sample/digit-recognizer.zip");
    assert!(z.is_file(), "{} is missing (it is committed)", z.display());
    z
}

/// A float32 tensor of a test checkpoint, before [`write_weights`] checks and writes it.
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl F32Tensor {
    pub fn new(shape: Vec<usize>, data: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        F32Tensor { shape, data: data.to_vec() }
    }
}

fn normal(rng: &mut data::Rng) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn uniform(rng: &mut data::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// Random weights for every parameter of `graph`, drawn from its `ParamSpec::init` with a seeded
/// RNG. Constant inits (BatchNorm affine, zero biases) and the running statistics are
/// randomised too, so BatchNorm folding and biases are really exercised.
pub fn random_weights(graph: &Graph, seed: u64) -> BTreeMap<String, F32Tensor> {
    let mut rng = data::Rng::new(seed);
    let mut out = BTreeMap::new();
    for p in graph.params() {
        let n: usize = p.shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let v = if p.name.ends_with(".running_var") {
                    uniform(&mut rng, 0.5, 1.5)
                } else if p.name.ends_with(".running_mean") {
                    uniform(&mut rng, -0.3, 0.3)
                } else {
                    match p.init {
                        Init::Normal { std } => std * normal(&mut rng),
                        Init::Uniform { bound } => uniform(&mut rng, -bound, bound),
                        // Zero biases get small random values, ones (BatchNorm gamma) a spread around 1.
                        Init::Const(c) if c.abs() < f64::EPSILON => uniform(&mut rng, -0.1, 0.1),
                        Init::Const(c) => c * uniform(&mut rng, 0.5, 1.5),
                    }
                };
                v as f32
            })
            .collect();
        out.insert(p.name.clone(), F32Tensor::new(p.shape.clone(), &values));
    }
    out
}

/// Writes `tensors` as `<dir>/model.safetensors`, whether or not they fit an architecture.
pub fn write_weights(dir: &Path, tensors: &BTreeMap<String, F32Tensor>) {
    let mut w = Weights::new("exporter tests");
    for (name, t) in tensors {
        w.insert(name.as_str(), t.shape.clone(), t.data.clone()).unwrap();
    }
    w.write(&dir.join(CHECKPOINT_WEIGHTS_FILE)).unwrap();
}

pub fn meta_for(config: ModelConfig) -> CheckpointMeta {
    CheckpointMeta {
        model: config,
        epoch: 3,
        val_accuracy: Some(0.987),
        val_loss: Some(0.042),
        run_id: None,
        tracking_uri: None,
        producer: "exporter tests".into(),
    }
}

pub fn write_meta(dir: &Path, meta: &CheckpointMeta) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(CHECKPOINT_META_FILE), meta.to_json()).unwrap();
}

/// Writes a checkpoint directory with random weights; returns its graph.
pub fn write_checkpoint(dir: &Path, meta: &CheckpointMeta, seed: u64) -> Graph {
    let graph = models::build(&meta.model).expect("valid config");
    write_weights(dir, &random_weights(&graph, seed));
    write_meta(dir, meta);
    graph
}

/// Runs tests/reference.py on `jobs` (see the script) and returns one result per job.
pub fn run_reference(jobs: &serde_json::Value, work: &Path) -> Vec<serde_json::Value> {
    let jobs_file = work.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec_pretty(jobs).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(&jobs_file)
        .arg(sample_zip())
        .env("MLFLOW_ALLOW_FILE_STORE", "true")
        .output()
        .expect("run the venv python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Visible with --nocapture: library warnings (MLflow, onnxruntime) are worth reading.
    if !stderr.trim().is_empty() {
        eprintln!("reference.py stderr:\n{stderr}");
    }
    assert!(out.status.success(), "reference.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad result line {l}: {e}")))
        .collect();
    assert_eq!(
        results.len(),
        jobs.as_array().map_or(0, Vec::len),
        "one result per job expected; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    results
}

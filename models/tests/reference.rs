//! `models::reference::forward` against PyTorch: random weights for architectures covering
//! every op (ceil-mode and padded max-pools, grouped convs, BatchNorm2d/1d, Hardswish,
//! Hardsigmoid, SiLU, squeeze-and-excitation, concat, the normalising and channel-repeating
//! prologue), evaluated by torchvision through exporter/tests/reference.py on sample images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use models::approx::{self, Tolerance};
use models::{
    Arch, CheckpointMeta, Init, ModelConfig, Normalization, Weights, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE,
};

/// Largest |reference - torch| accepted on a logit (torch computes in float32), and relative to
/// the largest |logit|, so nets with tiny logits are held to their scale.
const TOL: Tolerance = Tolerance::RUNTIMES_SCALED;
const IMAGES: usize = 4;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("models/ has a parent").to_path_buf()
}

/// Fails (never skips) without the venv, so a setup without PyTorch cannot pass by accident.
fn venv_python() -> PathBuf {
    let py = workspace_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/setup.sh to create the venv this test compares against",
        py.display()
    );
    py
}

/// splitmix64: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.next_f64(), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Random weights from each parameter's init; BatchNorm statistics, affine parameters and
/// zero-initialised biases are randomised too so every term of every op matters.
fn random_weights(graph: &models::Graph, seed: u64) -> BTreeMap<String, Vec<f32>> {
    let mut rng = Rng(seed);
    graph
        .params()
        .into_iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let values = (0..n)
                .map(|_| {
                    let v = if p.name.ends_with(".running_var") {
                        rng.uniform(0.5, 1.5)
                    } else if p.name.ends_with(".running_mean") {
                        rng.uniform(-0.3, 0.3)
                    } else {
                        match p.init {
                            Init::Normal { std } => std * rng.normal(),
                            Init::Uniform { bound } => rng.uniform(-bound, bound),
                            Init::Const(0.0) => rng.uniform(-0.1, 0.1),
                            Init::Const(c) => c * rng.uniform(0.5, 1.5),
                        }
                    };
                    v as f32
                })
                .collect();
            (p.name, values)
        })
        .collect()
}

fn write_checkpoint(dir: &Path, config: &ModelConfig, weights: &BTreeMap<String, Vec<f32>>, graph: &models::Graph) {
    let mut tensors = Weights::new("reference test");
    for p in graph.params() {
        tensors.insert(p.name.clone(), p.shape, weights[&p.name].clone()).unwrap();
    }
    tensors.write(&dir.join(CHECKPOINT_WEIGHTS_FILE)).unwrap();
    let meta = CheckpointMeta {
        model: config.clone(),
        epoch: 1,
        val_accuracy: None,
        val_loss: None,
        run_id: None,
        tracking_uri: None,
        producer: "models reference test".into(),
    };
    std::fs::write(dir.join(CHECKPOINT_META_FILE), meta.to_json()).unwrap();
}

/// Runs `reference.py --torch-logits`; returns the images it used and each job's logits.
fn torch_logits(jobs: &serde_json::Value, work: &Path) -> (Vec<f32>, Vec<Result<Vec<f64>, String>>) {
    let jobs_file = work.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(jobs).unwrap()).unwrap();
    let root = workspace_root();
    let out = Command::new(venv_python())
        .arg(root.join("exporter/tests/reference.py"))
        .arg("--torch-logits")
        .arg(&jobs_file)
        .arg(root.join("sample/digit-recognizer.zip"))
        .arg(IMAGES.to_string())
        .output()
        .expect("run the venv python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "reference.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
    };
    let images =
        stdout.lines().find_map(|l| l.strip_prefix("IMAGES ")).unwrap_or_else(|| panic!("no IMAGES line:\n{stderr}"));
    let images: Vec<f32> = floats(&serde_json::from_str(images).unwrap()).into_iter().map(|v| v as f32).collect();
    let results: Vec<_> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            match r["error"].as_str() {
                Some(e) => Err(format!("{}: {e}", r["name"])),
                None => Ok(floats(&r["logits"])),
            }
        })
        .collect();
    assert_eq!(results.len(), jobs.as_array().unwrap().len(), "one result per job; stderr:\n{stderr}");
    (images, results)
}

#[test]
fn reference_forward_matches_pytorch() {
    let mut rgb = ModelConfig::new(Arch::ResnetDigits);
    rgb.in_channels = 3;
    rgb.normalization = Normalization { scale: 1.0 / 255.0, mean: 0.1307, std: 0.3081 };
    let cases: Vec<(&str, ModelConfig)> = vec![
        ("resnet18", ModelConfig::new(Arch::Resnet18)),
        ("squeezenet1_0", ModelConfig::new(Arch::Squeezenet1_0)),
        ("mobilenet_v3_small", ModelConfig::new(Arch::MobilenetV3Small)),
        ("efficientnet_b0", ModelConfig::new(Arch::EfficientnetB0)),
        ("m5", ModelConfig::new(Arch::M5)),
        // The prologue: mean/std normalisation and gray repeated to 3 channels.
        ("resnet_digits_rgb_norm", rgb),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut prepared = Vec::new();
    let mut jobs = Vec::new();
    for (seed, (name, cfg)) in cases.into_iter().enumerate() {
        let graph = models::build(&cfg).unwrap();
        let weights = random_weights(&graph, 100 + seed as u64);
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &cfg, &weights, &graph);
        jobs.push(serde_json::json!({"name": name, "checkpoint": dir}));
        prepared.push((name, cfg, graph, weights));
    }
    let (images, torch) = torch_logits(&serde_json::Value::Array(jobs), tmp.path());
    assert_eq!(images.len(), IMAGES * 784);

    let mut failures = Vec::new();
    eprintln!("{:<24} {:>10} {:>10} {:>10} {:>8}", "arch", "max|diff|", "max|logit|", "relative", "time");
    for ((name, cfg, graph, weights), theirs) in prepared.iter().zip(torch) {
        let theirs = match theirs {
            Ok(t) => t,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let get = |k: &str| weights.get(k).map(Vec::as_slice);
        let start = Instant::now();
        let ours =
            models::reference::forward(graph, cfg, &get, &images, IMAGES).unwrap_or_else(|e| panic!("{name}: {e}"));
        let took = start.elapsed();
        // NaN or infinite logits on either side fail, naming the value (f64::max would drop NaN).
        match approx::compare(&ours, &theirs) {
            Ok(a) => {
                let (diff, scale) = (a.max_abs_diff, a.scale);
                eprintln!(
                    "{name:<24} {diff:>10.2e} {scale:>10.2e} {:>10.2e} {:>7.2}s",
                    diff / scale,
                    took.as_secs_f64()
                );
                if let Err(e) = a.within(TOL, &ours, &theirs) {
                    failures.push(format!("{name}: reference vs torch: {e} (max |logit| {scale:e}; {TOL:?})"));
                }
            }
            Err(e) => failures.push(format!("{name}: reference vs torch: {e}")),
        }
        // The logits must actually depend on the image, or agreement would prove little.
        let first = &theirs[..cfg.num_classes];
        assert!(theirs.chunks(cfg.num_classes).any(|c| c != first), "{name}: torch gives every image the same logits");
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

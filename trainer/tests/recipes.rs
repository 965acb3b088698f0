//! `--recipe strong` and its flags end to end: CPU determinism with --seed, the resolved
//! configuration as MLflow params and beside the checkpoint, the evaluation artifacts read
//! back with mlflow and PIL; the augmentation and bf16 autocast building blocks.

mod common;

use std::path::Path;

use tch::{Device, Kind, Tensor};
use trainer::amp::Autocast;
use trainer::augment::Augment;

/// torch's default CPU generator is one per process and tests run on parallel threads: a test
/// that seeds it and expects given draws (the elastic reference replays them in Python) holds
/// this lock, and so does every test here that draws from it.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn train(dir: &Path, extra: &[&str]) -> String {
    let mut args = common::trainer_args(
        &["--model", "squeezenet1_1", "--epochs", "2", "--limit", "400"],
        &common::sample_zip(),
        dir,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = common::run_trainer(&args);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "trainer {extra:?} failed:\n{stdout}\n{}", common::text(&out.stderr));
    stdout
}

const CHECK_ARTIFACTS: &str = r#"
import json, sys, tempfile, csv
from mlflow.tracking import MlflowClient
from PIL import Image
c = MlflowClient(tracking_uri=sys.argv[1])
d = tempfile.mkdtemp()
png = Image.open(c.download_artifacts(sys.argv[2], "confusion_matrix.png", d))
rows = list(csv.reader(open(c.download_artifacts(sys.argv[2], "confusion_matrix.csv", d))))
per_class = list(csv.DictReader(open(c.download_artifacts(sys.argv[2], "per_class_accuracy.csv", d))))
config = json.load(open(c.download_artifacts(sys.argv[2], "train_config.json", d)))
print(json.dumps({"png": [png.format, png.mode, png.size[0], png.size[1]], "matrix": rows, "per_class": per_class, "config": config}))
"#;

#[test]
fn strong_recipe_is_deterministic_and_logs_its_resolved_config() {
    let tmp = tempfile::tempdir().unwrap();
    let strong = ["--recipe", "strong", "--seed", "3"];
    let a = train(&tmp.path().join("a"), &strong);
    let b = train(&tmp.path().join("b"), &strong);
    assert_eq!(common::epoch_lines(&a).len(), 2, "{a}");
    assert_eq!(common::epoch_lines(&a), common::epoch_lines(&b), "same seed, different metrics");
    let weights =
        |d: &str| std::fs::read(tmp.path().join(d).join("ckpts/squeezenet1_1/best/model.safetensors")).unwrap();
    assert!(weights("a") == weights("b"), "same seed, different weights");

    // The resolved configuration beside a run's checkpoint, less where the run writes.
    let config = |d: &str| -> serde_json::Value {
        let path = tmp.path().join(d).join("ckpts/squeezenet1_1/best/train_config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for k in ["output_dir", "tracking_uri"] {
            c.as_object_mut().unwrap().remove(k).unwrap_or_else(|| panic!("{d}: no {k} in {c}"));
        }
        c
    };
    // Run `d` is `a` plus one flag, which must show up in its configuration, and nothing else.
    let differs_only_in = |d: &str, key: &str| {
        let (mut want, got) = (config("a"), config(d));
        assert_eq!(want[key], false, "{want}");
        want[key] = true.into();
        assert_eq!(got, want, "run {d} must differ from run a in {key} alone");
    };

    // --amp alone changes the training (bf16 autocast); a run differing in anything else too
    // would pass with the flag ignored.
    let c = train(&tmp.path().join("c"), &[&strong[..], &["--amp"]].concat());
    differs_only_in("c", "amp");
    assert_ne!(common::epoch_lines(&a), common::epoch_lines(&c), "--amp changed nothing");
    for line in common::epoch_lines(&a).iter().chain(&common::epoch_lines(&c)) {
        assert_sane_epoch(line);
    }
    // Every knob is a flag; the overrides show up in the params.
    let e = train(
        &tmp.path().join("e"),
        &["--recipe", "strong", "--seed", "4", "--no-augment", "--lr", "0.002", "--ema-decay", "0"],
    );
    assert_ne!(common::epoch_lines(&a), common::epoch_lines(&e));
    // Cycling Adam's beta1 alone changes the training (the schedule itself is checked against
    // torch's in optim_reference.rs).
    let d = train(&tmp.path().join("d"), &[&strong[..], &["--cycle-momentum"]].concat());
    differs_only_in("d", "cycle_momentum");
    assert_ne!(common::epoch_lines(&a), common::epoch_lines(&d), "--cycle-momentum changed nothing");

    let mlruns = tmp.path().join("a/mlruns").canonicalize().unwrap();
    let run_id = common::printed_run_id(&a);
    let run = common::python_json(common::READ_RUN_FULL, &[mlruns.to_str().unwrap(), &run_id]);
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["run_name"], "squeezenet1_1");
    common::assert_one_value_per_epoch(&run, 2);
    let params = &run["params"];
    for (k, v) in [
        ("recipe", "strong"),
        ("optimizer", "adamw"),
        ("schedule", "onecycle"),
        ("lr", "0.003"),
        ("warmup", "0.25"),
        ("weight_decay", "0.05"),
        ("label_smoothing", "0.1"),
        ("ema_decay", "0.999"),
        ("augment", "true"),
        ("rotation", "12.0"),
        ("translate", "2.5"),
        ("scale", "0.1"),
        ("batch_size", "64"),
        ("seed", "3"),
        // --seed leaves the split alone: ensemble members hold out the same images.
        ("split_seed", "42"),
        ("amp", "false"),
        ("cycle_momentum", "false"),
        ("train_size", "320"),
        ("val_size", "80"),
    ] {
        assert_eq!(params[k], v, "param {k}: {params}");
    }
    // One-cycle starts at lr/25 and peaks in epoch 1 (a quarter of 10 steps): epoch 2's
    // first step is on the way down.
    let lr = &run["metrics"]["lr"];
    assert!((lr[0][1].as_f64().unwrap() - 0.003 / 25.0).abs() < 1e-12, "{lr}");
    assert!(lr[1][1].as_f64().unwrap() < 0.003, "{lr}");

    let art = common::python_json(CHECK_ARTIFACTS, &[mlruns.to_str().unwrap(), &run_id]);
    assert_eq!(art["png"], serde_json::json!(["PNG", "RGB", 469, 469]), "{art}");
    let matrix: Vec<Vec<u64>> = art["matrix"].as_array().unwrap()[1..]
        .iter()
        .map(|r| r.as_array().unwrap()[1..].iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect())
        .collect();
    assert_eq!(matrix.len(), 10);
    let total: u64 = matrix.iter().flatten().sum();
    let diagonal: u64 = (0..10).map(|i| matrix[i][i]).sum();
    assert_eq!(total, 80, "the matrix covers the validation split");
    let best = trainer::state::TrainState::load(&tmp.path().join("a/ckpts/squeezenet1_1/last")).unwrap().best.unwrap();
    assert_eq!(diagonal as f64 / 80.0, best.val_accuracy, "matrix of the best epoch");
    for (i, row) in art["per_class"].as_array().unwrap().iter().enumerate() {
        let want = matrix[i][i] as f64 / matrix[i].iter().sum::<u64>() as f64;
        assert_eq!(row["accuracy"].as_str().unwrap().parse::<f64>().unwrap(), want, "class {i}");
    }
    // The config artifact is the one beside the checkpoint, and it is what the params say.
    let local: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("a/ckpts/squeezenet1_1/best/train_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(art["config"], local);
    for (k, v) in local.as_object().unwrap() {
        let shown = match v {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(params[k].as_str(), Some(shown.as_str()), "param {k}");
    }

    let params_of = |d: &str, stdout: &str| {
        let mlruns = tmp.path().join(d).join("mlruns").canonicalize().unwrap();
        common::python_json(common::READ_RUN_FULL, &[mlruns.to_str().unwrap(), &common::printed_run_id(stdout)])
            ["params"]
            .clone()
    };
    let params_e = params_of("e", &e);
    for (k, v) in
        [("augment", "false"), ("lr", "0.002"), ("ema_decay", "0.0"), ("amp", "false"), ("optimizer", "adamw")]
    {
        assert_eq!(params_e[k], v, "param {k}: {params_e}");
    }
    assert_eq!(params_of("c", &c)["amp"], "true");
}

/// An epoch line's numbers are finite, its losses positive and its error and accuracy
/// fractions that add up to one.
fn assert_sane_epoch(line: &str) {
    let fields: Vec<&str> =
        line.split_once(": ").unwrap_or_else(|| panic!("not an epoch line: {line}")).1.split_whitespace().collect();
    let value = |key: &str| -> f64 {
        let i = fields.iter().position(|f| *f == key).unwrap_or_else(|| panic!("no {key} in {line}"));
        fields[i + 1].parse().unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
    };
    let (loss, val_loss, error, accuracy) =
        (value("train_loss"), value("val_loss"), value("val_error"), value("val_accuracy"));
    assert!(loss.is_finite() && loss > 0.0 && val_loss.is_finite() && val_loss > 0.0, "{line}");
    assert!((0.0..=1.0).contains(&accuracy) && (error + accuracy - 1.0).abs() < 1e-5, "{line}");
}

#[test]
fn affine_augmentation_is_identity_at_zero_and_seeded_otherwise() {
    let _rng = torch_rng();
    let (x, _) = common::sample_batch(16);
    let none = Augment::affine(0.0, 0.0, 0.0);
    let same = none.apply(&x).unwrap();
    // Up to float rounding of the grid coordinates (a one-pixel shift would move values by ~0.5).
    let diff = f64::try_from((&same - &x).abs().max()).unwrap();
    assert!(diff < 1e-4, "zero ranges must not move pixels ({diff})");

    let aug = Augment::affine(15.0, 3.0, 0.1);
    tch::manual_seed(1);
    let a = aug.apply(&x).unwrap();
    tch::manual_seed(1);
    let b = aug.apply(&x).unwrap();
    assert_eq!(a.size(), x.size());
    assert!(a.equal(&b), "same seed, different augmentation");
    let moved = f64::try_from((&a - &x).abs().mean(Kind::Float)).unwrap();
    assert!(moved > 0.01, "augmentation changed nothing ({moved})");
    // Small transforms keep the digit: ink within 25% of the original per image.
    let ink = |t: &Tensor| Vec::<f32>::try_from(t.sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Float)).unwrap();
    for (i, (a, x)) in ink(&a).iter().zip(ink(&x)).enumerate() {
        assert!((a / x - 1.0).abs() < 0.25, "image {i}: ink {a} vs {x}");
    }
}

/// The elastic distortion against an independent reference: the same torch RNG draws, blurred
/// by scipy's `gaussian_filter` (not our separable conv), sampled by torch's `grid_sample`.
const ELASTIC_REFERENCE: &str = r#"
import json, math, sys
import numpy as np, torch, torch.nn.functional as F
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter
t = load_file(sys.argv[1]); x, ours = t["x"], t["augmented"]
rot, shift, scale, alpha, sigma, seed = map(float, sys.argv[2:8])
n, _, h, w = x.shape
torch.manual_seed(int(seed))
u = torch.rand(4, n) * 2 - 1
angle, inv = u[0] * math.radians(rot), 1 / (1 + u[1] * scale)
tx, ty = u[2] * shift * 2 / w, u[3] * shift * 2 / h
theta = torch.stack([angle.cos() * inv, -angle.sin() * inv, tx, angle.sin() * inv, angle.cos() * inv, ty], 1).view(n, 2, 3)
grid = F.affine_grid(theta, list(x.shape), align_corners=False)
noise = (torch.rand(n * 2, 1, h, w) * 2 - 1).numpy().reshape(n, 2, h, w)
field = np.stack([[gaussian_filter(noise[i, a], sigma, mode="constant", truncate=3.0) for a in range(2)] for i in range(n)])
d = torch.from_numpy(field).float().permute(0, 2, 3, 1) * alpha * torch.tensor([2 / w, 2 / h])
ref = F.grid_sample(x, grid + d, mode="bilinear", padding_mode="zeros", align_corners=False)
moved = (d.abs() * torch.tensor([w / 2, h / 2])).mean().item()
print(json.dumps({"max_diff": (ref - ours).abs().max().item(), "ref_vs_input": (ref - x).abs().mean().item(), "mean_shift_px": moved}))
"#;

#[test]
fn elastic_distortion_matches_a_scipy_gaussian_filter_reference() {
    let _rng = torch_rng();
    let (x, _) = common::sample_batch(8);
    let aug = Augment { rotation: 10.0, translate: 2.0, scale: 0.1, elastic: 34.0, elastic_sigma: 4.0 };
    tch::manual_seed(7);
    let a = aug.apply(&x).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("elastic.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("augmented", &a)], &file).unwrap();
    let r = common::python_json(ELASTIC_REFERENCE, &[file.to_str().unwrap(), "10", "2", "0.1", "34", "4", "7"]);
    let max_diff = r["max_diff"].as_f64().unwrap();
    assert!(max_diff < 1e-4, "elastic augmentation differs from the reference by {max_diff}: {r}");
    // Simard's α 34, σ 4 moves pixels by about a pixel: visible, not destructive.
    let shift = r["mean_shift_px"].as_f64().unwrap();
    assert!((0.5..3.0).contains(&shift), "mean elastic displacement {shift} px");
    // Elastic off (α 0) draws no field: the same seed gives exactly the affine-only images.
    tch::manual_seed(7);
    let affine_only = Augment { elastic: 0.0, ..aug }.apply(&x).unwrap();
    tch::manual_seed(7);
    assert!(affine_only.equal(&Augment::affine(10.0, 2.0, 0.1).apply(&x).unwrap()));
    assert!(!affine_only.equal(&a), "the elastic field changed nothing");
}

#[test]
fn bf16_autocast_on_cpu_computes_convolutions_in_bf16_and_restores() {
    let _rng = torch_rng();
    let x = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::rand([4, 1, 3, 3], (Kind::Float, Device::Cpu));
    assert!(!Autocast::is_enabled(Device::Cpu).unwrap());
    {
        let _guard = Autocast::bf16(Device::Cpu).unwrap();
        assert!(Autocast::is_enabled(Device::Cpu).unwrap());
        assert_eq!(x.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).kind(), Kind::BFloat16);
    }
    assert!(!Autocast::is_enabled(Device::Cpu).unwrap());
    assert_eq!(x.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).kind(), Kind::Float);
}

#[test]
fn device_set_yields_the_epoch_in_order_and_drops_a_single_last_image() {
    use trainer::loader::DeviceSet;
    let ds = common::sample().subset(&(0..11).collect::<Vec<_>>());
    let set = DeviceSet::new(&ds, Device::Cpu).unwrap();
    let order: Vec<usize> = (0..11).rev().collect();
    let batches: Vec<(Tensor, Tensor)> = set.epoch(&order, 5).unwrap().map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2, "5 + 5, and a last batch of one image dropped");
    assert_eq!((DeviceSet::batches(11, 5), DeviceSet::batches(12, 5)), (2, 3));
    let labels = ds.labels.as_ref().unwrap();
    for (k, (x, y)) in batches.iter().enumerate() {
        let idx = &order[k * 5..k * 5 + 5];
        assert_eq!(x.size(), [5, 1, 28, 28]);
        assert_eq!(Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(), ds.to_f32(idx));
        assert_eq!(Vec::<i64>::try_from(y).unwrap(), idx.iter().map(|&i| i64::from(labels[i])).collect::<Vec<_>>());
    }
    // A batch size that divides the epoch yields every image once.
    let seen: usize = set.epoch(&order[..10], 5).unwrap().map(|b| b.unwrap().0.size()[0] as usize).sum();
    assert_eq!(seen, 10);
}

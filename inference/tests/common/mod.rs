//! Shared test fixture: ONNX models built by `make_models.py` with the project's venv
//! (torch exports them, Python onnxruntime computes the reference logits).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use data::{Dataset, Split};

/// Images of the sample's test.csv the reference logits cover.
pub const N_REF: usize = 64;
/// Members built by the script.
pub const MEMBERS: [&str; 3] = ["cnn_a", "cnn_b", "cnn_c"];

pub struct Fixture {
    pub dir: PathBuf,
    pub n: usize,
    pub classes: usize,
    /// Python onnxruntime logits per member on the first `N_REF` test images.
    pub logits: HashMap<String, Vec<f32>>,
    pub train_total: usize,
    /// Python onnxruntime: train.csv images each member gets right.
    pub train_correct: HashMap<String, usize>,
}

impl Fixture {
    pub fn model(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.onnx"))
    }

    pub fn expected(&self, name: &str) -> &[f32] {
        &self.logits[name]
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate is inside the workspace").to_path_buf()
}

pub fn sample_zip() -> PathBuf {
    workspace_root().join("sample").join("digit-recognizer.zip")
}

/// The venv python; the tests compare against real tools, so a missing venv is a failure.
pub fn venv_python() -> PathBuf {
    let py = workspace_root().join(".venv").join("bin").join("python");
    assert!(
        py.exists(),
        "{} is missing: these tests build their ONNX models with torch and compare against \
         Python onnxruntime; run scripts/setup.sh first",
        py.display()
    );
    py
}

/// The first `N_REF` images of the committed sample's test.csv.
pub fn reference_images() -> Dataset {
    let test = data::load(&sample_zip(), Split::Test).expect("sample test.csv loads");
    let idx: Vec<usize> = (0..N_REF).collect();
    test.subset(&idx)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Builds the models once per script version: cached under cargo's per-target temp dir,
/// keyed by a hash of the script, so the test binaries share one ~10 s build.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("make_models.py");
        let source = std::fs::read(&script).expect("read make_models.py");
        let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp_root.join(format!("inference-fixture-{:016x}", fnv1a(&source)));
        if !dir.join("expected.json").exists() {
            let work = tmp_root.join(format!("inference-fixture-build-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&work);
            let out = Command::new(venv_python())
                .arg("-W")
                .arg("ignore")
                .arg(&script)
                .arg("--sample")
                .arg(sample_zip())
                .arg("--out")
                .arg(&work)
                .output()
                .expect("run make_models.py");
            assert!(
                out.status.success(),
                "make_models.py failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Another test binary may have finished first; either copy is complete.
            if std::fs::rename(&work, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&work);
            }
            assert!(dir.join("expected.json").exists(), "fixture missing in {}", dir.display());
        }
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("read expected.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse expected.json");
        let logits = v["logits"]
            .as_object()
            .expect("logits object")
            .iter()
            .map(|(k, arr)| {
                let vals = arr
                    .as_array()
                    .expect("array")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect();
                (k.clone(), vals)
            })
            .collect();
        let train_correct = v["train_correct"]
            .as_object()
            .expect("train_correct object")
            .iter()
            .map(|(k, c)| (k.clone(), c.as_u64().expect("count") as usize))
            .collect();
        Fixture {
            n: v["n"].as_u64().expect("n") as usize,
            classes: v["classes"].as_u64().expect("classes") as usize,
            train_total: v["train_total"].as_u64().expect("train_total") as usize,
            logits,
            train_correct,
            dir,
        }
    })
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Argmax labels of reference logits, and for each image whether its top-2 margin is
/// wide enough (`> 2 * tol`) that a backend within `tol` must agree on the label.
pub fn reference_labels(logits: &[f32], classes: usize, tol: f32) -> Vec<(u8, bool)> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            (inference::argmax(row) as u8, sorted[0] - sorted[1] > 2.0 * tol)
        })
        .collect()
}

/// Asserts `labels` match the reference wherever the reference is decisive, and that
/// (for these trained models) every image is decisive.
pub fn assert_labels_match(labels: &[u8], reference: &[(u8, bool)], what: &str) {
    assert_eq!(labels.len(), reference.len(), "{what}: label count");
    let decisive = reference.iter().filter(|r| r.1).count();
    assert_eq!(decisive, reference.len(), "{what}: reference has near-ties; retrain the fixture");
    for (i, (l, (r, _))) in labels.iter().zip(reference).enumerate() {
        assert_eq!(l, r, "{what}: image {i}");
    }
}

/// An HTTP client for the server tests that returns 4xx/5xx answers instead of errors.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .new_agent()
}

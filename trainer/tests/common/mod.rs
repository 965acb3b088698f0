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

/// Runs the trainer binary with `args`, without progress bars.
pub fn run_trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).arg("--no-progress").output().expect("trainer binary starts")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

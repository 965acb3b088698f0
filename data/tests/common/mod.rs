//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root (the folder above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate folder has a parent").to_path_buf()
}

/// The committed sample archive.
pub fn sample_zip() -> PathBuf {
    workspace_root().join("sample").join("digit-recognizer.zip")
}

/// The full Kaggle archive if this machine has it.
pub fn full_zip() -> Option<PathBuf> {
    [
        PathBuf::from("/work/shared/data/digit-recognizer.zip"),
        workspace_root().join("../shared/data/digit-recognizer.zip"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// A Python interpreter (the workspace venv first), if any.
pub fn python() -> Option<PathBuf> {
    let venv = workspace_root().join(".venv/bin/python");
    if venv.is_file() {
        return Some(venv);
    }
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("python3"))
}

/// Header line (no newline) for a labelled or unlabelled file.
pub fn header(labelled: bool) -> String {
    let mut cols: Vec<String> = (0..784).map(|i| format!("pixel{i}")).collect();
    if labelled {
        cols.insert(0, "label".to_string());
    }
    cols.join(",")
}

/// One data row (no newline) with deterministic, varied pixel values.
pub fn row(labelled: bool, seed: usize) -> String {
    let mut cols: Vec<String> = (0..784).map(|i| (((i * 7 + seed * 13) % 300).min(255)).to_string()).collect();
    if labelled {
        cols.insert(0, (seed % 10).to_string());
    }
    cols.join(",")
}

/// A whole valid CSV with `n` rows, `\n` line ends and a trailing newline.
pub fn csv(labelled: bool, n: usize) -> String {
    let mut s = header(labelled);
    s.push('\n');
    for i in 0..n {
        s.push_str(&row(labelled, i));
        s.push('\n');
    }
    s
}

/// Replaces field `field` (0-based) of data row `row_idx` (0-based) in `csv`.
pub fn set_field(csv: &str, row_idx: usize, field: usize, value: &str) -> String {
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[row_idx + 1].split(',').map(str::to_string).collect();
    fields[field] = value.to_string();
    lines[row_idx + 1] = fields.join(",");
    lines.join("\n") + "\n"
}

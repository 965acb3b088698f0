//! Finding ensemble members and choosing a default backend.

use std::path::{Path, PathBuf};

use crate::BackendKind;

/// An ensemble member that is not where it was looked for.
#[derive(Debug, thiserror::Error)]
#[error("ensemble member `{name}` not found; looked for: {}{hint}", fmt_paths(tried))]
pub struct MemberNotFound {
    /// The name as given.
    pub name: String,
    /// Every path tried, in order.
    pub tried: Vec<PathBuf>,
    /// Extra advice (e.g. the known architecture names), may be empty.
    pub hint: String,
}

fn fmt_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Where ensemble member `name` lives.
///
/// A name containing `/` or ending in `.onnx` is a path. Otherwise it is looked up in
/// `models_dir` as `NAME.onnx`, then `NAME/model.onnx` (the exporter's two layouts).
pub fn resolve_member(name: &str, models_dir: &Path) -> Result<PathBuf, MemberNotFound> {
    let tried: Vec<PathBuf> = if name.contains('/') || name.ends_with(".onnx") {
        vec![PathBuf::from(name)]
    } else {
        vec![models_dir.join(format!("{name}.onnx")), models_dir.join(name).join("model.onnx")]
    };
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let hint = if tried.len() > 1 && !models_dir.is_dir() {
        format!(" (models folder {} does not exist; set --models-dir)", models_dir.display())
    } else if tried.len() > 1 && name.parse::<models::Arch>().is_err() {
        let known: Vec<&str> = models::Arch::ALL.iter().map(|a| a.name()).collect();
        format!(" (`{name}` is not an architecture name either; known: {})", known.join(", "))
    } else {
        String::new()
    };
    Err(MemberNotFound { name: name.to_string(), tried, hint })
}

/// The backend to use and why, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// The backend.
    pub kind: BackendKind,
    /// Why it was chosen, e.g. `ort (default; /path/libonnxruntime.so)`.
    pub reason: String,
}

/// The backend asked for, or by default ONNX Runtime when its library loads, else tract.
pub fn choose_backend(requested: Option<BackendKind>) -> BackendChoice {
    if let Some(kind) = requested {
        return BackendChoice { kind, reason: "asked for".to_string() };
    }
    #[cfg(feature = "ort")]
    {
        match crate::ort_library() {
            Ok(lib) => BackendChoice {
                kind: BackendKind::Ort,
                reason: format!("default: ONNX Runtime found at {}", lib.display()),
            },
            Err(e) => BackendChoice { kind: BackendKind::Tract, reason: format!("default: {e}") },
        }
    }
    #[cfg(not(feature = "ort"))]
    BackendChoice { kind: BackendKind::Tract, reason: "default: built without the ort feature".to_string() }
}

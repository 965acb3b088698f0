//! Finding models (files, folder names, registry URIs) and choosing a default backend.

use std::path::{Path, PathBuf};

use crate::registry::{self, RegistryModel};
use crate::{BackendKind, InferError};

/// Folders a plain model name is looked up in when no `--models-dir` is given, in order:
/// `./models` (the convention), then `./exported` (the exporter's default output,
/// and the only one of the two usable inside this repository, whose `models/` is the zoo crate).
pub const DEFAULT_MODELS_DIRS: [&str; 2] = ["models", "exported"];

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
/// A name containing `/` or ending in `.onnx` is a path. Otherwise it is looked up in each of
/// `models_dirs` in order as `NAME.onnx`, then `NAME/model.onnx` (the exporter's two layouts).
pub fn resolve_member_in(name: &str, models_dirs: &[PathBuf]) -> Result<PathBuf, MemberNotFound> {
    let tried: Vec<PathBuf> = if name.contains('/') || name.ends_with(".onnx") {
        vec![PathBuf::from(name)]
    } else {
        models_dirs.iter().flat_map(|d| [d.join(format!("{name}.onnx")), d.join(name).join("model.onnx")]).collect()
    };
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let no_dir = models_dirs.iter().all(|d| !d.is_dir());
    let hint = if tried.len() > 1 && no_dir {
        match models_dirs {
            [d] => format!(" (models folder {} does not exist; set --models-dir)", d.display()),
            dirs => format!(" (none of the models folders {} exists; set --models-dir)", fmt_paths(dirs)),
        }
    } else if tried.len() > 1 && name.parse::<models::Arch>().is_err() {
        let known: Vec<&str> = models::Arch::ALL.iter().map(|a| a.name()).collect();
        format!(" (`{name}` is not an architecture name either; known: {})", known.join(", "))
    } else {
        String::new()
    };
    Err(MemberNotFound { name: name.to_string(), tried, hint })
}

/// How [`resolve_model`] finds a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Folders for plain names, in order (`--models-dir`, or [`DEFAULT_MODELS_DIRS`]).
    pub models_dirs: Vec<PathBuf>,
    /// MLflow tracking URI (`MLFLOW_TRACKING_URI`): needed for `models:/` URIs; with a tracking
    /// server (`http(s)://`), plain names are looked up in its registry first.
    pub tracking_uri: Option<String>,
    /// Where registry downloads are cached.
    pub cache_dir: PathBuf,
}

impl ResolveOptions {
    /// `--models-dir` if given, else [`DEFAULT_MODELS_DIRS`]; `tracking_uri` as the CLI
    /// resolved it (flag or `MLFLOW_TRACKING_URI`, read by clap); the default cache.
    pub fn new(models_dir: Option<&Path>, tracking_uri: Option<String>) -> Self {
        ResolveOptions {
            models_dirs: match models_dir {
                Some(d) => vec![d.to_path_buf()],
                None => DEFAULT_MODELS_DIRS.iter().map(PathBuf::from).collect(),
            },
            tracking_uri,
            cache_dir: registry::default_cache_dir(),
        }
    }
}

/// A model found by [`resolve_model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The local ONNX file.
    pub path: PathBuf,
    /// Set when it came from the model registry.
    pub registry: Option<RegistryModel>,
}

/// Finds the ONNX file for `spec`:
/// * `models:/NAME/<version>` or `models:/NAME@<alias>`: the registry behind the tracking URI
///   (downloaded once per version into the cache; a file store's file is used in place);
/// * a path (containing `/` or ending in `.onnx`): that file;
/// * a plain name: with a tracking server configured, the registered model of that name (its
///   `champion` alias, else its newest version) if the registry has it; otherwise
///   `NAME.onnx` or `NAME/model.onnx` in the models folders.
pub fn resolve_model(spec: &str, opts: &ResolveOptions) -> Result<ResolvedModel, InferError> {
    if registry::is_model_uri(spec) {
        let Some(uri) = &opts.tracking_uri else {
            return Err(InferError::NoTrackingUri { uri: spec.to_string() });
        };
        let m = registry::fetch_model_uri(spec, uri, &opts.cache_dir)?;
        return Ok(ResolvedModel { path: m.path.clone(), registry: Some(m) });
    }
    let plain = !(spec.contains('/') || spec.ends_with(".onnx"));
    if let Some(uri) = opts.tracking_uri.as_deref().filter(|u| plain && registry::is_server_uri(u)) {
        if let Some(m) = registry::find_registered(spec, uri, &opts.cache_dir)? {
            return Ok(ResolvedModel { path: m.path.clone(), registry: Some(m) });
        }
    }
    let path = resolve_member_in(spec, &opts.models_dirs).map_err(Box::new)?;
    Ok(ResolvedModel { path, registry: None })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(name: &str, dirs: &[PathBuf]) -> String {
        resolve_member_in(name, dirs).unwrap_err().hint
    }

    #[test]
    fn a_missing_member_says_why_it_was_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("models"), tmp.path().join("exported"));
        let both = [a.clone(), b.clone()];
        assert_eq!(
            hint("resnet18", &both),
            format!(" (none of the models folders {}, {} exists; set --models-dir)", a.display(), b.display())
        );
        let one = format!(" (models folder {} does not exist; set --models-dir)", b.display());
        assert_eq!(hint("resnet18", std::slice::from_ref(&b)), one);
        std::fs::create_dir(&b).unwrap();
        let typo = hint("resnt18", &both);
        assert!(typo.contains("`resnt18` is not an architecture name either; known: resnet18,"), "{typo}");
        // A known architecture in an existing folder: the tried paths say it all.
        assert_eq!(hint("resnet18", &both), "");
        // A path is tried as given, without folder advice.
        let err = resolve_member_in("nowhere/m.onnx", &both).unwrap_err();
        assert_eq!((err.tried, err.hint), (vec![PathBuf::from("nowhere/m.onnx")], String::new()));
    }
}

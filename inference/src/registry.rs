//! Models from the MLflow model registry: `models:/NAME/<version>` and `models:/NAME@<alias>`
//! are looked up in the registry behind the tracking URI (`--tracking-uri` or
//! `MLFLOW_TRACKING_URI`) and their `model.onnx` is fetched to a local cache (a file store's
//! is used in place).

use std::path::{Path, PathBuf};

use tracking::{ModelRegistry, ModelUri, ModelVersion, RestStore, Tracker, TrackingError};

use crate::InferError;

/// The model file inside an MLflow model directory (what the exporter logs).
pub const MODEL_FILE: &str = "model.onnx";
/// The alias a plain ensemble name resolves to when the registry has it.
pub const DEFAULT_ALIAS: &str = "champion";

/// True for the registry URIs `infer` accepts in place of a file.
pub fn is_model_uri(s: &str) -> bool {
    s.starts_with("models:/")
}

/// True for a tracking server (`http(s)://`), as opposed to a local file store.
pub fn is_server_uri(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

/// Where downloaded models are kept: `$XDG_CACHE_HOME/digit-recognizer/models`, else
/// `~/.cache/digit-recognizer/models`, else a folder under the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("digit-recognizer")
        .join("models")
}

/// A model found in the registry, fetched to a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryModel {
    pub version: ModelVersion,
    /// Where the version's files are (`get_model_version_download_uri`).
    pub download_uri: String,
    /// The local `model.onnx`.
    pub path: PathBuf,
    /// False when the file came from the cache or a local file store.
    pub downloaded: bool,
}

fn registry_err(what: String) -> impl FnOnce(TrackingError) -> InferError {
    move |source| InferError::Registry { what, source: Box::new(source) }
}

/// Resolves `uri` (`models:/...`) in the registry at `tracking_uri` and returns its local
/// `model.onnx`, downloading it into `cache_dir` once per version.
pub fn fetch_model_uri(uri: &str, tracking_uri: &str, cache_dir: &Path) -> Result<RegistryModel, InferError> {
    let parsed = ModelUri::parse(uri).map_err(registry_err(format!("bad model URI {uri:?}")))?;
    let registry = tracking::open_registry(tracking_uri)
        .map_err(registry_err(format!("opening the registry at {tracking_uri}")))?;
    let version = registry.resolve(&parsed).map_err(registry_err(format!("resolving {parsed} in {tracking_uri}")))?;
    fetch_version(registry.as_ref(), version, tracking_uri, cache_dir)
}

/// The version a plain ensemble name stands for: alias `champion` if set, else the newest
/// version; `None` when the registry has no model of that name.
pub fn find_registered(name: &str, tracking_uri: &str, cache_dir: &Path) -> Result<Option<RegistryModel>, InferError> {
    let registry = tracking::open_registry(tracking_uri)
        .map_err(registry_err(format!("opening the registry at {tracking_uri}")))?;
    let what = || format!("looking up registered model {name:?} in {tracking_uri}");
    let version = match registry.get_model_version_by_alias(name, DEFAULT_ALIAS) {
        Ok(v) => v,
        Err(TrackingError::AliasNotFound { .. }) => match registry.latest_version(name) {
            Ok(v) => v,
            Err(TrackingError::RegisteredModelNotFound(_) | TrackingError::NoModelVersions(_)) => return Ok(None),
            Err(e) => return Err(registry_err(what())(e)),
        },
        // A name the registry cannot hold (e.g. with '/') is simply not registered.
        Err(TrackingError::RegisteredModelNotFound(_) | TrackingError::InvalidName { .. }) => return Ok(None),
        Err(e) => return Err(registry_err(what())(e)),
    };
    fetch_version(registry.as_ref(), version, tracking_uri, cache_dir).map(Some)
}

fn fetch_version(
    registry: &dyn ModelRegistry,
    version: ModelVersion,
    tracking_uri: &str,
    cache_dir: &Path,
) -> Result<RegistryModel, InferError> {
    let label = format!("models:/{}/{}", version.name, version.version);
    let download_uri = registry
        .download_uri(&version.name, version.version)
        .map_err(registry_err(format!("getting the download URI of {label}")))?;
    // A local directory (file store, or a server whose artifacts are on this machine): no copy.
    if let Some(dir) = tracking::file_uri_to_path(&download_uri) {
        let path = dir.join(MODEL_FILE);
        if !path.is_file() {
            return Err(InferError::ModelNotFound { path });
        }
        return Ok(RegistryModel { version, download_uri, path, downloaded: false });
    }
    let path = cache_dir
        .join(sanitize(host_of(tracking_uri)))
        .join(sanitize(&version.name))
        // The source is part of the key: a file-store registry can reuse a deleted version's number.
        .join(format!("{}-{:016x}", version.version, fnv1a(download_uri.as_bytes())))
        .join(MODEL_FILE);
    if path.is_file() {
        return Ok(RegistryModel { version, download_uri, path, downloaded: false });
    }
    let bytes =
        download(&download_uri, tracking_uri).map_err(registry_err(format!("downloading {label} ({download_uri})")))?;
    data::atomic_write(&path, &bytes).map_err(|e| InferError::ModelRead {
        path: path.clone(),
        source: std::io::Error::other(format!("cannot cache the downloaded model: {e}")),
    })?;
    Ok(RegistryModel { version, download_uri, path, downloaded: true })
}

/// `model.onnx` below a download URI: through the tracking server's artifact proxy, or a
/// `runs:/<run id>/<path>` source through the run's artifacts.
fn download(download_uri: &str, tracking_uri: &str) -> Result<Vec<u8>, TrackingError> {
    if !is_server_uri(tracking_uri) {
        return Err(TrackingError::UnsupportedUri {
            uri: download_uri.to_string(),
            reason: format!("a local registry ({tracking_uri}) can only serve local model files"),
        });
    }
    let rest = RestStore::new(tracking_uri)?;
    if let Some(rest_of) = download_uri.strip_prefix("runs:/") {
        let (run_id, sub) = rest_of.split_once('/').unwrap_or((rest_of, ""));
        let sub = sub.trim_end_matches('/');
        let path = if sub.is_empty() { MODEL_FILE.to_string() } else { format!("{sub}/{MODEL_FILE}") };
        // Checks the run exists before the download, for a clearer error.
        rest.run_info(run_id)?;
        return rest.download_artifact(run_id, &path);
    }
    rest.download_artifact_uri(download_uri, MODEL_FILE)
}

fn host_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// A file-name-safe version of `s` (host:port, model names with spaces).
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys() {
        assert_eq!(host_of("http://127.0.0.1:5000/prefix"), "127.0.0.1:5000");
        assert_eq!(sanitize("127.0.0.1:5000"), "127.0.0.1_5000");
        assert_eq!(sanitize("my model"), "my_model");
        assert!(is_model_uri("models:/a/1") && !is_model_uri("exported/a.onnx"));
    }
}

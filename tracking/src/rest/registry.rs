//! The model registry calls of [`RestStore`] (`registered-models/*`, `model-versions/*`),
//! as `mlflow.store.model_registry.rest_store` makes them.

use super::urls::{artifact_url, resolve_artifact_uri};
use super::wire;
use super::RestStore;
use crate::error::{Result, TrackingError};
use crate::registry::{validate_alias, validate_model_name, ModelRegistry, ModelVersion};

impl RestStore {
    /// Downloads one file below an artifact URI (`mlflow-artifacts:/...` or `http(s)://...`), e.g.
    /// `model.onnx` below a model version's download URI.
    pub fn download_artifact_uri(&self, artifact_uri: &str, path: &str) -> Result<Vec<u8>> {
        crate::validate::validate_artifact_path(path)?;
        let root = resolve_artifact_uri(artifact_uri, self.uri())?;
        self.get_bytes(&artifact_url(&root, path))
    }
}

fn registry_not_found(e: TrackingError, missing: impl FnOnce() -> TrackingError) -> TrackingError {
    if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") {
        missing()
    } else {
        e
    }
}

impl RestStore {
    /// A [`ModelVersion`] from its wire form; `endpoint` names the call in errors.
    fn model_version(&self, mv: Option<wire::ModelVersion>, endpoint: &str) -> Result<ModelVersion> {
        let bad = |mv: &Option<wire::ModelVersion>| TrackingError::BadResponse {
            url: self.endpoint_url(endpoint),
            reason: format!("no model_version with name and version in {mv:?}"),
        };
        let Some(wire::ModelVersion { name: Some(name), version: Some(version), source, run_id, status }) = mv else {
            return Err(bad(&mv));
        };
        Ok(ModelVersion {
            name,
            version: version.0,
            source: source.unwrap_or_default(),
            run_id: run_id.filter(|s| !s.is_empty()),
            status: status.unwrap_or_else(|| "READY".into()),
        })
    }
}

impl ModelRegistry for RestStore {
    fn create_registered_model(&self, name: &str) -> Result<bool> {
        validate_model_name(name)?;
        match self.post::<wire::Ignored>("registered-models/create", &wire::Named { name }) {
            Ok(_) => Ok(true),
            Err(e) if e.mlflow_error_code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_model_version(&self, name: &str, source: &str, run_id: Option<&str>) -> Result<ModelVersion> {
        validate_model_name(name)?;
        let endpoint = "model-versions/create";
        let body = wire::CreateModelVersion { name, source, run_id };
        let v = self
            .post::<wire::ModelVersionResponse>(endpoint, &body)
            .map_err(|e| registry_not_found(e, || TrackingError::RegisteredModelNotFound(name.to_string())))?;
        self.model_version(v.model_version, endpoint)
    }

    fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()> {
        validate_model_name(name)?;
        validate_alias(alias)?;
        let body = wire::SetAlias { name, alias, version: version.to_string() };
        self.post::<wire::Ignored>("registered-models/alias", &body)
            .map_err(|e| {
                registry_not_found(e, || TrackingError::ModelVersionNotFound { name: name.to_string(), version })
            })
            .map(|_| ())
    }

    fn get_model_version(&self, name: &str, version: u64) -> Result<ModelVersion> {
        validate_model_name(name)?;
        let endpoint = "model-versions/get";
        let v = self
            .get::<wire::ModelVersionResponse>(endpoint, &[("name", name), ("version", &version.to_string())])
            .map_err(|e| {
                registry_not_found(e, || TrackingError::ModelVersionNotFound { name: name.to_string(), version })
            })?;
        self.model_version(v.model_version, endpoint)
    }

    fn get_model_version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        validate_model_name(name)?;
        validate_alias(alias)?;
        let endpoint = "registered-models/alias";
        let v = self.get::<wire::ModelVersionResponse>(endpoint, &[("name", name), ("alias", alias)]).map_err(|e| {
            // The server answers INVALID_PARAMETER_VALUE or RESOURCE_DOES_NOT_EXIST for an unknown alias.
            match e.mlflow_error_code() {
                Some("RESOURCE_DOES_NOT_EXIST" | "INVALID_PARAMETER_VALUE") => {
                    TrackingError::AliasNotFound { name: name.to_string(), alias: alias.to_string() }
                }
                _ => e,
            }
        })?;
        self.model_version(v.model_version, endpoint)
    }

    fn latest_version(&self, name: &str) -> Result<ModelVersion> {
        validate_model_name(name)?;
        let endpoint = "registered-models/get-latest-versions";
        let v = self
            .post::<wire::LatestVersions>(endpoint, &wire::Named { name })
            .map_err(|e| registry_not_found(e, || TrackingError::RegisteredModelNotFound(name.to_string())))?;
        // One latest version per stage; the highest of them is the newest.
        let mut best: Option<ModelVersion> = None;
        for mv in v.model_versions {
            let mv = self.model_version(Some(mv), endpoint)?;
            if best.as_ref().is_none_or(|b| mv.version > b.version) {
                best = Some(mv);
            }
        }
        best.ok_or_else(|| TrackingError::NoModelVersions(name.to_string()))
    }

    fn download_uri(&self, name: &str, version: u64) -> Result<String> {
        validate_model_name(name)?;
        let endpoint = "model-versions/get-download-uri";
        let v = self.get::<wire::DownloadUri>(endpoint, &[("name", name), ("version", &version.to_string())]).map_err(
            |e| registry_not_found(e, || TrackingError::ModelVersionNotFound { name: name.to_string(), version }),
        )?;
        v.artifact_uri.ok_or_else(|| TrackingError::BadResponse {
            url: self.endpoint_url(endpoint),
            reason: "no artifact_uri in the answer".into(),
        })
    }
}

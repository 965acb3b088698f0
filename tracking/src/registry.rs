//! MLflow's model registry: registered models, numbered versions and aliases, so that
//! `models:/NAME/3` and `models:/NAME@champion` mean the same thing here as in MLflow.
//!
//! Two backends, chosen by [`open_registry`] like [`crate::open_tracker`] chooses:
//! - [`RestStore`]: the tracking server's REST API (`registered-models/create`,
//!   `model-versions/create`, `registered-models/alias`, `model-versions/get-download-uri`...),
//!   implemented in `rest/registry.rs`;
//! - [`FileStore`]: MLflow's file-based registry (`<root>/models/<name>/meta.yaml`,
//!   `version-<n>/meta.yaml`, `aliases/<alias>`), laid out as `mlflow.store.model_registry.file_store`
//!   writes it, so `mlflow.pyfunc.load_model("models:/NAME@alias")` reads what we register.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{io_err, Result, TrackingError};
use crate::util::{atomic_write, now_ms};
use crate::yaml::{quote, Doc, Value as Yaml};
use crate::{FileStore, RestStore};

/// One version of a registered model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    /// Where the model's files were registered from (e.g. the run's `.../artifacts/model`).
    pub source: String,
    pub run_id: Option<String>,
    /// `READY` once usable (MLflow's `ModelVersionStatus`).
    pub status: String,
}

/// Which version a `models:/` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    Number(u64),
    Alias(String),
}

/// A parsed `models:/NAME/<version>` or `models:/NAME@<alias>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUri {
    pub name: String,
    pub reference: VersionRef,
}

impl ModelUri {
    /// Parses the two forms `infer` accepts. Stages (`models:/NAME/Production`) are deprecated in
    /// MLflow and not supported; MLflow's `latest` alias is.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: &str| TrackingError::UnsupportedUri { uri: uri.to_string(), reason: reason.to_string() };
        let rest = uri
            .strip_prefix("models:/")
            .ok_or_else(|| bad("expected models:/NAME/<version> or models:/NAME@<alias>"))?;
        let (name, reference) = if let Some((name, alias)) = rest.split_once('@') {
            validate_alias(alias)?;
            (name, VersionRef::Alias(alias.to_string()))
        } else if let Some((name, v)) = rest.rsplit_once('/') {
            let n =
                v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    bad("the version after the last `/` must be a positive number (or use NAME@alias)")
                })?;
            (name, VersionRef::Number(n))
        } else {
            return Err(bad("no version: expected models:/NAME/<version> or models:/NAME@<alias>"));
        };
        validate_model_name(name)?;
        Ok(ModelUri { name: name.to_string(), reference })
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            VersionRef::Number(n) => write!(f, "models:/{}/{n}", self.name),
            VersionRef::Alias(a) => write!(f, "models:/{}@{a}", self.name),
        }
    }
}

/// A model registry backend. Object safe, like [`crate::Tracker`].
pub trait ModelRegistry: Send + Sync + fmt::Debug {
    /// Creates the registered model `name`; `Ok(false)` when it already exists.
    fn create_registered_model(&self, name: &str) -> Result<bool>;

    /// A new version (the next number) whose files are at `source`.
    fn create_model_version(&self, name: &str, source: &str, run_id: Option<&str>) -> Result<ModelVersion>;

    /// Points `alias` at `version` (moving it if it pointed elsewhere).
    fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()>;

    fn get_model_version(&self, name: &str, version: u64) -> Result<ModelVersion>;

    fn get_model_version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion>;

    /// The highest version of `name` (what MLflow's reserved alias `latest` means).
    fn latest_version(&self, name: &str) -> Result<ModelVersion>;

    /// Where the version's files can be read (MLflow's `get_model_version_download_uri`):
    /// a `file://` URI for the file store, `mlflow-artifacts:/...` through a server.
    fn download_uri(&self, name: &str, version: u64) -> Result<String>;

    /// The version a `models:/` URI names.
    fn resolve(&self, uri: &ModelUri) -> Result<ModelVersion> {
        match &uri.reference {
            VersionRef::Number(n) => self.get_model_version(&uri.name, *n),
            VersionRef::Alias(a) if a.eq_ignore_ascii_case("latest") => self.latest_version(&uri.name),
            VersionRef::Alias(a) => self.get_model_version_by_alias(&uri.name, a),
        }
    }
}

/// The registry behind a tracking URI: `http(s)://` the server's, otherwise the file store's.
/// No buffering: registering is one short, all-or-nothing step.
pub fn open_registry(uri: &str) -> Result<Arc<dyn ModelRegistry>> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(Arc::new(RestStore::new(uri)?));
    }
    Ok(Arc::new(FileStore::from_uri(uri)?))
}

/// MLflow's `_validate_model_name` plus the file store's rules (no path separator, no `%`).
pub fn validate_model_name(name: &str) -> Result<()> {
    let bad = |reason: &str| TrackingError::InvalidName {
        kind: "registered model name",
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.trim().is_empty() {
        return Err(bad("empty"));
    }
    if name.contains(['/', '\\', '%', '\0']) || name == "." || name == ".." {
        return Err(bad("must not contain '/', '\\', '%' or be . or .."));
    }
    if name.chars().count() > crate::MAX_KEY_LEN {
        return Err(bad("too long"));
    }
    Ok(())
}

/// MLflow's `_validate_model_alias_name` (+ `_reserved`): `[\w-]+`, at most 255 characters,
/// and not `v<digits>` (which would read like a version).
pub fn validate_alias(alias: &str) -> Result<()> {
    let bad = |reason: &str| TrackingError::InvalidName {
        kind: "model alias",
        name: alias.to_string(),
        reason: reason.to_string(),
    };
    if alias.is_empty() || alias.chars().count() > 255 {
        return Err(bad("must be 1 to 255 characters"));
    }
    if !alias.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
        return Err(bad("only letters, digits, '_' and '-' are allowed"));
    }
    let lower = alias.to_ascii_lowercase();
    if lower.len() > 1 && lower.starts_with('v') && lower[1..].chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("v<number> is reserved for versions"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// File store

const MODELS_DIR: &str = "models";
const META: &str = "meta.yaml";
const ALIASES: &str = "aliases";
const VERSION_PREFIX: &str = "version-";

impl FileStore {
    fn registered_model_dir(&self, name: &str) -> Result<PathBuf> {
        validate_model_name(name)?;
        Ok(self.root().join(MODELS_DIR).join(name))
    }

    fn existing_model_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.registered_model_dir(name)?;
        if !dir.join(META).is_file() {
            return Err(TrackingError::RegisteredModelNotFound(name.to_string()));
        }
        Ok(dir)
    }

    fn version_dir(&self, name: &str, version: u64) -> Result<PathBuf> {
        let dir = self.existing_model_dir(name)?.join(format!("{VERSION_PREFIX}{version}"));
        if !dir.join(META).is_file() {
            return Err(TrackingError::ModelVersionNotFound { name: name.to_string(), version });
        }
        Ok(dir)
    }

    /// Rewrites the registered model's meta.yaml with a new update time and the current
    /// aliases (MLflow keeps a copy of them there; the `aliases/` files are authoritative).
    fn touch_registered_model(&self, dir: &Path, now: i64) -> Result<()> {
        let meta_path = dir.join(META);
        let text = fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
        let mut doc =
            Doc::parse(&text).map_err(|reason| TrackingError::Malformed { path: meta_path.clone(), reason })?;
        doc.set_int("last_updated_timestamp", now);
        let mut aliases = Vec::new();
        let alias_dir = dir.join(ALIASES);
        if alias_dir.is_dir() {
            for e in fs::read_dir(&alias_dir).map_err(io_err(&alias_dir))? {
                let e = e.map_err(io_err(&alias_dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                // A temporary file (`.<name>.<pid>.<n>.tmp`, or `.tmp-*` from older builds); no
                // alias starts with a dot.
                if name.starts_with('.') {
                    continue;
                }
                let v = fs::read_to_string(e.path()).map_err(io_err(e.path()))?;
                aliases.push(format!("{}: {}", quote(&name), quote(v.trim())));
            }
        }
        aliases.sort();
        doc.set("aliases", Yaml::Plain(format!("{{{}}}", aliases.join(", "))));
        atomic_write(&meta_path, doc.to_yaml().as_bytes(), dir)
    }

    fn read_version(&self, dir: &Path) -> Result<ModelVersion> {
        let path = dir.join(META);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let doc = Doc::parse(&text).map_err(|reason| TrackingError::Malformed { path: path.clone(), reason })?;
        let field = |k: &str| doc.get_str(k).map(str::to_string);
        let version = field("version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| TrackingError::Malformed { path: path.clone(), reason: "no numeric version".into() })?;
        Ok(ModelVersion {
            name: field("name").unwrap_or_default(),
            version,
            source: field("source").unwrap_or_default(),
            run_id: field("run_id"),
            status: field("status").unwrap_or_else(|| "READY".into()),
        })
    }
}

impl ModelRegistry for FileStore {
    fn create_registered_model(&self, name: &str) -> Result<bool> {
        let dir = self.registered_model_dir(name)?;
        if dir.join(META).is_file() {
            return Ok(false);
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let now = now_ms();
        let mut doc = Doc::new();
        doc.set("aliases", Yaml::Plain("{}".into()));
        doc.set_int("creation_timestamp", now);
        doc.set("deployment_job_id", Yaml::Null);
        doc.set("deployment_job_state", Yaml::Null);
        doc.set("description", Yaml::Null);
        doc.set_int("last_updated_timestamp", now);
        doc.set_str("name", name);
        doc.set_str("workspace", "default");
        atomic_write(&dir.join(META), doc.to_yaml().as_bytes(), &dir)?;
        Ok(true)
    }

    fn create_model_version(&self, name: &str, source: &str, run_id: Option<&str>) -> Result<ModelVersion> {
        let dir = self.existing_model_dir(name)?;
        let mut next = 1 + fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix(VERSION_PREFIX)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        // create_dir claims the number; another process registering at the same time gets the next.
        let vdir = loop {
            let d = dir.join(format!("{VERSION_PREFIX}{next}"));
            match fs::create_dir(&d) {
                Ok(()) => break d,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => next += 1,
                Err(e) => return Err(io_err(&d)(e)),
            }
        };
        let now = now_ms();
        let mut doc = Doc::new();
        doc.set_int("creation_timestamp", now);
        doc.set_str("current_stage", "None");
        doc.set("deployment_job_state", Yaml::Null);
        doc.set("description", Yaml::Null);
        doc.set_int("last_updated_timestamp", now);
        doc.set("model_id", Yaml::Null);
        doc.set_str("name", name);
        match run_id {
            Some(r) => doc.set_str("run_id", r),
            None => doc.set("run_id", Yaml::Null),
        }
        doc.set("run_link", Yaml::Null);
        doc.set_str("source", source);
        doc.set_str("status", "READY");
        doc.set("status_message", Yaml::Null);
        doc.set_str("storage_location", source);
        doc.set("user_id", Yaml::Null);
        doc.set_int("version", next as i64);
        doc.set_str("workspace", "default");
        atomic_write(&vdir.join(META), doc.to_yaml().as_bytes(), &vdir)?;
        self.touch_registered_model(&dir, now)?;
        Ok(ModelVersion {
            name: name.to_string(),
            version: next,
            source: source.to_string(),
            run_id: run_id.map(str::to_string),
            status: "READY".into(),
        })
    }

    fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()> {
        validate_alias(alias)?;
        self.version_dir(name, version)?;
        let dir = self.existing_model_dir(name)?;
        let alias_dir = dir.join(ALIASES);
        fs::create_dir_all(&alias_dir).map_err(io_err(&alias_dir))?;
        // The temporary file goes to the model folder: in aliases/ it would read as an alias.
        atomic_write(&alias_dir.join(alias), version.to_string().as_bytes(), &dir)?;
        self.touch_registered_model(&dir, now_ms())
    }

    fn get_model_version(&self, name: &str, version: u64) -> Result<ModelVersion> {
        self.read_version(&self.version_dir(name, version)?)
    }

    fn get_model_version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        validate_alias(alias)?;
        let path = self.existing_model_dir(name)?.join(ALIASES).join(alias);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TrackingError::AliasNotFound { name: name.to_string(), alias: alias.to_string() })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let version = text.trim().parse().map_err(|_| TrackingError::Malformed {
            path: path.clone(),
            reason: format!("{text:?} is not a version"),
        })?;
        self.get_model_version(name, version)
    }

    fn latest_version(&self, name: &str) -> Result<ModelVersion> {
        let dir = self.existing_model_dir(name)?;
        let latest = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix(VERSION_PREFIX)?.parse::<u64>().ok())
            .filter(|v| dir.join(format!("{VERSION_PREFIX}{v}")).join(META).is_file())
            .max()
            .ok_or_else(|| TrackingError::NoModelVersions(name.to_string()))?;
        self.get_model_version(name, latest)
    }

    fn download_uri(&self, name: &str, version: u64) -> Result<String> {
        let dir = self.version_dir(name, version)?;
        let path = dir.join(META);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let doc = Doc::parse(&text).map_err(|reason| TrackingError::Malformed { path: path.clone(), reason })?;
        doc.get_str("storage_location")
            .or_else(|| doc.get_str("source"))
            .map(str::to_string)
            .ok_or_else(|| TrackingError::Malformed { path, reason: "no storage_location or source".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_uris() {
        let u = ModelUri::parse("models:/digits/3").unwrap();
        assert_eq!((u.name.as_str(), &u.reference), ("digits", &VersionRef::Number(3)));
        let u = ModelUri::parse("models:/my model@champion").unwrap();
        assert_eq!((u.name.as_str(), &u.reference), ("my model", &VersionRef::Alias("champion".into())));
        assert_eq!(u.to_string(), "models:/my model@champion");
        for bad in [
            "models:/digits",
            "models:/digits/0",
            "models:/digits/x",
            "models:/@a",
            "runs:/x/model",
            "models:/d@v3",
            "models:/d@",
        ] {
            assert!(ModelUri::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Command-line pieces shared by the pipeline's binaries: the MLflow tracking URI as clap
//! reads it (`trainer`, `exporter`, `infer`), how a failure is printed (all three), and the
//! model flags that `infer` and `infer serve` share ([`ModelArgs`]) with their one rule for
//! naming members.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{ArgGroup, ArgMatches, Args};

use crate::{BackendKind, ResolveOptions};

pub use tracking::cli::{error_line, print_error, tracking_uri, TrackingUri, TRACKING_URI_ENV, TRACKING_URI_ID};

/// Which models to run and how: the flags `infer` and `infer serve` share.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["model", "ensemble"])))]
pub struct ModelArgs {
    /// One model: an ONNX file, named by its file stem (its folder's name for NAME/model.onnx),
    /// or a registry URI models:/NAME/<version> or models:/NAME@<alias>, named NAME (needs
    /// --tracking-uri; downloads are cached, see --cache-dir).
    #[arg(long, value_name = "MODEL.onnx|URI")]
    pub model: Option<PathBuf>,

    /// Comma-separated ensemble members: models:/ URIs, paths (containing '/' or ending in
    /// .onnx), or names. With a tracking server in --tracking-uri a name is first looked up in
    /// its model registry (alias `champion`, else the newest version); otherwise, or if not
    /// registered, as NAME.onnx or NAME/model.onnx in --models-dir. Members are named as by
    /// --model (a plain name is its own name) and run concurrently, one thread each.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub ensemble: Option<Vec<String>>,

    /// Folder where member names are looked up. Default: ./models, then ./exported.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// Where models downloaded from a tracking server's registry are cached (one folder per
    /// server, name and version). Default: $XDG_CACHE_HOME/digit-recognizer/models, else
    /// ~/.cache/digit-recognizer/models.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// MLflow tracking URI of the model registry: a tracking server http(s)://host:port or a
    /// file store path. Needed for models:/ URIs; with a server, plain ensemble names are
    /// looked up in its registry first.
    #[arg(long, value_name = "URI", env = TRACKING_URI_ENV)]
    pub tracking_uri: Option<String>,

    /// Inference backend. Default: ort when libonnxruntime is found (ORT_DYLIB_PATH or
    /// the project's .venv), else tract.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,

    /// Threads in total (default: all cores); an ensemble splits them between members
    /// (at least one each).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: Option<u64>,
}

impl ModelArgs {
    /// The models to load, each with its name ([`member_name`]), in order. Registry models are
    /// fetched (said on stderr, prefixed `program: `); a file given to --model is taken as it is.
    /// `matches` are those of the command holding these flags (for [`tracking_uri`]).
    pub fn resolve(&self, matches: &ArgMatches, program: &str) -> Result<Vec<(String, PathBuf)>> {
        let mut opts = ResolveOptions::new(self.models_dir.as_deref(), tracking_uri(matches)?.map(|t| t.uri));
        if let Some(dir) = &self.cache_dir {
            opts.cache_dir = dir.clone();
        }
        let resolve = |spec: &str| -> Result<(String, PathBuf)> {
            let m = crate::resolve_model(spec, &opts)?;
            if let Some(r) = &m.registry {
                eprintln!(
                    "{program}: {spec} -> models:/{}/{} (run {}), {} {}",
                    r.version.name,
                    r.version.version,
                    r.version.run_id.as_deref().unwrap_or("-"),
                    if r.downloaded { "downloaded to" } else { "using" },
                    r.path.display()
                );
            }
            Ok((member_name(spec), m.path))
        };
        match (&self.model, &self.ensemble) {
            (Some(p), _) => match p.to_str().filter(|s| crate::is_model_uri(s)) {
                Some(uri) => Ok(vec![resolve(uri)?]),
                None => Ok(vec![(file_name(p), p.clone())]),
            },
            (None, Some(members)) => {
                let specs: Vec<&str> = members.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).collect();
                if specs.is_empty() {
                    bail!("--ensemble needs at least one member name");
                }
                specs.into_iter().map(resolve).collect()
            }
            (None, None) => bail!("give --model or --ensemble"),
        }
    }

    /// --threads, else all cores.
    pub fn total_threads(&self) -> usize {
        self.threads.map_or_else(crate::default_threads, |t| t as usize)
    }
}

/// The name of a model given as `spec` (what the timing table shows and `infer serve` serves it
/// under): NAME of models:/NAME/1 or models:/NAME@alias (a `/` cannot be part of
/// /v2/models/NAME), else the file stem, or NAME of NAME/model.onnx; a plain member name is
/// its own name.
pub fn member_name(spec: &str) -> String {
    match spec.strip_prefix("models:/") {
        Some(rest) => rest.split(['/', '@']).next().unwrap_or(rest).to_string(),
        None => file_name(Path::new(spec)),
    }
}

/// The file stem, or the parent folder's name for `NAME/model.onnx`.
fn file_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem == "model" {
        if let Some(parent) = path.parent().and_then(Path::file_name) {
            return parent.to_string_lossy().into_owned();
        }
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(member_name("models:/digits@champion"), "digits");
        assert_eq!(member_name("models:/digits/3"), "digits");
        assert_eq!(member_name("exported/resnet18.onnx"), "resnet18");
        assert_eq!(member_name("exported/m5/model.onnx"), "m5");
        assert_eq!(member_name("resnet34"), "resnet34");
    }

    #[test]
    fn error_line_joins_causes_once() {
        let e = anyhow::anyhow!("inner\n  detail").context("reading x: inner detail").context("outer");
        assert_eq!(error_line(&e), "outer: reading x: inner detail");
    }
}

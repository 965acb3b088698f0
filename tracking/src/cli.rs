//! What the three binaries (`trainer`, `exporter`, `infer`) share on their command lines: the
//! MLflow tracking URI as clap reads it, and how a failure is printed. Here because every
//! binary already depends on this crate.

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;

/// The environment variable every binary's `--tracking-uri` falls back to (clap reads it).
pub const TRACKING_URI_ENV: &str = "MLFLOW_TRACKING_URI";
/// The clap id of a `--tracking-uri` argument (`env = TRACKING_URI_ENV`), for [`tracking_uri`].
pub const TRACKING_URI_ID: &str = "tracking_uri";

/// A tracking URI and where clap found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingUri {
    /// The URI, trimmed.
    pub uri: String,
    /// True when it came from [`TRACKING_URI_ENV`] rather than `--tracking-uri`.
    pub from_env: bool,
}

/// The `--tracking-uri` of `matches` (the command that defines [`TRACKING_URI_ID`] with
/// `env = TRACKING_URI_ENV`), trimmed. A blank variable counts as unset, as it always has; a
/// blank flag is an error rather than a silent fallback.
pub fn tracking_uri(matches: &ArgMatches) -> Result<Option<TrackingUri>> {
    let Some(value) = matches.get_one::<String>(TRACKING_URI_ID) else {
        return Ok(None);
    };
    let from_env = matches.value_source(TRACKING_URI_ID) == Some(ValueSource::EnvVariable);
    let uri = value.trim();
    if uri.is_empty() {
        if from_env {
            return Ok(None);
        }
        bail!("--tracking-uri is empty: give a tracking URI, or leave it out");
    }
    Ok(Some(TrackingUri { uri: uri.to_string(), from_env }))
}

/// An error and its causes on one line: causes joined by `: `, a cause whose text the line
/// already quotes skipped (several libraries repeat their source in their message), and
/// whitespace runs, newlines included (ONNX Runtime's messages hold some), made one space.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Prints a failure as every binary does: `[PROGRAM: ]error: ` and [`error_line`], on stderr.
pub fn print_error(program: Option<&str>, e: &anyhow::Error) {
    match program {
        Some(p) => eprintln!("{p}: error: {}", error_line(e)),
        None => eprintln!("error: {}", error_line(e)),
    }
}

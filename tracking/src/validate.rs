//! The same checks `mlflow.utils.validation` applies, done before anything touches
//! disk: keys become file names in the store, so a bad key is a bad path.

use crate::error::{Result, TrackingError};

/// `MAX_ENTITY_KEY_LENGTH` in MLflow.
pub const MAX_KEY_LEN: usize = 250;
/// `MAX_PARAM_VAL_LENGTH` in MLflow.
pub const MAX_PARAM_VALUE_LEN: usize = 6000;
/// `MAX_TAG_VAL_LENGTH` in MLflow.
pub const MAX_TAG_VALUE_LEN: usize = 8000;
/// `MAX_EXPERIMENT_NAME_LENGTH` in MLflow.
pub const MAX_EXPERIMENT_NAME_LEN: usize = 500;

/// Param, metric and tag keys: MLflow's `^[/\w.\- :]*$` (colon only off Windows)
/// plus `path_not_unique` (the key must equal its own `posixpath.normpath`).
pub fn validate_key(kind: &'static str, name: &str) -> Result<()> {
    let bad = |reason: String| TrackingError::InvalidName { kind, name: name.to_string(), reason };
    if let Some(c) = name.chars().find(|&c| !is_key_char(c)) {
        return Err(bad(format!(
            "character {c:?} not allowed; names may only contain alphanumerics, \
             underscores, dashes, periods, spaces{} and slashes",
            if cfg!(windows) { "" } else { ", colons" }
        )));
    }
    check_path_unique(name).map_err(bad)?;
    if name.chars().count() > MAX_KEY_LEN {
        return Err(bad(format!("longer than {MAX_KEY_LEN} characters")));
    }
    Ok(())
}

fn is_key_char(c: char) -> bool {
    // Python's `\w` is Unicode-aware, hence `is_alphanumeric` rather than ASCII.
    c.is_alphanumeric() || matches!(c, '_' | '/' | '.' | '-' | ' ') || (c == ':' && !cfg!(windows))
}

/// Artifact paths are not restricted to the key alphabet (file names may hold
/// `+`, `=`...), but they must still stay inside the run's artifact folder.
pub fn validate_artifact_path(path: &str) -> Result<()> {
    let bad = |reason: String| TrackingError::InvalidName { kind: "artifact path", name: path.to_string(), reason };
    if path.contains('\0') || path.contains('\\') {
        return Err(bad("NUL and backslash are not allowed".into()));
    }
    check_path_unique(path).map_err(bad)
}

/// MLflow's `path_not_unique`: reject anything whose normalised form differs
/// (`a//b`, `a/./b`, trailing `/`), is `.`, starts with `..` or is absolute.
fn check_path_unique(name: &str) -> std::result::Result<(), String> {
    let norm = posix_normpath(name);
    if norm != name || norm == "." || norm.starts_with("..") || norm.starts_with('/') {
        return Err(format!(
            "names are used as file paths and must not resolve to another name; \
             this one resolves to {norm:?}"
        ));
    }
    Ok(())
}

/// Port of Python's `posixpath.normpath` (lexical only).
pub fn posix_normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    // POSIX allows exactly two leading slashes to mean something special; Python keeps them.
    let initial = if path.starts_with("//") && !path.starts_with("///") {
        "//"
    } else if path.starts_with('/') {
        "/"
    } else {
        ""
    };
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if (initial.is_empty() && out.is_empty()) || out.last() == Some(&"..") {
                    out.push("..");
                } else if !out.is_empty() {
                    out.pop();
                }
            }
            c => out.push(c),
        }
    }
    let joined = format!("{initial}{}", out.join("/"));
    if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// MLflow's `_RUN_ID_REGEX`: `^[a-zA-Z0-9][\w\-]{0,255}$`. Run ids are folder
/// names, so this also keeps `open_run("../x")` from escaping the store.
pub fn validate_run_id(run_id: &str) -> Result<()> {
    validate_id("run id", run_id, 256)
}

/// MLflow's `_EXPERIMENT_ID_REGEX`: `^[a-zA-Z0-9][\w\-]{0,63}$`.
pub fn validate_experiment_id(id: &str) -> Result<()> {
    validate_id("experiment id", id, 64)
}

fn validate_id(kind: &'static str, id: &str, max: usize) -> Result<()> {
    let mut chars = id.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        && id.chars().count() <= max;
    if ok {
        Ok(())
    } else {
        Err(TrackingError::InvalidName {
            kind,
            name: id.to_string(),
            reason: format!("must be 1-{max} alphanumerics, underscores or dashes, starting alphanumeric"),
        })
    }
}

pub fn validate_experiment_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(TrackingError::InvalidValue { what: "experiment name".into(), reason: "must not be empty".into() });
    }
    if name.chars().count() > MAX_EXPERIMENT_NAME_LEN {
        return Err(TrackingError::InvalidValue {
            what: "experiment name".into(),
            reason: format!("longer than {MAX_EXPERIMENT_NAME_LEN} characters"),
        });
    }
    Ok(())
}

pub fn validate_value_len(what: &str, key: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(TrackingError::InvalidValue {
            what: format!("{what} {key:?}"),
            reason: format!("value longer than {max} characters"),
        });
    }
    Ok(())
}

/// The local checks a `log_params` passes before any request; shared by the stores
/// and the buffering wrapper, so that what it queues cannot fail these later.
pub(crate) fn check_params(params: &[(&str, &str)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for &(k, v) in params {
        validate_key("param", k)?;
        validate_value_len("param", k, v, MAX_PARAM_VALUE_LEN)?;
        if !seen.insert(k) {
            return Err(TrackingError::InvalidValue {
                what: format!("param {k:?}"),
                reason: "logged twice in one batch".into(),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_metrics(metrics: &[(&str, f64)], timestamp_ms: i64) -> Result<()> {
    for &(k, _) in metrics {
        validate_key("metric", k)?;
    }
    if timestamp_ms < 0 {
        return Err(TrackingError::InvalidValue {
            what: "metric timestamp".into(),
            reason: format!("{timestamp_ms} is negative"),
        });
    }
    Ok(())
}

pub(crate) fn check_tags<K: AsRef<str>, V: AsRef<str>>(tags: &[(K, V)]) -> Result<()> {
    for (k, v) in tags {
        validate_key("tag", k.as_ref())?;
        validate_value_len("tag", k.as_ref(), v.as_ref(), MAX_TAG_VALUE_LEN)?;
    }
    Ok(())
}

/// The artifact path of file `name` logged below `subdir`, both checked.
pub(crate) fn artifact_rel_path(name: &str, subdir: Option<&str>) -> Result<String> {
    validate_artifact_path(name)?;
    Ok(match subdir {
        Some(s) if !s.is_empty() => {
            validate_artifact_path(s)?;
            format!("{s}/{name}")
        }
        _ => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normpath_matches_python() {
        for (i, o) in [
            ("", "."),
            ("a//b", "a/b"),
            ("a/./b", "a/b"),
            ("a/", "a"),
            ("./a", "a"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("//a", "//a"),
            ("///a", "/a"),
            ("a/b/..", "a"),
        ] {
            assert_eq!(posix_normpath(i), o, "{i:?}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["loss", "val/acc", "a b", "lr_0.1-x", "épsilon", "a..b", "t:1"] {
            validate_key("metric", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["", ".", "..", "../x", "a/../b", "/abs", "a//b", "a/", "x\ny", "a*b", "..a", "a\\b"] {
            assert!(validate_key("metric", bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_key("param", &"k".repeat(251)).is_err());
        assert!(validate_key("param", &"k".repeat(250)).is_ok());
    }

    #[test]
    fn ids() {
        validate_run_id("0123abcdef").unwrap();
        validate_experiment_id("0").unwrap();
        for bad in ["", "../x", "_a", "a/b", "a.b"] {
            assert!(validate_run_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_experiment_id(&"1".repeat(65)).is_err());
    }

    #[test]
    fn artifact_paths() {
        validate_artifact_path("ckpt/model+v=1.safetensors").unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\\b", "a//b"] {
            assert!(validate_artifact_path(bad).is_err(), "{bad:?}");
        }
    }
}

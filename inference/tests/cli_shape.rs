//! The three CLIs speak alike (issue #17): `infer` and `infer serve` take one set of model
//! flags, and every binary reads MLFLOW_TRACKING_URI through clap (its help shows the value).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../data/tests/common/skip.rs"]
mod skip;

const MODEL_FLAGS: [&str; 7] =
    ["--model", "--ensemble", "--models-dir", "--cache-dir", "--tracking-uri", "--backend", "--threads"];

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("MLFLOW_TRACKING_URI").env_remove("INFER_SERVE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn infer() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_infer"))
}

/// The help paragraph of `flag` in `help` (its line and the indented lines below it).
fn flag_help(help: &str, flag: &str) -> Option<String> {
    let lines: Vec<&str> = help.lines().collect();
    let names = |l: &str| {
        let t = l.trim_start();
        t.starts_with('-') && t.split([' ', ',']).any(|w| w == flag)
    };
    let start = lines.iter().position(|l| names(l))?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let head = indent(lines[start]);
    let mut block = vec![lines[start]];
    block.extend(lines[start + 1..].iter().take_while(|l| l.trim().is_empty() || indent(l) > head));
    Some(block.join("\n"))
}

#[test]
fn infer_and_serve_share_the_model_flags() {
    let top = run(&infer(), &["--help"], &[]);
    let serve = run(&infer(), &["serve", "--help"], &[]);
    assert!(top.status.success() && serve.status.success());
    let (top, serve) = (text(&top.stdout), text(&serve.stdout));
    assert!(top.contains("serve") && serve.contains("Usage: infer serve"), "{top}\n{serve}");
    for flag in MODEL_FLAGS {
        let a = flag_help(&top, flag).unwrap_or_else(|| panic!("infer --help lacks {flag}:\n{top}"));
        let b = flag_help(&serve, flag).unwrap_or_else(|| panic!("infer serve --help lacks {flag}:\n{serve}"));
        assert_eq!(a, b, "{flag} is described differently");
    }
    // Defaults come from the code's constants, printed by clap.
    assert!(flag_help(&top, "--batch-size").unwrap().contains("[default: 64]"), "{top}");
    assert!(flag_help(&serve, "--max-batch").unwrap().contains("[default: 64]"), "{serve}");
    assert!(flag_help(&serve, "--addr").unwrap().contains("[default: 127.0.0.1:8000]"), "{serve}");
}

#[test]
fn prediction_needs_its_arguments_only_without_a_subcommand() {
    let o = run(&infer(), &[], &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("<INPUT>") && err.contains("--model"), "{err}");
    let o = run(&infer(), &["serve"], &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("--model") && !err.contains("<INPUT>"), "{err}");
}

#[test]
fn infer_reads_the_tracking_uri_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("no-such-store");
    let store_s = store.to_str().unwrap();
    for args in [&["--help"][..], &["serve", "--help"]] {
        let help = text(&run(&infer(), args, &[("MLFLOW_TRACKING_URI", store_s)]).stdout);
        assert!(help.contains(&format!("[env: MLFLOW_TRACKING_URI={store_s}]")), "{args:?}:\n{help}");
    }
    let csv = tmp.path().join("test.csv");
    let uri_args = ["--model", "models:/digits/1", csv.to_str().unwrap()];
    // Unset or blank: the registry URI has no store to go to.
    for env in [&[][..], &[("MLFLOW_TRACKING_URI", " ")]] {
        let o = run(&infer(), &uri_args, env);
        let err = text(&o.stderr);
        assert!(
            !o.status.success() && err.starts_with("infer: error: ") && err.contains("needs MLFLOW_TRACKING_URI"),
            "{err}"
        );
    }
    // Set: it is used (and the missing store is what fails).
    let o = run(&infer(), &uri_args, &[("MLFLOW_TRACKING_URI", store_s)]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && !err.contains("needs MLFLOW_TRACKING_URI"), "{err}");
    // A blank flag is an error, not a fallback.
    let o = run(&infer(), &["--tracking-uri", " ", "--model", "models:/digits/1", csv.to_str().unwrap()], &[]);
    assert!(text(&o.stderr).contains("--tracking-uri is empty"), "{}", text(&o.stderr));
}

/// `trainer` / `exporter` from the same target folder, when built at least as recently as
/// their main.rs (cargo builds only this package's binaries for its tests).
fn sibling(name: &str) -> Option<PathBuf> {
    let bin = infer().with_file_name(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src/main.rs");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
    let edited = std::fs::metadata(&src).and_then(|m| m.modified()).ok()?;
    (built >= edited).then_some(bin)
}

#[test]
fn trainer_and_exporter_read_the_tracking_uri_through_clap() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("gone");
    let store_s = store.to_str().unwrap();
    for name in ["trainer", "exporter"] {
        let Some(bin) = sibling(name) else {
            skip::skip(
                "trainer_and_exporter_read_the_tracking_uri_through_clap",
                &format!("no up-to-date {name} binary"),
            );
            continue;
        };
        let help = text(&run(&bin, &["--help"], &[("MLFLOW_TRACKING_URI", store_s)]).stdout);
        assert!(help.contains(&format!("[env: MLFLOW_TRACKING_URI={store_s}]")), "{name}:\n{help}");
    }
    if let Some(exporter) = sibling("exporter") {
        // --run takes its store from the environment; the one-line error names it.
        let o = run(&exporter, &["--run", "0123456789abcdef"], &[("MLFLOW_TRACKING_URI", store_s)]);
        let err = text(&o.stderr);
        assert!(!o.status.success() && err.starts_with("error: ") && err.contains(store_s), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

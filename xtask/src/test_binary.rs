//! `xtask test-binary PACKAGE TEST`: builds an integration test without running it and prints
//! its executable's path, which has a hash in it (scripts/gpu_pack.sh bundles the CUDA tests).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The package, e.g. trainer
    pub package: String,
    /// The integration test's name, e.g. cuda
    pub test: String,
}

pub fn run(args: Args) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["test", "--release", "-p", &args.package, "--test", &args.test, "--no-run", "--message-format=json"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).lines() {
        found = found.or(executable(&line.context("reading cargo's messages")?, &args.test));
    }
    let status = child.wait().context("waiting for cargo")?;
    match found {
        Some(path) if status.success() => {
            println!("{path}");
            Ok(())
        }
        _ => bail!("cargo built no test binary {} in package {} ({status})", args.test, args.package),
    }
}

/// The executable of a `compiler-artifact` message for target `test`, if this line is one.
fn executable(line: &str, test: &str) -> Option<String> {
    let m: serde_json::Value = serde_json::from_str(line).ok()?;
    let artifact = m["reason"] == "compiler-artifact" && m["target"]["name"] == test;
    artifact.then(|| m["executable"].as_str().map(String::from)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_targets_executable_is_taken() {
        let cuda = r#"{"reason":"compiler-artifact","target":{"name":"cuda"},"executable":"/t/deps/cuda-ab12"}"#;
        assert_eq!(executable(cuda, "cuda").as_deref(), Some("/t/deps/cuda-ab12"));
        assert_eq!(executable(cuda, "other"), None);
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"cuda"},"executable":null}"#;
        assert_eq!(executable(lib, "cuda"), None);
        assert_eq!(executable(r#"{"reason":"build-finished","success":true}"#, "cuda"), None);
        assert_eq!(executable("not json", "cuda"), None);
    }
}

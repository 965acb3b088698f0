//! The pipeline's binaries as child processes, and how their output is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Where trainer, exporter and infer are: beside this binary (target/release, or the folder a
/// GPU bundle was unpacked into).
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    pub fn beside_me() -> Result<Self> {
        let me = std::env::current_exe().context("finding the xtask binary's folder")?;
        let dir = me.parent().context("the xtask binary has no folder")?.to_path_buf();
        Ok(Bins { dir })
    }

    #[cfg(test)]
    pub fn at(dir: PathBuf) -> Self {
        Bins { dir }
    }

    /// `name` from that folder; the runs' MLflow file store needs MLFLOW_ALLOW_FILE_STORE.
    pub fn cmd(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.dir.join(name));
        cmd.env("MLFLOW_ALLOW_FILE_STORE", "true");
        cmd
    }
}

/// Runs `cmd` with stderr passed through and stdout captured; fails on a non-zero exit.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().with_context(|| started(cmd))?;
    if !out.status.success() {
        bail!("{} failed: {}", shown(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its output passed through (`quiet`: stdout dropped); fails on a non-zero exit.
pub fn status_of(cmd: &mut Command, quiet: bool) -> Result<()> {
    let stdout = if quiet { Stdio::null() } else { Stdio::inherit() };
    let status = cmd.stdin(Stdio::null()).stdout(stdout).status().with_context(|| started(cmd))?;
    if !status.success() {
        bail!("{} failed: {status}", shown(cmd));
    }
    Ok(())
}

fn started(cmd: &Command) -> String {
    format!("starting {}", Path::new(cmd.get_program()).display())
}

/// The command line, for error messages.
fn shown(cmd: &Command) -> String {
    let args = cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    format!("{} {args}", Path::new(cmd.get_program()).display())
}

/// Whole seconds since a moment, for the "after N s" lines the scripts printed.
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Clock { start: Instant::now() }
    }

    pub fn secs(&self) -> u64 {
        self.start.elapsed().as_secs()
    }
}

/// Seconds since a wall-clock time given as Unix seconds (a wrapper script's start, so that
/// "in all" counts its set-up and build too).
pub fn secs_since_unix(t0: u64) -> u64 {
    unix_now().saturating_sub(t0)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The trainer's closing `best: epoch ... val_accuracy ... -> PATH` lines, as `best epoch ...`
/// without the path (what the scripts' `best_of` printed).
pub fn best_of(log: &str) -> String {
    let lines = log.lines().filter_map(|l| l.strip_prefix("best: ")).filter_map(|rest| rest.rsplit_once(" -> "));
    lines.map(|(what, _)| format!("best {what}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_of_keeps_the_figures_and_drops_the_path() {
        let log = "epoch 1 ...\nbest: epoch 1 val_accuracy 0.751250 val_loss 1.089598 -> /o/c/best\nwrote x\n";
        assert_eq!(best_of(log), "best epoch 1 val_accuracy 0.751250 val_loss 1.089598");
        assert_eq!(best_of("no such line\n"), "");
    }
}

//! What `--resume` needs, saved after every epoch in `<output>/<arch>/last/` next to the
//! checkpoint: `state.json` (options, epoch, metric history, best epoch, optimiser step count),
//! `optimizer.safetensors` (Adam moments) and `ema.safetensors` (averaged weights). A folder is
//! written whole under a temporary name and renamed into place, so a kill at any moment leaves
//! either the previous epoch's folder or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::from_host;
use crate::error::{Result, TrainerError};
use crate::options::{EpochStats, TrainOptions};

pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
/// The resolved options of the run, beside every checkpoint.
pub const CONFIG_FILE: &str = "train_config.json";

/// Everything about a run's progress that is not a tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub run_id: String,
    /// As given to the tracker: a file store path or a server URI.
    pub tracking_uri: String,
    pub options: TrainOptions,
    /// Epochs completed (1-based count); the next one to run is `epoch + 1`.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub optimizer_steps: i64,
    pub ema_updates: u64,
    pub history: Vec<EpochStats>,
    pub best: Option<EpochStats>,
    /// Seconds spent training before this process (for the summary after a resume).
    pub seconds: f64,
}

impl TrainState {
    pub fn load(dir: &Path) -> Result<TrainState> {
        let path = dir.join(STATE_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|source| TrainerError::Read { path: path.clone(), source })?;
        serde_json::from_str(&text)
            .map_err(|e| TrainerError::Checkpoint { path, message: format!("not a trainer state file: {e}") })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }
}

/// Writes a folder at `dir` with `fill(tmp)` and swaps it into place: `dir` is renamed to a
/// backup, the new folder to `dir`, then the backup is removed. [`existing_dir`] finds the
/// backup if a kill came between the two renames.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (tmp, old) = (sibling(dir, "tmp"), sibling(dir, "old"));
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| TrainerError::Read { path, source }
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let point = |what: &str| crate::fault::point(&format!("{name}/{what}"));
    remove_if_exists(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    point("filled");
    // Without `dir` (a kill came between the renames) the backup is the only complete copy:
    // it stays until the new folder is in place.
    if dir.exists() {
        remove_if_exists(&old)?;
        point("before_swap");
        std::fs::rename(dir, &old).map_err(io(dir))?;
        point("between_renames");
    } else {
        point("before_swap");
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    point("renamed");
    remove_if_exists(&old)
}

/// Removes what a kill inside [`replace_dir`] left beside `dir` when `dir` is in place (it
/// only ever appears complete, by a rename): the backup and a half-written temporary folder.
/// Without `dir` the backup is the only copy and stays.
pub fn tidy(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        remove_if_exists(&sibling(dir, "old"))?;
        remove_if_exists(&sibling(dir, "tmp"))?;
    }
    Ok(())
}

/// `dir`, or its backup when a kill came in the middle of [`replace_dir`].
pub fn existing_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")].into_iter().find(|d| d.join(STATE_FILE).is_file())
}

fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{what}"))
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(TrainerError::Read { path: p.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// Named tensors to a safetensors file (f32, any device), atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let origin = path.display().to_string();
    Ok(crate::checkpoint::to_weights(&origin, tensors.iter().map(|(n, t)| (n.as_str(), t)))?.write(path)?)
}

/// Every tensor of a safetensors file written by [`save_tensors`], on the CPU.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let weights = models::Weights::read(path)?;
    weights
        .iter()
        .map(|(name, t)| Ok((name.to_string(), from_host(t, &format!("{name} from {}", path.display()))?)))
        .collect()
}

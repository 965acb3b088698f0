//! The configuration saved beside every checkpoint and reloaded by the exporter and inference,
//! so a model can always be rebuilt exactly as it was trained.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Arch, ModelsError};

/// File names inside a checkpoint directory.
pub const CHECKPOINT_WEIGHTS_FILE: &str = "model.safetensors";
pub const CHECKPOINT_META_FILE: &str = "config.json";

/// How raw pixels become model input: `input = (pixel * scale - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub scale: f32,
    pub mean: f32,
    pub std: f32,
}

impl Default for Normalization {
    /// The seed project's input: pixel / 255, no mean/std shift.
    fn default() -> Self {
        Normalization { scale: 1.0 / 255.0, mean: 0.0, std: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// 1 for gray digits; 3 reproduces the seed project's gray-repeated-to-RGB input.
    #[serde(default = "one")]
    pub in_channels: usize,
    #[serde(default = "ten")]
    pub num_classes: usize,
    /// Side of the square input image.
    #[serde(default = "twenty_eight")]
    pub image_size: usize,
    #[serde(default)]
    pub normalization: Normalization,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn twenty_eight() -> usize {
    28
}

impl ModelConfig {
    pub fn new(arch: Arch) -> Self {
        ModelConfig { arch, in_channels: 1, num_classes: 10, image_size: 28, normalization: Normalization::default() }
    }

    /// Per-sample shape the network body reads, `[in_channels, S, S]`: the input after the
    /// prologue's gray-to-RGB repeat. The model's own input is always `[1, S, S]`
    /// ([`Graph::input_shape`](crate::Graph::input_shape)).
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_channels, self.image_size, self.image_size]
    }

    pub fn validate(&self) -> Result<(), ModelsError> {
        if !(1..=4).contains(&self.in_channels) {
            return Err(ModelsError::InvalidConfig(format!("in_channels must be 1..=4, got {}", self.in_channels)));
        }
        if !(2..=100_000).contains(&self.num_classes) {
            return Err(ModelsError::InvalidConfig(format!(
                "num_classes must be at least 2, got {}",
                self.num_classes
            )));
        }
        // Below 28 px SqueezeNet's pooling runs out of pixels (torchvision fails too).
        if !(28..=1024).contains(&self.image_size) {
            return Err(ModelsError::InvalidConfig(format!("image_size must be 28..=1024, got {}", self.image_size)));
        }
        if !(self.normalization.std > 0.0 && self.normalization.scale > 0.0) {
            return Err(ModelsError::InvalidConfig("normalization scale and std must be positive".into()));
        }
        Ok(())
    }
}

/// What a checkpoint directory's `config.json` holds: the model, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub model: ModelConfig,
    /// Epoch (1-based) whose weights these are.
    #[serde(default)]
    pub epoch: usize,
    #[serde(default)]
    pub val_accuracy: Option<f64>,
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// MLflow run that produced the checkpoint, if any.
    #[serde(default)]
    pub run_id: Option<String>,
    /// MLflow tracking location of that run (a file store path or a server URI).
    #[serde(default)]
    pub tracking_uri: Option<String>,
    #[serde(default)]
    pub producer: String,
}

impl CheckpointMeta {
    pub fn load(path: &Path) -> Result<Self, ModelsError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ModelsError::ReadConfig { path: p.clone(), source })?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).map_err(|source| ModelsError::ParseConfig { path: p, source })?;
        meta.model.validate()?;
        Ok(meta)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }
}

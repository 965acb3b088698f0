//! What one training run is: its resolved options (logged as MLflow params and saved beside
//! every checkpoint), the numbers of an epoch, and what a finished run reports. Both the
//! training loop ([`crate::train`]) and the resume state ([`crate::state`]) read these.

use std::path::PathBuf;

use models::Arch;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Result, TrainerError};
use crate::recipe::{Hyper, Recipe};

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    /// The CPU, with --threads libtorch threads.
    Cpu,
    /// The first CUDA GPU; an error when there is none.
    Cuda,
}

/// How convolution weights and activations are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Channels-last on the CPU for the architectures measured faster so (cnn_digits),
    /// contiguous otherwise.
    #[default]
    Auto,
    /// NCHW, as PyTorch lays tensors out by default.
    Contiguous,
    /// NHWC (PyTorch's `torch.channels_last`): oneDNN's NHWC convolution kernels.
    ChannelsLast,
}

/// Architectures that train faster channels-last on the CPU (PyTorch eager, 1 thread, batch 64
/// on 28x28: cnn_digits +25%; resnet18 -8%, so it stays NCHW).
const CHANNELS_LAST_ON_CPU: &[Arch] = &[Arch::CnnDigits];

impl MemoryFormat {
    /// The layout `arch` trains in on `device`: `Auto` decided, the others as they are.
    pub fn resolve(self, arch: Arch, device: Device) -> MemoryFormat {
        match self {
            MemoryFormat::Auto if device == Device::Cpu && CHANNELS_LAST_ON_CPU.contains(&arch) => {
                MemoryFormat::ChannelsLast
            }
            MemoryFormat::Auto => MemoryFormat::Contiguous,
            other => other,
        }
    }

    /// Whether `arch` on `device` trains channels-last.
    pub fn channels_last(self, arch: Arch, device: Device) -> bool {
        self.resolve(arch, device) == MemoryFormat::ChannelsLast
    }
}

/// Resolves `--device`; asking for CUDA without a usable GPU is an error, not a silent CPU run.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(TrainerError::Config(
            "--device cuda: libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch); use --device cpu"
                .into(),
        )),
    }
}

/// Human name of a device, as printed and logged.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn contiguous() -> MemoryFormat {
    MemoryFormat::Contiguous
}

/// One training run, resolved: what is logged as MLflow params and saved beside every
/// checkpoint as `train_config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub model: Arch,
    #[serde(flatten)]
    pub hyper: Hyper,
    /// Folder, Kaggle zip or `train.csv`.
    pub data: PathBuf,
    /// Use only the first N rows of the data.
    pub limit: Option<usize>,
    /// Safetensors file of torchvision state_dict tensors to start from (see [`crate::pretrained`]).
    pub pretrained: Option<PathBuf>,
    pub device: DeviceChoice,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<usize>,
    /// Weights and activations NCHW or NHWC (runs saved before it existed were NCHW).
    #[serde(default = "contiguous")]
    pub memory_format: MemoryFormat,
    /// Checkpoints go to `<output_dir>/<model>/{best,last}`.
    pub output_dir: PathBuf,
    /// A file store path or an `http(s)://` MLflow server.
    pub tracking_uri: String,
    pub experiment: String,
    /// Draw progress bars (on stderr, only when it is a terminal).
    #[serde(skip, default)]
    pub progress: bool,
}

impl TrainOptions {
    /// The seed project's recipe for `arch` on `data`.
    pub fn new(arch: Arch, data: impl Into<PathBuf>) -> Self {
        TrainOptions {
            model: arch,
            hyper: Hyper::new(Recipe::Seed),
            data: data.into(),
            limit: None,
            pretrained: None,
            device: DeviceChoice::Auto,
            threads: None,
            memory_format: MemoryFormat::Auto,
            output_dir: PathBuf::from("checkpoints"),
            tracking_uri: "mlruns".into(),
            experiment: "Default".into(),
            progress: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.hyper.validate()?;
        let bad = |m: &str| Err(TrainerError::Config(m.into()));
        if self.threads == Some(0) {
            return bad("--threads must be at least 1");
        }
        if self.limit == Some(0) {
            return bad("--limit must be at least 1");
        }
        if self.experiment.trim().is_empty() {
            return bad("--experiment must not be empty");
        }
        Ok(())
    }

    /// `<output_dir>/<model>`.
    pub fn arch_dir(&self) -> PathBuf {
        self.output_dir.join(self.model.name())
    }

    /// Every option as `(name, value)`, for MLflow params (`none` for an unset option).
    pub fn params(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("plain data serialises");
        let map = value.as_object().expect("a struct serialises to an object");
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Null => "none".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// The numbers of one epoch, as printed and logged to MLflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_error: f64,
    /// Learning rate of the epoch's first step.
    pub lr: f64,
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

impl EpochStats {
    /// Whether the epoch was scored: without a validation split (`--val-fraction 0`) its
    /// validation figures are NaN.
    pub fn validated(&self) -> bool {
        !self.val_accuracy.is_nan()
    }

    /// The line the trainer prints after each epoch; without a validation split it says so
    /// instead of printing NaNs.
    pub fn line(&self, epochs: usize) -> String {
        let val = if self.validated() {
            format!(
                "val_loss {:.6} val_error {:.6} val_accuracy {:.6}",
                self.val_loss, self.val_error, self.val_accuracy
            )
        } else {
            "(no validation split)".to_string()
        };
        format!(
            "epoch {}/{epochs}: train_loss {:.6} {val} ({:.0} img/s)",
            self.epoch, self.train_loss, self.images_per_second
        )
    }

    /// The per-epoch MLflow metrics; a run without a validation split logs no validation ones.
    pub(crate) fn metrics(&self) -> Vec<(&'static str, f64)> {
        let all = [
            ("loss", self.train_loss),
            ("val_loss", self.val_loss),
            ("error", self.val_error),
            ("accuracy", self.val_accuracy),
            ("lr", self.lr),
            ("epoch_seconds", self.seconds),
            ("images_per_second", self.images_per_second),
        ];
        let validated = self.validated();
        all.into_iter().filter(|(k, _)| validated || !matches!(*k, "val_loss" | "error" | "accuracy")).collect()
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub run_id: String,
    /// A file store path (absolute) or a server URI.
    pub tracking_uri: String,
    pub experiment_id: String,
    pub best_dir: PathBuf,
    pub last_dir: PathBuf,
    pub best: EpochStats,
    pub epochs: Vec<EpochStats>,
    pub device: Device,
    /// Training seconds over all epochs (all processes, for a resumed run).
    pub seconds: f64,
}

impl TrainReport {
    /// Mean training throughput over the epochs.
    pub fn images_per_second(&self) -> f64 {
        self.epochs.iter().map(|e| e.images_per_second).sum::<f64>() / self.epochs.len().max(1) as f64
    }
}

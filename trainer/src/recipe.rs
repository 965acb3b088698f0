//! Training recipes: every hyperparameter of a run in one serialisable struct, filled from
//! `--recipe seed|strong` and overridden flag by flag. The resolved struct is what is logged
//! as MLflow params and saved beside the checkpoint (`train_config.json`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainerError};
pub use crate::optim::OptimizerKind;
use crate::optim::DEFAULT_BETA1;

/// A named set of defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// The seed project: Adam 1e-3, lr x0.75 per epoch, batch 64, no augmentation.
    Seed,
    /// Random affine augmentation, AdamW with a one-cycle schedule stepped per batch, label
    /// smoothing 0.1, an EMA of the weights (evaluated and checkpointed).
    Strong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr x --lr-decay after each epoch (the seed project's).
    Step,
    /// torch's OneCycleLR (cosine up for --warmup of the steps from lr/25, then down to lr/25e4), per batch.
    Onecycle,
    /// Linear warm-up for --warmup of the steps, then cosine to 0, per batch.
    Cosine,
}

/// Which epoch's weights a run's `best/` checkpoint holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The epoch with the best validation accuracy: chosen on the split that then reports it.
    #[default]
    Best,
    /// The last epoch: a fixed-length recipe, nothing chosen on the validation split.
    Last,
}

/// Every hyperparameter of a run. Field names are the MLflow param names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub recipe: Recipe,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Learning rate of the first epoch (step) or peak learning rate (onecycle, cosine).
    pub lr: f64,
    pub schedule: Schedule,
    /// Factor per epoch of the step schedule.
    pub lr_decay: f64,
    /// Share of all steps spent warming up (onecycle, cosine).
    pub warmup: f64,
    /// One-cycle also cycles Adam's beta1 against the learning rate, 0.95 -> 0.85 -> 0.95
    /// (torch's `cycle_momentum`, on by default there); off: beta1 stays 0.9 (configs saved
    /// before it existed).
    #[serde(default)]
    pub cycle_momentum: bool,
    /// Applied to weights of 2 or more dimensions only (not to biases and BatchNorm).
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Decay of the exponential moving average of the weights; 0 = no EMA.
    pub ema_decay: f64,
    /// Random affine augmentation of the training batches on the training device.
    pub augment: bool,
    /// Largest rotation, degrees (uniform in [-rotation, rotation]).
    pub rotation: f64,
    /// Largest shift, pixels, per axis.
    pub translate: f64,
    /// Largest relative zoom: scale uniform in [1 - scale, 1 + scale].
    pub scale: f64,
    /// Elastic distortion strength α, pixels; 0 = none (configs saved before it had none).
    #[serde(default)]
    pub elastic: f64,
    /// Smoothing of the elastic distortion field (Gaussian σ), pixels.
    #[serde(default = "default_elastic_sigma")]
    pub elastic_sigma: f64,
    pub val_fraction: f64,
    /// Seed of the train/validation split; kept apart from `seed` so that models trained with
    /// different seeds (an ensemble) all hold out the same images.
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// Seed of the shuffling, the augmentation and the weight initialisation.
    pub seed: u64,
    pub in_channels: usize,
    /// bf16 autocast.
    pub amp: bool,
    /// Which epoch `best/` holds (configs saved before it existed kept the best).
    #[serde(default)]
    pub keep: Keep,
}

fn default_split_seed() -> u64 {
    data::SPLIT_SEED
}

fn default_elastic_sigma() -> f64 {
    crate::augment::DEFAULT_ELASTIC_SIGMA
}

impl Hyper {
    pub fn new(recipe: Recipe) -> Hyper {
        let seed = Hyper {
            recipe,
            epochs: 1,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            schedule: Schedule::Step,
            lr_decay: 0.75,
            warmup: 0.0,
            cycle_momentum: false,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            ema_decay: 0.0,
            augment: false,
            rotation: 12.0,
            translate: 2.5,
            scale: 0.1,
            elastic: 0.0,
            elastic_sigma: default_elastic_sigma(),
            val_fraction: data::VAL_FRACTION,
            split_seed: data::SPLIT_SEED,
            seed: 42,
            in_channels: 1,
            amp: false,
            keep: Keep::Best,
        };
        match recipe {
            Recipe::Seed => seed,
            Recipe::Strong => Hyper {
                optimizer: OptimizerKind::Adamw,
                lr: 3e-3,
                schedule: Schedule::Onecycle,
                lr_decay: 1.0,
                warmup: 0.25,
                weight_decay: 0.05,
                label_smoothing: 0.1,
                ema_decay: 0.999,
                augment: true,
                ..seed
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Config(m));
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrainerError::Config(format!("--{name} must be a positive number, got {v}")))
            }
        };
        let in_unit = |name: &str, v: f64, hi_open: bool| {
            let ok = v >= 0.0 && if hi_open { v < 1.0 } else { v <= 1.0 };
            if ok {
                Ok(())
            } else {
                Err(TrainerError::Config(format!(
                    "--{name} must be in [0, 1{}, got {v}",
                    if hi_open { ")" } else { "]" }
                )))
            }
        };
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!(
                "--batch-size must be at least 2 (BatchNorm needs 2 samples), got {}",
                self.batch_size
            ));
        }
        positive("lr", self.lr)?;
        positive("lr-decay", self.lr_decay)?;
        in_unit("warmup", self.warmup, true)?;
        if self.cycle_momentum && self.schedule != Schedule::Onecycle {
            return bad(
                "--cycle-momentum cycles Adam's beta1 with the onecycle schedule: add --schedule onecycle".into()
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("--weight-decay must be 0 or more, got {}", self.weight_decay));
        }
        in_unit("label-smoothing", self.label_smoothing, true)?;
        in_unit("ema-decay", self.ema_decay, true)?;
        if !(0.0..=180.0).contains(&self.rotation) {
            return bad(format!("--rotation must be in [0, 180] degrees, got {}", self.rotation));
        }
        if !(0.0..=14.0).contains(&self.translate) {
            return bad(format!("--translate must be in [0, 14] pixels, got {}", self.translate));
        }
        if !(0.0..0.9).contains(&self.scale) {
            return bad(format!("--scale must be in [0, 0.9), got {}", self.scale));
        }
        if !(0.0..=100.0).contains(&self.elastic) {
            return bad(format!("--elastic must be in [0, 100] pixels, got {}", self.elastic));
        }
        if !(self.elastic_sigma > 0.0 && self.elastic_sigma <= 20.0) {
            return bad(format!("--elastic-sigma must be in (0, 20] pixels, got {}", self.elastic_sigma));
        }
        if !(self.val_fraction >= 0.0 && self.val_fraction < 1.0) {
            return bad(format!("--val-fraction must be in [0, 1), got {}", self.val_fraction));
        }
        if self.val_fraction == 0.0 && self.keep != Keep::Last {
            return bad(
                "--val-fraction 0 trains on every image and leaves none to pick the best epoch on: add --keep last"
                    .into(),
            );
        }
        Ok(())
    }

    /// `(name, value)` of every field, as logged to MLflow (JSON scalars without quotes).
    pub fn params(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("plain data serialises");
        let map = value.as_object().expect("a struct serialises to an object");
        map.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), String::from))).collect()
    }

    /// Learning rate at optimiser step `step` (0-based) of `total` steps, `epoch` 1-based.
    pub fn lr_at(&self, epoch: usize, step: usize, total: usize) -> f64 {
        match self.schedule {
            Schedule::Step => self.lr * self.lr_decay.powi(epoch as i32 - 1),
            Schedule::Onecycle => {
                // torch.optim.lr_scheduler.OneCycleLR with its defaults (div_factor 25,
                // final_div_factor 1e4, cos annealing, three_phase false).
                let initial = self.lr / 25.0;
                let min = initial / 1e4;
                match self.onecycle_phase(step, total) {
                    (true, pct) => cos_anneal(initial, self.lr, pct),
                    (false, pct) => cos_anneal(self.lr, min, pct),
                }
            }
            Schedule::Cosine => {
                let warm = (self.warmup * total as f64).floor();
                let s = step as f64;
                if s < warm {
                    self.lr * (s + 1.0) / warm
                } else {
                    cos_anneal(self.lr, 0.0, (s - warm) / (total as f64 - warm).max(1.0))
                }
            }
        }
    }

    /// Adam's beta1 at optimiser step `step` of `total`: with `cycle_momentum`, OneCycleLR's
    /// default max_momentum 0.95 down to base_momentum 0.85 while the learning rate rises, and
    /// back up while it falls; else torch's default 0.9.
    pub fn beta1_at(&self, step: usize, total: usize) -> f64 {
        const MAX: f64 = 0.95;
        const BASE: f64 = 0.85;
        if !(self.cycle_momentum && self.schedule == Schedule::Onecycle) {
            return DEFAULT_BETA1;
        }
        match self.onecycle_phase(step, total) {
            (true, pct) => cos_anneal(MAX, BASE, pct),
            (false, pct) => cos_anneal(BASE, MAX, pct),
        }
    }

    /// OneCycleLR's two phases: (warming up, share of the phase done) at `step` of `total`.
    fn onecycle_phase(&self, step: usize, total: usize) -> (bool, f64) {
        let up_end = self.warmup * total as f64 - 1.0;
        let down_end = total as f64 - 1.0;
        let s = step as f64;
        if up_end > 0.0 && s <= up_end {
            (true, s / up_end)
        } else {
            (false, (s - up_end) / (down_end - up_end))
        }
    }
}

/// Cosine from `start` (pct 0) to `end` (pct 1), torch's `_annealing_cos`.
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * (1.0 + (std::f64::consts::PI * pct).cos())
}

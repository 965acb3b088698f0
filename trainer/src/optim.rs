//! Adam / AdamW and the weight EMA, written with tch tensor ops so that their state (moments,
//! step count, averaged weights) can be checkpointed and restored; tch's `COptimizer` keeps
//! its moments inside libtorch, out of reach. The update is torch.optim.Adam's single-tensor
//! algorithm operation for operation (checked against torch in tests/optim_reference.rs).

use models::ParamKind;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::net::{Model, Net};
use crate::recipe::OptimizerKind;

/// One optimised tensor and its Adam moments.
struct Slot {
    name: String,
    param: Tensor,
    /// Weight decay applies to it (weights, not biases or BatchNorm affine parameters).
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// torch's default Adam beta1, which one-cycle's momentum cycling varies.
pub const DEFAULT_BETA1: f64 = 0.9;

/// Adam or AdamW (betas 0.9/0.999, eps 1e-8, torch's defaults).
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken (torch's `state["step"]`).
    step: i64,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.kind)
            .field("lr", &self.lr)
            .field("weight_decay", &self.weight_decay)
            .field("step", &self.step)
            .field("tensors", &self.slots.len())
            .finish()
    }
}

impl Optimizer {
    /// Over `(name, tensor, apply weight decay)`; the tensors must require grad.
    pub fn new(kind: OptimizerKind, lr: f64, weight_decay: f64, params: Vec<(String, Tensor, bool)>) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, param, decay)| {
                let zeros = || param.f_zeros_like().map_err(TrainerError::torch(format!("Adam state of {name}")));
                Ok(Slot { exp_avg: zeros()?, exp_avg_sq: zeros()?, name, param, decay })
            })
            .collect::<Result<_>>()?;
        Ok(Optimizer { kind, lr, weight_decay, beta1: DEFAULT_BETA1, beta2: 0.999, eps: 1e-8, step: 0, slots })
    }

    /// Over the trainable tensors of `net`; weight decay only on tensors of 2+ dimensions.
    pub fn for_net(net: &Net, kind: OptimizerKind, lr: f64, weight_decay: f64) -> Result<Self> {
        let params = net
            .params()
            .iter()
            .filter(|(spec, _)| spec.kind == ParamKind::Trainable)
            .map(|(spec, t)| (spec.name.clone(), t.shallow_clone(), spec.shape.len() > 1))
            .collect();
        Optimizer::new(kind, lr, weight_decay, params)
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Adam's beta1 from the next step on (one-cycle's momentum cycling); its bias correction
    /// uses the current value, as torch's does.
    pub fn set_beta1(&mut self, beta1: f64) {
        self.beta1 = beta1;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One update from the gradients in the tensors' `.grad`.
    pub fn step(&mut self) -> Result<()> {
        self.step += 1;
        let (b1, b2, lr, wd) = (self.beta1, self.beta2, self.lr, self.weight_decay);
        let bias_correction1 = 1.0 - b1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias_correction1;
        let kind = self.kind;
        let eps = self.eps;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                (|| -> Result<(), tch::TchError> {
                    let grad = match kind {
                        OptimizerKind::Adam if s.decay && wd != 0.0 => grad.f_add(&s.param.f_mul_scalar(wd)?)?,
                        OptimizerKind::Adamw if s.decay && wd != 0.0 => {
                            let _ = s.param.f_mul_scalar_(1.0 - lr * wd)?;
                            grad
                        }
                        _ => grad,
                    };
                    let _ = s.exp_avg.f_lerp_(&grad, 1.0 - b1)?;
                    let _ = s.exp_avg_sq.f_mul_scalar_(b2)?;
                    let _ = s.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - b2)?, &grad)?;
                    let mut denom = s.exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
                    let _ = denom.f_add_scalar_(eps)?;
                    let _ = s.param.f_addcdiv_(&s.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
                    Ok(())
                })()
                .map_err(TrainerError::torch(format!("optimizer step on {}", s.name)))?;
            }
            Ok(())
        })
    }

    /// The moments as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()),
                    (format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores what [`Optimizer::state_tensors`] saved plus the step count.
    pub fn restore(&mut self, step: i64, mut lookup: impl FnMut(&str) -> Option<Tensor>) -> Result<()> {
        for s in &mut self.slots {
            for (prefix, dst) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                let key = format!("{prefix}.{}", s.name);
                let src = lookup(&key).ok_or_else(|| TrainerError::Config(format!("optimizer state has no {key}")))?;
                tch::no_grad(|| dst.f_copy_(&src)).map_err(TrainerError::torch(format!("restoring {key}")))?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Exponential moving average of a network's weights, in a second network of the same
/// architecture that can be evaluated and checkpointed like the first. BatchNorm running
/// statistics are copied, not averaged (they already are averages).
#[derive(Debug)]
pub struct Ema {
    pub model: Model,
    decay: f64,
    updates: u64,
}

impl Ema {
    /// Starts as a copy of `net`.
    pub fn new(net: &Net, decay: f64, device: Device) -> Result<Ema> {
        let model = Model::new(net.config(), device)?;
        let ema = Ema { model, decay, updates: 0 };
        ema.copy_all(net)?;
        Ok(ema)
    }

    pub fn net(&self) -> &Net {
        &self.model.net
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn set_updates(&mut self, n: u64) {
        self.updates = n;
    }

    fn copy_all(&self, net: &Net) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for ((spec, dst), (_, src)) in self.model.net.params().iter().zip(net.params()) {
                dst.shallow_clone().f_copy_(src).map_err(TrainerError::torch(format!("EMA copy of {}", spec.name)))?;
            }
            Ok(())
        })
    }

    /// After an optimiser step. The effective decay ramps up as min(decay, (1+n)/(10+n)) so
    /// that a short run is not dominated by the random initialisation.
    pub fn update(&mut self, net: &Net) -> Result<()> {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        tch::no_grad(|| -> Result<()> {
            for ((spec, dst), (_, src)) in self.model.net.params().iter().zip(net.params()) {
                let mut dst = dst.shallow_clone();
                let r = if spec.kind == ParamKind::Trainable {
                    dst.f_lerp_(src, 1.0 - d).map(drop)
                } else {
                    dst.f_copy_(src)
                };
                r.map_err(TrainerError::torch(format!("EMA update of {}", spec.name)))?;
            }
            Ok(())
        })
    }
}

/// Mean cross-entropy of `logits` against class indices with label smoothing, as
/// `torch.nn.functional.cross_entropy(..., label_smoothing=s)`.
pub fn smoothed_cross_entropy(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor, tch::TchError> {
    logits.f_to_kind(Kind::Float)?.f_cross_entropy_loss(targets, None::<&Tensor>, tch::Reduction::Mean, -100, smoothing)
}

//! Random affine augmentation of a whole batch at once on the training device: one
//! `affine_grid` + bilinear `grid_sample` (zeros outside, the digits' black background), so it
//! costs a small fraction of a training step and never starves the model.

use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};

/// Ranges of the random transform; each image draws its own, uniformly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Largest rotation, degrees.
    pub rotation: f64,
    /// Largest shift per axis, pixels.
    pub translate: f64,
    /// Largest relative zoom.
    pub scale: f64,
}

impl Affine {
    /// `x` `[N, C, H, W]` float, transformed; draws from torch's RNG on `x`'s device.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        (|| -> Result<Tensor, tch::TchError> {
            let size = x.size();
            let (n, h, w) = (size[0], size[2] as f64, size[3] as f64);
            let u = Tensor::f_rand([4, n], (Kind::Float, x.device()))?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
            let angle = u.f_get(0)?.f_mul_scalar(self.rotation.to_radians())?;
            let inv_scale = u.f_get(1)?.f_mul_scalar(self.scale)?.f_add_scalar(1.0)?.f_reciprocal()?;
            // With align_corners=false a pixel is 2/W wide in grid coordinates.
            let tx = u.f_get(2)?.f_mul_scalar(self.translate * 2.0 / w)?;
            let ty = u.f_get(3)?.f_mul_scalar(self.translate * 2.0 / h)?;
            let (cos, sin) = (angle.f_cos()?.f_mul(&inv_scale)?, angle.f_sin()?.f_mul(&inv_scale)?);
            // theta maps output to input coordinates: [[cos, -sin, tx], [sin, cos, ty]] / scale.
            let theta = Tensor::f_stack(&[&cos, &sin.f_neg()?, &tx, &sin, &cos, &ty], 1)?.f_view([n, 2, 3])?;
            let grid = Tensor::f_affine_grid_generator(&theta, size.as_slice(), false)?;
            // interpolation 0 = bilinear, padding 0 = zeros.
            x.f_grid_sampler(&grid, 0, 0, false)
        })()
        .map_err(TrainerError::torch("augmenting a batch"))
    }
}

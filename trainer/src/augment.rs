//! Random augmentation of a whole batch at once on the training device: an affine transform,
//! optionally plus an elastic distortion (Simard et al. 2003), turned into one sampling grid and
//! applied by one bilinear `grid_sample` (zeros outside, the digits' black background), so it
//! costs a small fraction of a training step and never starves the model.

use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};

/// Smoothing σ of the elastic field when none is given: Simard et al.'s, in pixels.
pub const DEFAULT_ELASTIC_SIGMA: f64 = 4.0;

/// Ranges of the random transform; each image draws its own, uniformly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Largest rotation, degrees.
    pub rotation: f64,
    /// Largest shift per axis, pixels.
    pub translate: f64,
    /// Largest relative zoom.
    pub scale: f64,
    /// Elastic distortion: strength α in pixels, 0 for none. Each pixel moves by α times a
    /// uniform(-1, 1) noise field smoothed by a Gaussian of `elastic_sigma` pixels (Simard's
    /// α = 34, σ = 4 moves pixels by ~1 px per axis on average, 1.2 px RMS, neighbours alike).
    pub elastic: f64,
    /// Standard deviation of the smoothing Gaussian, pixels.
    pub elastic_sigma: f64,
}

impl Augment {
    /// Affine only.
    pub fn affine(rotation: f64, translate: f64, scale: f64) -> Augment {
        Augment { rotation, translate, scale, elastic: 0.0, elastic_sigma: DEFAULT_ELASTIC_SIGMA }
    }

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
            let mut grid = Tensor::f_affine_grid_generator(&theta, size.as_slice(), false)?;
            if self.elastic > 0.0 {
                grid = grid.f_add(&self.displacement(n, size[2], size[3], x.device())?)?;
            }
            // interpolation 0 = bilinear, padding 0 = zeros.
            x.f_grid_sampler(&grid, 0, 0, false)
        })()
        .map_err(TrainerError::torch("augmenting a batch"))
    }

    /// Elastic displacement `[N, H, W, 2]` (x, y) in grid units: uniform noise per image and
    /// axis, blurred by a separable Gaussian (zero padding: the border barely moves, which is
    /// background anyway), scaled by α pixels.
    fn displacement(&self, n: i64, h: i64, w: i64, device: tch::Device) -> Result<Tensor, tch::TchError> {
        let radius = (3.0 * self.elastic_sigma).ceil() as i64;
        let taps: Vec<f32> =
            (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * self.elastic_sigma.powi(2))).exp() as f32).collect();
        let sum: f32 = taps.iter().sum();
        let kernel = Tensor::from_slice(&taps).f_div_scalar(sum as f64)?.f_to_device(device)?;
        let len = kernel.size()[0];
        let noise = Tensor::f_rand([n * 2, 1, h, w], (Kind::Float, device))?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        let none = None::<Tensor>;
        let blurred = noise
            .f_conv2d(&kernel.f_view([1, 1, 1, len])?, none.as_ref(), [1, 1], [0, radius], [1, 1], 1)?
            .f_conv2d(&kernel.f_view([1, 1, len, 1])?, none.as_ref(), [1, 1], [radius, 0], [1, 1], 1)?;
        // Pixels to grid units (2/W per pixel along x, 2/H along y), channels last as the grid.
        let to_grid =
            Tensor::from_slice(&[(self.elastic * 2.0 / w as f64) as f32, (self.elastic * 2.0 / h as f64) as f32])
                .f_to_device(device)?;
        blurred.f_view([n, 2, h, w])?.f_permute([0, 2, 3, 1])?.f_mul(&to_grid)
    }
}

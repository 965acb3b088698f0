//! Adam / AdamW and the weight EMA, written with tch tensor ops so that their state (moments,
//! step count, averaged weights) can be checkpointed and restored; tch's `COptimizer` keeps
//! its moments inside libtorch, out of reach. The update is torch.optim.Adam's single-tensor
//! algorithm operation for operation (checked against torch in tests/optim_reference.rs).
//!
//! On the CPU the same arithmetic also runs as one fused pass per tensor ([`fused`]): libtorch's
//! single-tensor algorithm is nine element-wise kernels, most of them allocating a temporary,
//! which made the optimiser a large share of a resnet18 step on 28×28 images.

use models::graph::KernelCrop;
use models::ParamKind;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::net::{Model, Net};

/// Which update rule. Defined here, not in [`crate::recipe`], so that the recipe depends on the
/// optimiser and not the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// torch.optim.Adam (weight decay added to the gradient).
    Adam,
    /// torch.optim.AdamW (decoupled weight decay).
    Adamw,
}

/// One optimised tensor and its Adam moments.
struct Slot {
    name: String,
    param: Tensor,
    /// Weight decay applies to it (weights, not biases or BatchNorm affine parameters).
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The kernel taps of a convolution weight that can get a nonzero gradient, where the net
    /// computes a cropped kernel ([`Net::live_taps`]); the others' update is exactly nothing.
    live: Option<KernelCrop>,
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
    /// The fused CPU update's square roots (as many elements as the largest tensor), allocated
    /// at the first step that needs it.
    scratch: Option<Tensor>,
    /// libtorch's own optimiser over the same tensors, never stepped: its `zero_grad` sets the
    /// gradients to none (torch's default), which tch cannot do otherwise. The next backward
    /// then hands its gradients over instead of adding them to zeroed ones, saving a fill and an
    /// add over every parameter per step. `None` where libtorch refused it: gradients are zeroed.
    clear: Option<tch::COptimizer>,
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
                Ok(Slot { exp_avg: zeros()?, exp_avg_sq: zeros()?, name, param, decay, live: None })
            })
            .collect::<Result<Vec<_>>>()?;
        let clear = (|| -> Result<tch::COptimizer, tch::TchError> {
            let mut c = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
            for s in &slots {
                c.add_parameters(&s.param, 0)?;
            }
            Ok(c)
        })()
        .ok();
        Ok(Optimizer {
            kind,
            lr,
            weight_decay,
            beta1: DEFAULT_BETA1,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            slots,
            scratch: None,
            clear,
        })
    }

    /// Over the trainable tensors of `net`; weight decay only on tensors of 2+ dimensions.
    pub fn for_net(net: &Net, kind: OptimizerKind, lr: f64, weight_decay: f64) -> Result<Self> {
        let params = net
            .params()
            .iter()
            .filter(|(spec, _)| spec.kind == ParamKind::Trainable)
            .map(|(spec, t)| (spec.name.clone(), t.shallow_clone(), spec.shape.len() > 1))
            .collect();
        let mut opt = Optimizer::new(kind, lr, weight_decay, params)?;
        opt.skip_dead_taps(net, true);
        Ok(opt)
    }

    /// Whether steps skip the kernel taps that a cropped convolution never reads (on by
    /// default for [`Optimizer::for_net`]). Their gradient is exactly 0, and Adam's update of a
    /// zero gradient with zero moments and no weight decay leaves the parameter and both
    /// moments exactly as they are: skipping them changes no bit. resnet18 at 28x28 has 6.5 M
    /// of its 11.2 M weights in such taps.
    pub fn skip_dead_taps(&mut self, net: &Net, on: bool) {
        let live = if on { net.live_taps() } else { Default::default() };
        for s in &mut self.slots {
            s.live = live.get(s.name.as_str()).copied();
        }
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

    /// Clears the gradients before a backward pass: sets them to none as torch's
    /// `zero_grad()` does (to zeros where that is unavailable; the update is the same).
    pub fn zero_grad(&mut self) {
        if self.clear.as_ref().is_some_and(|c| c.zero_grad().is_ok()) {
            return;
        }
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One update from the gradients in the tensors' `.grad`.
    pub fn step(&mut self) -> Result<()> {
        self.step += 1;
        let k = StepScalars::new(self);
        let fused_ok = fused::usable();
        let largest = self.slots.iter().map(|s| s.param.numel()).max().unwrap_or(0) as i64;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let decay = s.decay && k.weight_decay != 0.0;
                let torch = || TrainerError::torch(format!("optimizer step on {}", s.name));
                if fused_ok && fused::eligible(&[&s.param, &grad, &s.exp_avg, &s.exp_avg_sq]) {
                    // The taps' positions assume the contiguous [O, I, kh, kw] layout.
                    if let (Some(live), false, true) = (s.live, decay, s.param.is_contiguous()) {
                        update_live(s, &grad, live, &mut self.scratch, largest, &k.consts(decay)).map_err(torch())?;
                        continue;
                    }
                    let scratch = scratch_of(&mut self.scratch, largest, s.param.numel() as i64).map_err(torch())?;
                    fused::update(&s.param, &grad, &s.exp_avg, &s.exp_avg_sq, &scratch, &k.consts(decay))
                        .map_err(torch())?;
                    continue;
                }
                update_ops(&mut s.param, grad, &mut s.exp_avg, &mut s.exp_avg_sq, &k, decay).map_err(torch())?;
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

/// The first `n` elements of the optimiser's scratch, allocated (`largest` elements, enough for
/// every tensor) on first use.
fn scratch_of(scratch: &mut Option<Tensor>, largest: i64, n: i64) -> Result<Tensor, tch::TchError> {
    if scratch.as_ref().is_none_or(|t| (t.numel() as i64) < n) {
        *scratch = Some(Tensor::f_empty([largest], (Kind::Float, Device::Cpu))?);
    }
    scratch.as_ref().expect("allocated above").f_narrow(0, 0, n)
}

/// The fused update of the `live` taps of `s` alone: gathered into contiguous copies, updated,
/// written back (the other taps' update is exactly nothing, see
/// [`Optimizer::skip_dead_taps`]). The copies are plain loops: libtorch's strided copies of
/// one-element runs cost more than the update they save.
fn update_live(
    s: &Slot,
    grad: &Tensor,
    live: KernelCrop,
    scratch: &mut Option<Tensor>,
    largest: i64,
    c: &fused::Consts,
) -> Result<(), tch::TchError> {
    let size = s.param.size();
    let &[_, _, kh, kw] = size.as_slice() else {
        return Err(tch::TchError::Shape(format!("{}: live taps on a {size:?} tensor", s.name)));
    };
    let taps = fused::Taps::new(live, [kh as usize, kw as usize], s.param.numel());
    let n = taps.count() as i64;
    let scratch = scratch_of(scratch, largest, n)?;
    let full = [&s.param, grad, &s.exp_avg, &s.exp_avg_sq];
    let compact = full.map(|_| Tensor::f_empty([n], (Kind::Float, Device::Cpu)));
    let compact = compact.into_iter().collect::<Result<Vec<_>, _>>()?;
    fused::gather(&taps, &full.iter().copied().zip(&compact).collect::<Vec<_>>());
    fused::update(&compact[0], &compact[1], &compact[2], &compact[3], &scratch, c)?;
    fused::scatter(&taps, &[0, 2, 3].map(|i| (&compact[i], full[i])));
    Ok(())
}

/// The scalars of one step, in f64 as the libtorch ops path passes them.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    kind: OptimizerKind,
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias_correction2_sqrt: f64,
    step_size: f64,
}

impl StepScalars {
    /// For step `opt.step` (1-based), with the current lr and beta1.
    fn new(opt: &Optimizer) -> StepScalars {
        let (b1, b2) = (opt.beta1, opt.beta2);
        let bias_correction1 = 1.0 - b1.powi(opt.step as i32);
        StepScalars {
            kind: opt.kind,
            lr: opt.lr,
            weight_decay: opt.weight_decay,
            beta1: b1,
            beta2: b2,
            eps: opt.eps,
            bias_correction2_sqrt: (1.0 - b2.powi(opt.step as i32)).sqrt(),
            step_size: opt.lr / bias_correction1,
        }
    }

    /// The same scalars as libtorch's float kernels see them (each rounded to f32 once).
    fn consts(&self, decay: bool) -> fused::Consts {
        let wd = if decay { self.weight_decay } else { 0.0 };
        fused::Consts {
            decoupled: (self.kind == OptimizerKind::Adamw && wd != 0.0).then_some((1.0 - self.lr * wd) as f32),
            coupled: (self.kind == OptimizerKind::Adam && wd != 0.0).then_some(wd as f32),
            weight: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            bias_correction2_sqrt: self.bias_correction2_sqrt as f32,
            eps: self.eps as f32,
            neg_step_size: (-self.step_size) as f32,
        }
    }
}

/// One tensor's update with libtorch ops: torch.optim.Adam's single-tensor algorithm. The
/// reference the fused kernel must reproduce, and the path on a GPU.
fn update_ops(
    param: &mut Tensor,
    grad: Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    k: &StepScalars,
    decay: bool,
) -> Result<(), tch::TchError> {
    let (b1, b2, wd) = (k.beta1, k.beta2, k.weight_decay);
    let grad = match k.kind {
        OptimizerKind::Adam if decay => grad.f_add(&param.f_mul_scalar(wd)?)?,
        OptimizerKind::Adamw if decay => {
            let _ = param.f_mul_scalar_(1.0 - k.lr * wd)?;
            grad
        }
        _ => grad,
    };
    let _ = exp_avg.f_lerp_(&grad, 1.0 - b1)?;
    let _ = exp_avg_sq.f_mul_scalar_(b2)?;
    let _ = exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - b2)?, &grad)?;
    let mut denom = exp_avg_sq.f_sqrt()?.f_div_scalar(k.bias_correction2_sqrt)?;
    let _ = denom.f_add_scalar_(k.eps)?;
    let _ = param.f_addcdiv_(&exp_avg.f_mul_scalar(-k.step_size)?, &denom)?;
    Ok(())
}

/// The update of [`update_ops`] in two passes over a CPU parameter's f32 tensors around
/// libtorch's own square root, with no temporaries (libtorch's ops make 23 passes and allocate
/// four). Element for element it rounds exactly where libtorch's kernels round: each op once,
/// `lerp_` and `addcmul_` as one fused multiply-add each (libtorch's CPU kernels are compiled
/// with FMA contraction, in their vectorised bodies and scalar tails alike). The square root is
/// libtorch's (MKL's, not correctly rounded), called on the whole tensor as the ops do. Whether
/// all this holds for the libtorch and CPU at hand is checked once per process against the ops
/// ([`usable`]); where it does not, the ops run.
mod fused {
    use std::sync::OnceLock;

    use models::graph::KernelCrop;
    use tch::{Device, Kind, Tensor};

    /// The f32 scalars of one tensor's update.
    #[derive(Debug, Clone, Copy)]
    pub struct Consts {
        /// AdamW's `param *= 1 - lr * wd`.
        pub decoupled: Option<f32>,
        /// Adam's `grad += param * wd`.
        pub coupled: Option<f32>,
        /// lerp weight `1 - beta1`.
        pub weight: f32,
        pub beta2: f32,
        pub one_minus_beta2: f32,
        pub bias_correction2_sqrt: f32,
        pub eps: f32,
        pub neg_step_size: f32,
    }

    /// Below this many elements per thread a pass runs on the calling thread: spawning costs
    /// more than it saves.
    const PER_THREAD: usize = 1 << 16;

    /// Whether the fused update can run on these tensors: f32 on the CPU, all of one length,
    /// each contiguous or all dense in one and the same layout (channels-last weights, their
    /// gradients and moments): element-wise work reads them as flat arrays either way.
    pub fn eligible(tensors: &[&Tensor]) -> bool {
        let (n, size, stride) = (tensors[0].numel(), tensors[0].size(), tensors[0].stride());
        let same = tensors.iter().all(|t| t.size() == size && t.stride() == stride);
        tensors.iter().all(|t| {
            t.device() == Device::Cpu
                && t.kind() == Kind::Float
                && t.numel() == n
                && (t.is_contiguous() || (same && dense(&size, &stride)))
        })
    }

    /// Whether `stride` lays `size` out without gaps or overlaps (some permutation of a
    /// contiguous layout).
    fn dense(size: &[i64], stride: &[i64]) -> bool {
        let mut dims: Vec<(i64, i64)> =
            stride.iter().copied().zip(size.iter().copied()).filter(|&(_, d)| d != 1).collect();
        dims.sort_unstable();
        let mut expected = 1;
        for (st, d) in dims {
            if st != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Updates one parameter in place; `scratch` is a contiguous f32 CPU tensor of the same
    /// number of elements, overwritten. The tensors must be [`eligible`].
    pub fn update(
        param: &Tensor,
        grad: &Tensor,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
        scratch: &Tensor,
        c: &Consts,
    ) -> Result<(), tch::TchError> {
        assert!(
            eligible(&[param, grad, exp_avg, exp_avg_sq]) && eligible(&[scratch]) && scratch.is_contiguous(),
            "fused Adam on ineligible tensors"
        );
        assert_eq!(scratch.numel(), param.numel(), "fused Adam scratch");
        let n = param.numel();
        if n == 0 {
            return Ok(());
        }
        // SAFETY (both blocks): five distinct live tensors (a parameter, its gradient, two
        // moments created for it, the optimiser's scratch), each dense f32 of n elements, the
        // first four in one layout (`eligible`), all walked in memory order: the slices are
        // valid and disjoint while the tensors are borrowed here, and libtorch touches them
        // only in the sqrt call between the two blocks.
        let (p, g, m, v) =
            unsafe { (slice_mut(param, n), slice(grad, n), slice_mut(exp_avg, n), slice_mut(exp_avg_sq, n)) };
        let chunk = chunk_len(n);
        let parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk));
        in_parallel(parts.collect(), |(((p, g), m), v)| moments(c, p, g, m, v));
        // exp_avg_sq.sqrt(), through libtorch as the ops path calls it.
        // (Over its memory in order: the same elements as a channels-last tensor's sqrt.)
        let flat = exp_avg_sq.f_as_strided([n as i64], [1], None)?;
        let _ = flat.f_sqrt_out(&scratch.f_view([-1])?)?;
        let (p, m, sq) = unsafe { (slice_mut(param, n), slice(exp_avg, n), slice(scratch, n)) };
        let parts = p.chunks_mut(chunk).zip(m.chunks(chunk)).zip(sq.chunks(chunk));
        in_parallel(parts.collect(), |((p, m), sq)| apply(c, p, m, sq));
        Ok(())
    }

    /// The kept taps of a `[.., .., kh, kw]` kernel of `numel` elements, as runs of `len`
    /// elements starting at `first + r * row_stride + y * kw` for every row `r` and kept line `y`.
    pub struct Taps {
        numel: usize,
        rows: usize,
        row_stride: usize,
        lines: usize,
        kw: usize,
        first: usize,
        len: usize,
    }

    impl Taps {
        pub fn new(crop: KernelCrop, [kh, kw]: [usize; 2], numel: usize) -> Taps {
            let KernelCrop([h, w]) = crop;
            assert!(
                h.first + h.len <= kh && w.first + w.len <= kw && numel.is_multiple_of(kh * kw),
                "taps outside the kernel"
            );
            let row_stride = kh * kw;
            Taps {
                numel,
                rows: numel / row_stride,
                row_stride,
                lines: h.len,
                kw,
                first: h.first * kw + w.first,
                len: w.len,
            }
        }

        pub fn count(&self) -> usize {
            self.rows * self.lines * self.len
        }

        fn runs(&self) -> impl Iterator<Item = usize> + '_ {
            (0..self.rows)
                .flat_map(move |r| (0..self.lines).map(move |y| r * self.row_stride + y * self.kw + self.first))
        }
    }

    /// Copies the kept taps of each `full` (contiguous f32, CPU) into its `compact`
    /// (`taps.count()` elements), one tensor per thread.
    pub fn gather(taps: &Taps, pairs: &[(&Tensor, &Tensor)]) {
        copy_taps(taps, pairs, true);
    }

    /// The inverse of [`gather`]: writes each `compact` back into the kept taps of its `full`.
    pub fn scatter(taps: &Taps, pairs: &[(&Tensor, &Tensor)]) {
        copy_taps(taps, pairs, false);
    }

    /// `pairs` as (from, to): full to compact when `gathering`, else compact to full.
    fn copy_taps(taps: &Taps, pairs: &[(&Tensor, &Tensor)], gathering: bool) {
        let (from_len, to_len) = if gathering { (taps.numel, taps.count()) } else { (taps.count(), taps.numel) };
        for (from, to) in pairs {
            assert!(from.is_contiguous() && to.is_contiguous() && eligible(&[from]) && eligible(&[to]));
            assert!(from.numel() == from_len && to.numel() == to_len, "taps and tensors disagree");
        }
        // SAFETY: distinct contiguous f32 tensors of the checked lengths.
        let parts = pairs.iter().map(|(from, to)| unsafe { (slice(from, from_len), slice_mut(to, to_len)) });
        in_parallel(parts.collect(), |(src, dst)| {
            // Element by element: runs are one to three taps long, too short for memcpy.
            for (k, run) in taps.runs().enumerate() {
                let at = k * taps.len;
                for j in 0..taps.len {
                    if gathering {
                        dst[at + j] = src[run + j];
                    } else {
                        dst[run + j] = src[at + j];
                    }
                }
            }
        });
    }

    unsafe fn slice(t: &Tensor, n: usize) -> &[f32] {
        // SAFETY: the caller's.
        unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
    }

    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(t: &Tensor, n: usize) -> &mut [f32] {
        // SAFETY: the caller's.
        unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
    }

    /// Elements per part when `n` are split among libtorch's intra-op threads.
    fn chunk_len(n: usize) -> usize {
        let threads = (tch::get_num_threads().max(1) as usize).min(n / PER_THREAD).max(1);
        n.div_ceil(threads)
    }

    /// Runs `f` on every part, on at most libtorch's number of threads (a one-thread lane
    /// stays on one core), the first share on this thread (element-wise work: how it is split
    /// changes no result).
    fn in_parallel<T: Send>(parts: Vec<T>, f: impl Fn(T) + Sync) {
        let threads = (tch::get_num_threads().max(1) as usize).min(parts.len());
        if threads <= 1 {
            return parts.into_iter().for_each(f);
        }
        let mut shares: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, part) in parts.into_iter().enumerate() {
            shares[i % threads].push(part);
        }
        let mut shares = shares.into_iter();
        let first = shares.next().unwrap_or_default();
        std::thread::scope(|scope| {
            for share in shares {
                let f = &f;
                scope.spawn(move || share.into_iter().for_each(f));
            }
            first.into_iter().for_each(&f);
        });
    }

    /// Whether this CPU has FMA and the kernel reproduces libtorch's ops bit for bit here.
    pub fn usable() -> bool {
        static USABLE: OnceLock<bool> = OnceLock::new();
        *USABLE.get_or_init(|| has_fma() && super::fused_matches_ops())
    }

    #[cfg(target_arch = "x86_64")]
    pub fn has_fma() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn has_fma() -> bool {
        false
    }

    /// Decay, `exp_avg` and `exp_avg_sq`.
    fn moments(c: &Consts, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reached only once `usable()` found AVX2 and FMA (the probe runs after that check).
        unsafe {
            moments_fma(c, p, g, m, v)
        }
        #[cfg(not(target_arch = "x86_64"))]
        moments_generic(c, p, g, m, v)
    }

    /// The parameter from `exp_avg` and `sqrt(exp_avg_sq)`.
    fn apply(c: &Consts, p: &mut [f32], m: &[f32], sq: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `moments`.
        unsafe {
            apply_fma(c, p, m, sq)
        }
        #[cfg(not(target_arch = "x86_64"))]
        apply_generic(c, p, m, sq)
    }

    /// Compiled for AVX2 + FMA: vectorised, each `mul_add` one instruction.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn moments_fma(c: &Consts, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        moments_generic(c, p, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply_fma(c: &Consts, p: &mut [f32], m: &[f32], sq: &[f32]) {
        apply_generic(c, p, m, sq)
    }

    /// One loop per case, so that it has no branches and vectorises.
    #[inline(always)]
    fn moments_generic(c: &Consts, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let small = c.weight.abs() < 0.5;
        match (c.decoupled, c.coupled, small) {
            (Some(d), _, true) => moments_case::<true, false, true>(c, d, 0.0, p, g, m, v),
            (Some(d), _, false) => moments_case::<true, false, false>(c, d, 0.0, p, g, m, v),
            (None, Some(wd), true) => moments_case::<false, true, true>(c, 1.0, wd, p, g, m, v),
            (None, Some(wd), false) => moments_case::<false, true, false>(c, 1.0, wd, p, g, m, v),
            (None, None, true) => moments_case::<false, false, true>(c, 1.0, 0.0, p, g, m, v),
            (None, None, false) => moments_case::<false, false, false>(c, 1.0, 0.0, p, g, m, v),
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn moments_case<const DECOUPLED: bool, const COUPLED: bool, const SMALL: bool>(
        c: &Consts,
        decoupled: f32,
        coupled: f32,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let mut grad = g;
            if DECOUPLED {
                *p *= decoupled; // param.mul_(1 - lr * wd)
            }
            if COUPLED {
                grad += *p * coupled; // grad.add(param.mul(wd))
            }
            // exp_avg.lerp_(grad, w): libtorch's lerp, one FMA on either side of |w| = 0.5.
            let diff = grad - *m;
            *m = if SMALL { c.weight.mul_add(diff, *m) } else { (c.weight - 1.0).mul_add(diff, grad) };
            // exp_avg_sq.mul_(b2).addcmul_(grad * (1 - b2), grad)
            *v = (grad * c.one_minus_beta2).mul_add(grad, *v * c.beta2);
        }
    }

    #[inline(always)]
    fn apply_generic(c: &Consts, p: &mut [f32], m: &[f32], sq: &[f32]) {
        for ((p, &m), &sq) in p.iter_mut().zip(m).zip(sq) {
            // denom = sqrt / bc2_sqrt + eps; param.addcdiv_(exp_avg * -step_size, denom)
            let denom = sq / c.bias_correction2_sqrt + c.eps;
            *p += (m * c.neg_step_size) / denom;
        }
    }
}

/// Runs both update paths over probe tensors for a few steps of every case (Adam with and
/// without coupled decay, AdamW, either lerp branch) and compares them bit for bit.
fn fused_matches_ops() -> bool {
    let same = fused_matches_ops_on(&[1037, 29]).unwrap_or(false);
    if !same {
        eprintln!("note: the fused CPU Adam kernel does not reproduce libtorch's ops bit for bit here; using the ops");
    }
    same
}

/// [`fused_matches_ops`] on tensors of `lengths` elements (with and without a vector tail).
/// Uses no random generator, so training's draws are untouched.
fn fused_matches_ops_on(lengths: &[usize]) -> Result<bool, tch::TchError> {
    let cases = [
        (OptimizerKind::Adam, 0.9, false),
        (OptimizerKind::Adam, 0.9, true),
        (OptimizerKind::Adamw, 0.95, true),
        (OptimizerKind::Adam, 0.3, true),
    ];
    for (kind, beta1, decay) in cases {
        for &n in lengths {
            let wave = |a: f64, b: f64, scale: f64| -> Vec<f32> {
                (0..n).map(|i| ((i as f64 * a + b).sin() * scale * 10f64.powi((i % 7) as i32 - 3)) as f32).collect()
            };
            let make = |v: Vec<f32>| Tensor::from_slice(&v);
            let (mut p_ops, mut m_ops, mut v_ops) = (make(wave(0.7, 0.1, 1.0)), make(vec![0.0; n]), make(vec![0.0; n]));
            let (p_fused, m_fused, v_fused) = (p_ops.copy(), m_ops.copy(), v_ops.copy());
            for step in 1..=3 {
                let grad = make(wave(1.3, step as f64, 0.1));
                let opt = Optimizer {
                    kind,
                    lr: 3e-3,
                    weight_decay: 0.05,
                    beta1,
                    beta2: 0.999,
                    eps: 1e-8,
                    step,
                    slots: Vec::new(),
                    scratch: None,
                    clear: None,
                };
                let k = StepScalars::new(&opt);
                update_ops(&mut p_ops, grad.copy(), &mut m_ops, &mut v_ops, &k, decay)?;
                let scratch = Tensor::f_empty([n as i64], (Kind::Float, Device::Cpu))?;
                fused::update(&p_fused, &grad, &m_fused, &v_fused, &scratch, &k.consts(decay))?;
            }
            for (a, b) in [(&p_ops, &p_fused), (&m_ops, &m_fused), (&v_ops, &v_fused)] {
                let (a, b) = (Vec::<f32>::try_from(a)?, Vec::<f32>::try_from(b)?);
                if a.iter().zip(&b).any(|(x, y)| x.to_bits() != y.to_bits()) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
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
        let mut model = Model::new(net.config(), device)?;
        // The same layout: the update runs on like-strided tensors, evaluation on the same kernels.
        model.net.set_channels_last(net.channels_last())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// On a CPU with FMA the fused update must be the one that runs, and it must equal libtorch's
    /// ops bit for bit, also on tensors large enough to be split among threads.
    #[test]
    fn fused_update_equals_libtorch_ops_bit_for_bit() {
        if !fused::has_fma() {
            eprintln!("no AVX2/FMA here: the ops run, nothing to compare");
            return;
        }
        tch::set_num_threads(2);
        assert!(fused::usable(), "the probe rejected the fused kernel on this machine");
        assert!(fused_matches_ops_on(&[300_001, 64, 1]).unwrap());
    }
}

//! Comparing numbers that must agree: a runtime's logits against a reference, one model at two
//! batch sizes.
//!
//! The obvious `a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)` is wrong:
//! `f32::max` returns the other operand when one is NaN, so an all-NaN output measures as "no
//! difference" and passes every tolerance. Here a NaN or an infinity on either side is a
//! [`Mismatch`] naming its index, and so is a length mismatch. Tolerances are named values
//! ([`Tolerance`]), in the spirit of tract's `Approximation`.

use std::fmt;

/// How far apart two slices may be: the largest |got - want| must be at most `abs` and at most
/// `rel` times the largest |want| (both bounds hold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// Two float32 runtimes (or a runtime and PyTorch) on one network: kernels that differ in
    /// summation order and fusion, nothing more.
    pub const RUNTIMES: Tolerance = Tolerance::abs(1e-4);
    /// [`Self::RUNTIMES`], and also within 1e-5 of the largest reference value: networks whose
    /// logits are near 0.1 (MobileNets at initialisation) would let a wrong activation through
    /// an absolute 1e-4 alone.
    pub const RUNTIMES_SCALED: Tolerance = Tolerance { abs: 1e-4, rel: 1e-5 };
    /// One runtime with other batch sizes or thread counts: kernel tiling, same maths.
    pub const SAME_RUNTIME: Tolerance = Tolerance::abs(1e-5);

    /// An absolute bound only.
    pub const fn abs(abs: f64) -> Tolerance {
        Tolerance { abs, rel: f64::INFINITY }
    }

    /// A bound relative to the largest reference value only.
    pub const fn rel(rel: f64) -> Tolerance {
        Tolerance { abs: f64::INFINITY, rel }
    }

    /// The largest difference allowed when the largest |reference value| is `scale`.
    pub fn allowed(&self, scale: f64) -> f64 {
        // An infinite `rel` means "no relative bound", also for a scale of 0 (inf * 0 is NaN).
        let rel = if self.rel == f64::INFINITY { f64::INFINITY } else { self.rel * scale };
        self.abs.min(rel)
    }
}

/// Why two slices do not agree.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// Not the same number of values.
    Length { got: usize, want: usize },
    /// A NaN or an infinity (on either side) agrees with nothing.
    NotFinite { index: usize, got: f64, want: f64 },
    /// Both finite, further apart than the tolerance allows.
    TooFar { index: usize, got: f64, want: f64, diff: f64, allowed: f64 },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Mismatch::Length { got, want } => write!(f, "{got} values where {want} were expected"),
            Mismatch::NotFinite { index, got, want } => {
                write!(f, "value {index} is not finite: got {got}, expected {want}")
            }
            Mismatch::TooFar { index, got, want, diff, allowed } => {
                write!(f, "value {index} differs by {diff:e} (got {got}, expected {want}); allowed {allowed:e}")
            }
        }
    }
}

impl std::error::Error for Mismatch {}

/// How close two slices of finite values are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The largest |got - want|.
    pub max_abs_diff: f64,
    /// Where it is (0 for empty slices).
    pub index: usize,
    /// The largest |want|, which a relative tolerance scales with.
    pub scale: f64,
}

impl Agreement {
    /// `self` when its largest difference is within `tol`.
    pub fn within(
        self,
        tol: Tolerance,
        got: &[impl Copy + Into<f64>],
        want: &[impl Copy + Into<f64>],
    ) -> Result<Agreement, Mismatch> {
        let allowed = tol.allowed(self.scale);
        if self.max_abs_diff <= allowed {
            return Ok(self);
        }
        let i = self.index;
        Err(Mismatch::TooFar { index: i, got: got[i].into(), want: want[i].into(), diff: self.max_abs_diff, allowed })
    }
}

/// The largest difference between `got` and `want` and the largest |want|, or the first value
/// that is NaN or infinite on either side, or a length mismatch.
pub fn compare<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B]) -> Result<Agreement, Mismatch> {
    if got.len() != want.len() {
        return Err(Mismatch::Length { got: got.len(), want: want.len() });
    }
    let mut a = Agreement { max_abs_diff: 0.0, index: 0, scale: 0.0 };
    for (index, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        if !(g.is_finite() && w.is_finite()) {
            return Err(Mismatch::NotFinite { index, got: g, want: w });
        }
        let d = (g - w).abs();
        if d > a.max_abs_diff {
            (a.max_abs_diff, a.index) = (d, index);
        }
        a.scale = a.scale.max(w.abs());
    }
    Ok(a)
}

/// The largest |got - want|, as [`compare`].
pub fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B]) -> Result<f64, Mismatch> {
    compare(got, want).map(|a| a.max_abs_diff)
}

/// [`compare`], then [`Agreement::within`] `tol`.
pub fn check<A: Copy + Into<f64>, B: Copy + Into<f64>>(
    got: &[A],
    want: &[B],
    tol: Tolerance,
) -> Result<Agreement, Mismatch> {
    compare(got, want)?.within(tol, got, want)
}

/// [`check`] for tests: panics with `what` and the [`Mismatch`] (which names the index).
#[track_caller]
pub fn assert_close<A: Copy + Into<f64>, B: Copy + Into<f64>>(
    got: &[A],
    want: &[B],
    tol: Tolerance,
    what: &str,
) -> Agreement {
    // A match, not unwrap_or_else: #[track_caller] does not reach into a closure.
    match check(got, want, tol) {
        Ok(a) => a,
        Err(e) => panic!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_this_replaces_passes_nan() {
        // Why this module exists: f32::max drops NaN, so all-NaN output "differs by 0".
        let nan = [f32::NAN; 3];
        let folded = nan.iter().zip(&[1f32, 2.0, 3.0]).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert_eq!(folded, 0.0);
        assert!(matches!(max_abs_diff(&nan, &[1f32, 2.0, 3.0]), Err(Mismatch::NotFinite { index: 0, .. })));
    }

    #[test]
    fn nan_or_infinity_on_either_side_names_its_index() {
        let want = [1f32, 2.0, 3.0];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut got = want;
            got[2] = bad;
            for (g, w) in [(&got, &want), (&want, &got)] {
                match compare(g, w) {
                    Err(Mismatch::NotFinite { index: 2, .. }) => {}
                    other => panic!("{bad}: {other:?}"),
                }
            }
            // Also when both sides agree on the bad value: inf - inf is no agreement either.
            assert!(matches!(compare(&got, &got), Err(Mismatch::NotFinite { index: 2, .. })), "{bad}");
            assert!(
                check(&got, &want, Tolerance::abs(f64::INFINITY)).is_err(),
                "an infinite tolerance does not admit {bad}"
            );
        }
        let e = compare(&[0f32, f32::NAN], &[0f32, 1.0]).unwrap_err();
        assert_eq!(e.to_string(), "value 1 is not finite: got NaN, expected 1");
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert_eq!(compare(&[1f32, 2.0], &[1f32]), Err(Mismatch::Length { got: 2, want: 1 }));
        assert_eq!(max_abs_diff::<f32, f32>(&[], &[]), Ok(0.0));
    }

    #[test]
    fn largest_difference_its_index_and_the_scale() {
        let a = compare(&[1f32, 2.5, -3.0], &[1f64, 2.0, -4.0]).unwrap();
        assert_eq!(a, Agreement { max_abs_diff: 1.0, index: 2, scale: 4.0 });
    }

    #[test]
    fn tolerances_bound_absolutely_and_relatively() {
        let (want, got) = ([10f32, -20.0], [10.0005f32, -20.0]);
        assert!(check(&got, &want, Tolerance::abs(1e-3)).is_ok());
        assert!(check(&got, &want, Tolerance::RUNTIMES).is_err());
        // 1e-5 of the largest |want| (20) is 2e-4: tighter than the absolute 1e-3.
        let e = check(&got, &want, Tolerance { abs: 1e-3, rel: 1e-5 }).unwrap_err();
        assert!(matches!(e, Mismatch::TooFar { index: 0, allowed, .. } if (allowed - 2e-4).abs() < 1e-12), "{e:?}");
        assert!(e.to_string().starts_with("value 0 differs by 4.99") && e.to_string().ends_with("allowed 2e-4"), "{e}");
        assert!(check(&got, &want, Tolerance::rel(1e-4)).is_ok());
        // No relative bound means none, also against an all-zero reference.
        assert_eq!(Tolerance::abs(1e-4).allowed(0.0), 1e-4);
        assert_eq!(Tolerance::rel(1e-4).allowed(0.0), 0.0);
        assert!(check(&[0f32], &[0f32], Tolerance::RUNTIMES_SCALED).is_ok());
    }

    #[test]
    #[should_panic(expected = "cnn: value 1 is not finite: got NaN, expected 2")]
    fn assert_close_panics_with_the_index() {
        assert_close(&[1f32, f32::NAN], &[1f32, 2.0], Tolerance::SAME_RUNTIME, "cnn");
    }
}

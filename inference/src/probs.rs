//! Per-class probabilities of the final prediction, and their CSV (`infer --probabilities`).

use std::fmt::Write as _;

use crate::vote::softmax;

/// Mean over members of each image's softmax probabilities: `n * classes` values, image after
/// image. For one member these are its own probabilities; for an ensemble, what `--vote soft`
/// decides on (a majority vote's label can differ from their argmax).
///
/// # Panics
/// If a member has fewer than `n * classes` logits (a caller bug).
pub fn mean_probabilities(per_model_logits: &[Vec<f32>], n: usize, classes: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * classes];
    let members = per_model_logits.len().max(1) as f64;
    for logits in per_model_logits {
        for (dst, row) in out.chunks_exact_mut(classes).zip(logits[..n * classes].chunks_exact(classes)) {
            for (d, p) in dst.iter_mut().zip(softmax(row)) {
                *d += p / members;
            }
        }
    }
    out
}

/// `ImageId,p0,...,p<classes-1>` with ids 1..=n, like the submission; values are printed as
/// the shortest decimal that reads back as the same f32.
pub fn probabilities_csv(probs: &[f64], classes: usize) -> String {
    let mut s = String::with_capacity(probs.len() * 12 + 64);
    s.push_str("ImageId");
    for c in 0..classes {
        let _ = write!(s, ",p{c}");
    }
    s.push('\n');
    for (i, row) in probs.chunks_exact(classes.max(1)).enumerate() {
        let _ = write!(s, "{}", i + 1);
        for &p in row {
            let _ = write!(s, ",{}", p as f32);
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_layout_and_means() {
        // Two members, one image, two classes: softmax([0,0]) = [.5,.5], softmax([ln3,0]) = [.75,.25].
        let p = mean_probabilities(&[vec![0.0, 0.0], vec![3f32.ln(), 0.0]], 1, 2);
        assert!((p[0] - 0.625).abs() < 1e-7 && (p[1] - 0.375).abs() < 1e-7, "{p:?}");
        assert_eq!(probabilities_csv(&[0.625, 0.375, 1.0, 0.0], 2), "ImageId,p0,p1\n1,0.625,0.375\n2,1,0\n");
    }
}

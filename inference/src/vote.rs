//! Turning logits into labels, for one model or an ensemble.

use serde::Serialize;

/// How many disagreeing images [`disagreements`] lists by default.
pub const DISAGREEMENT_EXAMPLES: usize = 10;

/// Index of the largest value; the lowest index wins exact ties, and NaN never wins
/// (unless every value is NaN, then 0).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

fn label(i: usize) -> u8 {
    // Labels are digit classes; a model with more than 256 classes is not a digit model.
    u8::try_from(i).unwrap_or(u8::MAX)
}

/// The argmax label of each of `n` rows of `classes` logits.
///
/// # Panics
/// If `logits` is shorter than `n * classes` (a caller bug).
pub fn labels_from_logits(logits: &[f32], n: usize, classes: usize) -> Vec<u8> {
    if classes == 0 {
        return vec![0; n];
    }
    logits[..n * classes].chunks_exact(classes).map(|r| label(argmax(r))).collect()
}

/// Numerically stable softmax of one row, in f64 (so sums over members do not lose
/// the small probabilities that decide ties).
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = if max.is_finite() { f64::from(max) } else { 0.0 };
    let exps: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        exps.into_iter().map(|e| e / sum).collect()
    } else {
        vec![1.0 / row.len().max(1) as f64; row.len()]
    }
}

fn check_members(per_model_logits: &[Vec<f32>], n: usize, classes: usize) {
    for (m, l) in per_model_logits.iter().enumerate() {
        assert!(l.len() >= n * classes, "member {m} has {} logits, expected {n} images x {classes} classes", l.len());
    }
}

/// Sum over members of each class's softmax probability for image `i`.
fn summed_probabilities(per_model_logits: &[Vec<f32>], i: usize, classes: usize) -> Vec<f64> {
    let mut sum = vec![0f64; classes];
    for l in per_model_logits {
        for (s, p) in sum.iter_mut().zip(softmax(&l[i * classes..(i + 1) * classes])) {
            *s += p;
        }
    }
    sum
}

/// Hard (majority) voting: each member votes for its argmax label, and the label with
/// most votes wins.
///
/// Ties between labels with the same number of votes (e.g. 2-2 with four members, or
/// 1-1-1 with three) are broken by the **highest summed softmax probability** of the
/// tied labels over all members, and if those sums are exactly equal, by the **lowest
/// label**. A label nobody voted for never wins. With no members every image gets
/// label 0.
///
/// `per_model_logits[m]` holds member `m`'s `n * classes` logits, image after image.
///
/// # Panics
/// If a member has fewer than `n * classes` logits (a caller bug).
pub fn majority_vote(per_model_logits: &[Vec<f32>], n: usize, classes: usize) -> Vec<u8> {
    check_members(per_model_logits, n, classes);
    if per_model_logits.is_empty() || classes == 0 {
        return vec![0; n];
    }
    let mut out = Vec::with_capacity(n);
    let mut votes = vec![0usize; classes];
    for i in 0..n {
        votes.iter_mut().for_each(|v| *v = 0);
        for l in per_model_logits {
            votes[argmax(&l[i * classes..(i + 1) * classes])] += 1;
        }
        let top = votes.iter().copied().max().unwrap_or(0);
        let tied: Vec<usize> = (0..classes).filter(|&c| votes[c] == top).collect();
        let winner = if tied.len() == 1 {
            tied[0]
        } else {
            let probs = summed_probabilities(per_model_logits, i, classes);
            // Strictly greater keeps the lowest label among exactly equal sums.
            let mut best = tied[0];
            for &c in &tied[1..] {
                if probs[c] > probs[best] {
                    best = c;
                }
            }
            best
        };
        out.push(label(winner));
    }
    out
}

/// Soft voting: the label with the highest mean softmax probability over members
/// (lowest label on exact ties). With no members every image gets label 0.
///
/// # Panics
/// If a member has fewer than `n * classes` logits (a caller bug).
pub fn soft_vote(per_model_logits: &[Vec<f32>], n: usize, classes: usize) -> Vec<u8> {
    check_members(per_model_logits, n, classes);
    if per_model_logits.is_empty() || classes == 0 {
        return vec![0; n];
    }
    (0..n)
        .map(|i| {
            // The mean is the sum divided by a constant: same argmax.
            let probs = summed_probabilities(per_model_logits, i, classes);
            let mut best = 0;
            for c in 1..classes {
                if probs[c] > probs[best] {
                    best = c;
                }
            }
            label(best)
        })
        .collect()
}

/// One image on which ensemble members disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisagreementExample {
    /// Kaggle's 1-based `ImageId` (row of test.csv).
    pub image_id: usize,
    /// Each member's vote, in member order.
    pub votes: Vec<u8>,
}

/// How often ensemble members disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// Images where not all members vote the same label.
    pub count: usize,
    /// Images compared.
    pub total: usize,
    /// The first disagreeing images (in ImageId order), at most the limit asked for.
    pub examples: Vec<DisagreementExample>,
}

/// Compares members' votes (`per_model_labels[m][i]`) image by image; lists the first
/// `limit` images where they differ. Images beyond the shortest member are ignored.
pub fn disagreements(per_model_labels: &[Vec<u8>], limit: usize) -> Disagreement {
    let total = per_model_labels.iter().map(Vec::len).min().unwrap_or(0);
    let mut count = 0;
    let mut examples = Vec::new();
    for i in 0..total {
        let first = per_model_labels[0][i];
        if per_model_labels.iter().any(|l| l[i] != first) {
            count += 1;
            if examples.len() < limit {
                examples.push(DisagreementExample {
                    image_id: i + 1,
                    votes: per_model_labels.iter().map(|l| l[i]).collect(),
                });
            }
        }
    }
    Disagreement { count, total, examples }
}

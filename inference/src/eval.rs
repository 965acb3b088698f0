//! Accuracy, per-class accuracy and the confusion matrix against known labels.

use std::fmt;

use serde::Serialize;

/// Accuracy of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAccuracy {
    /// The true label.
    pub label: u8,
    /// Images with this true label.
    pub count: usize,
    /// Of those, predicted correctly.
    pub correct: usize,
    /// `correct / count` (0 when the class is absent).
    pub accuracy: f64,
}

/// Predictions scored against the true labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Images scored.
    pub total: usize,
    /// Images predicted correctly.
    pub correct: usize,
    /// `correct / total`.
    pub accuracy: f64,
    /// One entry per class `0..classes`.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Scores `predicted` against `truth` (compared up to the shorter length). Labels at or
/// above `classes` are counted as wrong and left out of the matrix.
pub fn evaluate(predicted: &[u8], truth: &[u8], classes: usize) -> Evaluation {
    let total = predicted.len().min(truth.len());
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut correct = 0;
    for (&p, &t) in predicted.iter().zip(truth) {
        if p == t {
            correct += 1;
        }
        if let Some(cell) = confusion.get_mut(usize::from(t)).and_then(|r| r.get_mut(usize::from(p))) {
            *cell += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class = (0..classes)
        .map(|c| {
            let count: usize = confusion[c].iter().sum();
            let ok = confusion[c][c];
            ClassAccuracy { label: u8::try_from(c).unwrap_or(u8::MAX), count, correct: ok, accuracy: ratio(ok, count) }
        })
        .collect();
    Evaluation { total, correct, accuracy: ratio(correct, total), per_class, confusion }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "accuracy: {:.4} ({}/{})", self.accuracy, self.correct, self.total)?;
        writeln!(f, "per-class accuracy:")?;
        for c in &self.per_class {
            writeln!(f, "  {}: {:.4} ({}/{})", c.label, c.accuracy, c.correct, c.count)?;
        }
        writeln!(f, "confusion matrix (rows: true label, columns: predicted):")?;
        write!(f, "     ")?;
        for p in 0..self.confusion.len() {
            write!(f, "{p:>6}")?;
        }
        writeln!(f)?;
        for (t, row) in self.confusion.iter().enumerate() {
            write!(f, "  {t:>2} ")?;
            for v in row {
                write!(f, "{v:>6}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        let e = evaluate(&[0, 1, 1, 2, 2], &[0, 1, 2, 2, 0], 3);
        assert_eq!((e.total, e.correct), (5, 3));
        assert_eq!(e.confusion, vec![vec![1, 0, 1], vec![0, 1, 0], vec![0, 1, 1]]);
        assert_eq!(e.per_class[2].count, 2);
        assert_eq!(e.per_class[2].correct, 1);
        assert!((e.accuracy - 0.6).abs() < 1e-12);
    }
}

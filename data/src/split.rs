//! Train / validation split.

use crate::Rng;

/// Share of each class held out for validation by default (the trainer's `--val-fraction`).
pub const VAL_FRACTION: f64 = 0.2;
/// Seed of the default split (the trainer's `--split-seed`): every member of an ensemble, the
/// exporter's self-check and the scripts score on the same held-out images.
pub const SPLIT_SEED: u64 = 42;

/// Splits row indices `0..labels.len()` into `(train, validation)`, keeping each class's
/// share the same in both (so validation accuracy is not skewed by class imbalance).
///
/// Each class `c` with `n_c` rows sends `round(n_c * val_fraction)` randomly chosen rows to
/// validation and the rest to training. `val_fraction` is clamped to `[0, 1]` (NaN counts
/// as 0). Both lists come back sorted ascending; the same `labels`, `val_fraction` and
/// `seed` always give the same split.
pub fn stratified_split(labels: &[u8], val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let fraction = if val_fraction.is_nan() { 0.0 } else { val_fraction.clamp(0.0, 1.0) };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, &l) in labels.iter().enumerate() {
        by_class[usize::from(l)].push(i);
    }
    let mut rng = Rng::new(seed);
    let mut train = Vec::with_capacity(labels.len());
    let mut val = Vec::new();
    for mut rows in by_class.into_iter().filter(|r| !r.is_empty()) {
        rng.shuffle(&mut rows);
        let n_val = ((rows.len() as f64 * fraction).round() as usize).min(rows.len());
        val.extend_from_slice(&rows[..n_val]);
        train.extend_from_slice(&rows[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

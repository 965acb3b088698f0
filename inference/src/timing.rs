//! Timing statistics per model and for the ensemble, printable and serialisable.

use std::fmt::Write as _;

use serde::Serialize;

/// Latency and throughput of one model (or the ensemble) over the timed batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchStats {
    /// Model name (file stem or ensemble member name), or `ensemble`.
    pub name: String,
    /// Backend that ran it (`ort`, `ort-cuda`, `tract`).
    pub backend: String,
    /// Timed batches (the warm-up batch is not counted).
    pub batches: usize,
    /// Images in the timed batches.
    pub images: usize,
    /// Mean milliseconds per batch.
    pub mean_ms: f64,
    /// Median milliseconds per batch (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile milliseconds per batch (nearest rank).
    pub p99_ms: f64,
    /// Sum of the batch times, milliseconds.
    pub total_ms: f64,
    /// Images per second: `images / total`.
    pub img_per_s: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of already sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl BatchStats {
    /// Statistics of `batch_ms` (one entry per batch) covering `images` images.
    pub fn from_batches(name: impl Into<String>, backend: impl Into<String>, batch_ms: &[f64], images: usize) -> Self {
        let mut sorted = batch_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let total_ms: f64 = batch_ms.iter().sum();
        let batches = batch_ms.len();
        BatchStats {
            name: name.into(),
            backend: backend.into(),
            batches,
            images,
            mean_ms: if batches == 0 { 0.0 } else { total_ms / batches as f64 },
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            total_ms,
            img_per_s: if total_ms > 0.0 { images as f64 / (total_ms / 1e3) } else { 0.0 },
        }
    }
}

/// End-to-end wall time of an `infer` run, split by phase (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WallTime {
    /// Reading and validating the CSV.
    pub parse_ms: f64,
    /// Loading (and optimising) the models.
    pub load_ms: f64,
    /// Running the batches (conversion and warm-up included).
    pub inference_ms: f64,
    /// Writing the submission.
    pub write_ms: f64,
    /// Everything, from start to end.
    pub total_ms: f64,
}

/// Everything `infer --timings` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    /// Images per batch asked for.
    pub batch_size: usize,
    /// Threads in total.
    pub threads: usize,
    /// One entry per model.
    pub models: Vec<BatchStats>,
    /// The ensemble as a whole (measured wall per batch, members running concurrently);
    /// `None` for a single model.
    pub ensemble: Option<BatchStats>,
    /// End-to-end phases.
    pub wall: WallTime,
}

impl Timings {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Only numbers and strings: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A fixed-width table: one row per model, then the ensemble, then the wall times.
    pub fn table(&self) -> String {
        let mut rows: Vec<&BatchStats> = self.models.iter().collect();
        rows.extend(self.ensemble.iter());
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {:>7}  {:>9}  {:>9}  {:>9}  {:>10}",
            "model", "backend", "batches", "mean ms", "p50 ms", "p99 ms", "img/s"
        );
        for r in rows {
            let _ = writeln!(
                s,
                "{:<width$}  {:<8}  {:>7}  {:>9.3}  {:>9.3}  {:>9.3}  {:>10.0}",
                r.name, r.backend, r.batches, r.mean_ms, r.p50_ms, r.p99_ms, r.img_per_s
            );
        }
        let w = &self.wall;
        let _ = writeln!(
            s,
            "wall: parse {:.1} ms, load {:.1} ms, inference {:.1} ms, write {:.1} ms, total {:.1} ms",
            w.parse_ms, w.load_ms, w.inference_ms, w.write_ms, w.total_ms
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let s = BatchStats::from_batches("m", "tract", &[4.0, 2.0, 6.0], 30);
        assert_eq!((s.mean_ms, s.p50_ms, s.p99_ms, s.total_ms), (4.0, 4.0, 6.0, 12.0));
        assert!((s.img_per_s - 2500.0).abs() < 1e-9);
    }
}

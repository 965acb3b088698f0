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

impl BatchStats {
    /// For a pipelined ensemble, whose per-batch spans overlap: total and img/s from the wall
    /// time of all batches instead of the sum of the spans.
    pub fn with_wall(mut self, wall_ms: f64) -> Self {
        self.total_ms = wall_ms;
        self.img_per_s = if wall_ms > 0.0 { self.images as f64 / (wall_ms / 1e3) } else { 0.0 };
        self
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

/// How much running ensemble members concurrently saved: their summed inference time against
/// the ensemble's wall time over the same batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Concurrency {
    /// Wall milliseconds of all timed batches of the ensemble.
    pub ensemble_ms: f64,
    /// Sum over members of their own batch times. Each member was timed while the others
    /// ran beside it on a share of the cores, so a member alone would be faster: this is not
    /// what running them one after another would cost, only what the overlap hid.
    pub members_sum_ms: f64,
    /// `members_sum_ms / ensemble_ms`: above 1 when members overlapped.
    pub overlap: f64,
}

impl Concurrency {
    /// `None` without an ensemble.
    pub fn of(models: &[BatchStats], ensemble: Option<&BatchStats>) -> Option<Self> {
        let e = ensemble?;
        let members_sum_ms: f64 = models.iter().map(|m| m.total_ms).sum();
        Some(Concurrency {
            ensemble_ms: e.total_ms,
            members_sum_ms,
            overlap: if e.total_ms > 0.0 { members_sum_ms / e.total_ms } else { 0.0 },
        })
    }
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
    /// Ensemble wall time against the members' summed times; `None` for a single model.
    pub concurrency: Option<Concurrency>,
    /// Inputs run per image: 1, or 5 with `--tta` (img/s count images, not views).
    pub views: usize,
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
        if let Some(c) = &self.concurrency {
            let _ = writeln!(
                s,
                "ensemble: {:.1} ms wall vs {:.1} ms summed over members ({:.2}x overlap; each member timed while sharing the cores)",
                c.ensemble_ms, c.members_sum_ms, c.overlap
            );
        }
        if self.views > 1 {
            let _ = writeln!(s, "each image ran as {} views (--tta); img/s counts images", self.views);
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
        let e = BatchStats::from_batches("ensemble", "tract", &[5.0, 3.0], 30);
        let c = Concurrency::of(&[s.clone(), s], Some(&e)).unwrap();
        assert_eq!((c.ensemble_ms, c.members_sum_ms, c.overlap), (8.0, 24.0, 3.0));
        assert!(Concurrency::of(&[], None).is_none());
    }
}

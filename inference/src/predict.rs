//! Running a whole data set through one model or an ensemble, timing each batch.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use data::Dataset;

use crate::error::panic_message;
use crate::vote::{labels_from_logits, softmax};
use crate::{InferError, Model, IMAGE_SIDE, PIXELS};

/// Test-time augmentation: the image itself and one-pixel shifts right, left, down and up,
/// `(dx, dy)` in pixels. Digits are centred by their centre of mass in 28x28, so a one-pixel
/// shift is a plausible variation that only ever pushes background off the edge.
pub const TTA_SHIFTS: [(i32, i32); 5] = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)];

/// How [`predict_with`] and [`predict_ensemble_with`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictOptions {
    /// Images per batch (`0` is treated as 1; the last batch may be smaller).
    pub batch_size: usize,
    /// Test-time augmentation: each image also runs shifted by [`TTA_SHIFTS`] (in the same
    /// `run` call, so a batch holds `batch_size * 5` inputs) and its softmax probabilities
    /// are averaged over the views. The prediction's `logits` are then the logarithms of
    /// those mean probabilities, so argmax, voting and softmax downstream work unchanged.
    pub tta: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { batch_size: 64, tta: false }
    }
}

impl PredictOptions {
    fn views(&self) -> &'static [(i32, i32)] {
        if self.tta {
            &TTA_SHIFTS
        } else {
            &TTA_SHIFTS[..1]
        }
    }
}

/// Writes into `dst` the 28x28 image `src` moved `dx` pixels right and `dy` pixels down
/// (negative: left, up); pixels shifted in from outside are 0 (background).
///
/// # Panics
/// If `src` or `dst` is not 784 values long.
pub fn shift_image(src: &[f32], dst: &mut [f32], dx: i32, dy: i32) {
    assert!(src.len() == PIXELS && dst.len() == PIXELS, "shift_image works on one 28x28 image");
    let side = IMAGE_SIDE as i32;
    for y in 0..side {
        let sy = y - dy;
        let row = &mut dst[(y * side) as usize..((y + 1) * side) as usize];
        if !(0..side).contains(&sy) {
            row.fill(0.0);
            continue;
        }
        for (x, out) in row.iter_mut().enumerate() {
            let sx = x as i32 - dx;
            *out = if (0..side).contains(&sx) { src[(sy * side + sx) as usize] } else { 0.0 };
        }
    }
}

/// Folds the outputs of `views.len()` views of `k` images (view-major, as
/// [`Converter::fill`] lays them out) into one row per image: the logarithm of the mean
/// softmax probability. A single view is appended unchanged (raw logits).
fn fold_views(out: &[f32], k: usize, views: usize, classes: usize, dst: &mut Vec<f32>) {
    if views == 1 {
        dst.extend_from_slice(out);
        return;
    }
    let mut mean = vec![0f64; classes];
    for i in 0..k {
        mean.fill(0.0);
        for v in 0..views {
            let row = &out[(v * k + i) * classes..(v * k + i + 1) * classes];
            for (m, p) in mean.iter_mut().zip(softmax(row)) {
                *m += p / views as f64;
            }
        }
        // Floor at the smallest normal f64 so a vanished class stays finite.
        dst.extend(mean.iter().map(|&p| p.max(f64::MIN_POSITIVE).ln() as f32));
    }
}

/// The outputs of one model over a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// `images * classes` logits, image after image, in data set order.
    pub logits: Vec<f32>,
    /// Milliseconds of each timed batch's `Model::run` call (conversion excluded; the
    /// warm-up batch is not recorded).
    pub batch_ms: Vec<f64>,
    /// Classes per image.
    pub classes: usize,
}

impl Prediction {
    /// Number of images predicted.
    pub fn len(&self) -> usize {
        self.logits.len().checked_div(self.classes).unwrap_or(0)
    }

    /// True when no image was predicted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The argmax label of every image (lowest label on exact ties).
    pub fn labels(&self) -> Vec<u8> {
        labels_from_logits(&self.logits, self.len(), self.classes)
    }
}

/// The outputs of every ensemble member, run concurrently batch by batch.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsemblePrediction {
    /// One prediction per member, in the order the models were given; each member's
    /// `batch_ms` times only its own `run` calls.
    pub members: Vec<Prediction>,
    /// Milliseconds per batch for the whole ensemble: from the first member starting the
    /// batch until the last one finished it (members are pipelined, so these spans overlap
    /// from batch to batch and do not add up to the wall time).
    pub batch_ms: Vec<f64>,
    /// Wall milliseconds of the timed batches: from the first member starting the first
    /// batch until the last member finished the last one.
    pub wall_ms: f64,
}

/// Converts pixels to model input exactly as `data::Dataset::to_f32` does
/// (`pixel as f32 / 255.0`), into a reused buffer.
struct Converter {
    lut: [f32; 256],
}

impl Converter {
    fn new() -> Self {
        let mut lut = [0f32; 256];
        for (v, slot) in lut.iter_mut().enumerate() {
            *slot = v as f32 / 255.0;
        }
        Converter { lut }
    }

    /// Fills `buf` with images `start..start + count`, once per view (view-major: all
    /// images of the first view, then all of the second...).
    fn fill(&self, buf: &mut Vec<f32>, images: &Dataset, start: usize, count: usize, views: &[(i32, i32)]) {
        buf.clear();
        let bytes = &images.images[start * PIXELS..(start + count) * PIXELS];
        buf.extend(bytes.iter().map(|&p| self.lut[usize::from(p)]));
        for &(dx, dy) in views.iter().skip(1) {
            let at = buf.len();
            buf.resize(at + count * PIXELS, 0.0);
            let (plain, shifted) = buf.split_at_mut(at);
            for (src, dst) in plain[..count * PIXELS].chunks_exact(PIXELS).zip(shifted.chunks_exact_mut(PIXELS)) {
                shift_image(src, dst, dx, dy);
            }
        }
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs every image of `images` through `model`, `batch_size` images at a time
/// (`0` is treated as 1; the last batch may be smaller).
///
/// One warm-up batch (the first) is run and discarded before timing, so one-time costs
/// (allocation, kernel selection) do not skew the statistics; then each batch's `run`
/// call alone is timed.
pub fn predict(model: &Model, images: &Dataset, batch_size: usize) -> Result<Prediction, InferError> {
    predict_with(model, images, &PredictOptions { batch_size, tta: false })
}

/// [`predict`] with options (test-time augmentation).
pub fn predict_with(model: &Model, images: &Dataset, opts: &PredictOptions) -> Result<Prediction, InferError> {
    let n = images.len();
    let bs = opts.batch_size.max(1);
    let views = opts.views();
    let classes = model.num_classes();
    let conv = Converter::new();
    let mut buf = Vec::with_capacity(bs.min(n) * PIXELS * views.len());
    let mut out = Vec::with_capacity(bs.min(n) * classes * views.len());
    let mut logits = Vec::with_capacity(n * classes);
    let mut batch_ms = Vec::with_capacity(n.div_ceil(bs));
    if n > 0 {
        let k = bs.min(n);
        conv.fill(&mut buf, images, 0, k, views);
        model.run_into(&buf, k * views.len(), &mut out)?;
    }
    for start in (0..n).step_by(bs) {
        let k = bs.min(n - start);
        conv.fill(&mut buf, images, start, k, views);
        out.clear();
        let t = Instant::now();
        model.run_into(&buf, k * views.len(), &mut out)?;
        batch_ms.push(elapsed_ms(t));
        fold_views(&out, k, views.len(), classes, &mut logits);
    }
    Ok(Prediction { logits, batch_ms, classes })
}

/// A member's answer for one batch: (member, batch index or `None` for the warm-up, logits
/// and the run call's start and end).
type MemberResult = (usize, Option<usize>, Result<(Vec<f32>, Instant, Instant), InferError>);

/// Batches a member may be ahead of the slowest one: enough to keep it busy while the
/// producer serves the others, few enough to bound memory.
const PIPELINE_DEPTH: usize = 4;

/// Runs every image through every model of an ensemble, with one thread per member,
/// pipelined: each batch is converted once and queued to every member, and each member works
/// through its queue at its own pace (at most a few batches ahead of the slowest), so no
/// member waits for another after each batch. The ensemble's wall time is therefore about the
/// slowest member's, not the sum.
///
/// Give each model `threads / members` threads at load time so they do not
/// oversubscribe the cores. A warm-up batch is run first, untimed. All members must
/// have the same number of classes.
pub fn predict_ensemble(
    models: &[Model],
    images: &Dataset,
    batch_size: usize,
) -> Result<EnsemblePrediction, InferError> {
    predict_ensemble_with(models, images, &PredictOptions { batch_size, tta: false })
}

/// [`predict_ensemble`] with options (test-time augmentation, applied to every member).
pub fn predict_ensemble_with(
    models: &[Model],
    images: &Dataset,
    opts: &PredictOptions,
) -> Result<EnsemblePrediction, InferError> {
    if let Some(first) = models.first() {
        if let Some(m) = models.iter().find(|m| m.num_classes() != first.num_classes()) {
            return Err(InferError::ClassMismatch(format!(
                "{} has {}, {} has {}",
                first.path().display(),
                first.num_classes(),
                m.path().display(),
                m.num_classes()
            )));
        }
    }
    let n = images.len();
    let bs = opts.batch_size.max(1);
    let views = opts.views();
    let conv = Converter::new();
    let mut members: Vec<Prediction> = models
        .iter()
        .map(|m| Prediction {
            logits: Vec::with_capacity(n * m.num_classes()),
            batch_ms: Vec::with_capacity(n.div_ceil(bs)),
            classes: m.num_classes(),
        })
        .collect();
    let batches = n.div_ceil(bs);
    if n == 0 || models.is_empty() {
        return Ok(EnsemblePrediction { members, batch_ms: Vec::new(), wall_ms: 0.0 });
    }

    let (res_tx, res_rx) = mpsc::channel::<MemberResult>();
    std::thread::scope(|s| {
        let mut job_txs = Vec::with_capacity(models.len());
        for (i, model) in models.iter().enumerate() {
            let (job_tx, job_rx) = mpsc::sync_channel::<(Option<usize>, Arc<Vec<f32>>, usize)>(PIPELINE_DEPTH);
            let res_tx = res_tx.clone();
            s.spawn(move || {
                for (batch, buf, k) in job_rx {
                    let start = Instant::now();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(&buf, k * views.len())));
                    let end = Instant::now();
                    drop(buf);
                    let r = match r {
                        Ok(r) => r.map(|out| {
                            let mut folded = Vec::with_capacity(k * model.num_classes());
                            fold_views(&out, k, views.len(), model.num_classes(), &mut folded);
                            (folded, start, end)
                        }),
                        Err(p) => Err(InferError::WorkerPanicked(format!(
                            "{}: {}",
                            model.path().display(),
                            panic_message(&*p)
                        ))),
                    };
                    let failed = r.is_err();
                    // The collector outlives the workers; a failed member stops, the others finish.
                    let _ = res_tx.send((i, batch, r));
                    if failed {
                        break;
                    }
                }
            });
            job_txs.push(job_tx);
        }
        // The warm-up batch (start 0, not recorded) then every batch, each converted once.
        let jobs = std::iter::once((None, 0)).chain((0..n).step_by(bs).enumerate().map(|(b, s)| (Some(b), s)));
        for (batch, start) in jobs {
            let k = bs.min(n - start);
            let mut buf = Vec::with_capacity(k * PIXELS * views.len());
            conv.fill(&mut buf, images, start, k, views);
            let buf = Arc::new(buf);
            for tx in &job_txs {
                // Fails only if that worker stopped on an error, which its answer reports.
                let _ = tx.send((batch, Arc::clone(&buf), k));
            }
        }
        // Dropping `job_txs` here ends the workers once their queues are empty; the scope joins them.
    });
    drop(res_tx);

    // Answers arrive per member in batch order; spans[b] = (first start, last end) over members.
    let mut spans: Vec<Option<(Instant, Instant)>> = vec![None; batches];
    let mut first_err = None;
    let mut answers = vec![0usize; models.len()];
    for (i, batch, r) in res_rx {
        match r {
            Ok((out, start, end)) => {
                answers[i] += 1;
                let Some(b) = batch else { continue };
                members[i].logits.extend_from_slice(&out);
                members[i].batch_ms.push(end.duration_since(start).as_secs_f64() * 1e3);
                let span = spans[b].get_or_insert((start, end));
                span.0 = span.0.min(start);
                span.1 = span.1.max(end);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if answers.iter().any(|&a| a != batches + 1) {
        return Err(InferError::WorkerPanicked("an ensemble worker exited before answering every batch".into()));
    }
    let spans: Vec<(Instant, Instant)> = spans.into_iter().flatten().collect();
    let batch_ms = spans.iter().map(|(a, b)| b.duration_since(*a).as_secs_f64() * 1e3).collect();
    let first = spans.iter().map(|s| s.0).min();
    let last = spans.iter().map(|s| s.1).max();
    let wall_ms = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64() * 1e3,
        _ => 0.0,
    };
    Ok(EnsemblePrediction { members, batch_ms, wall_ms })
}

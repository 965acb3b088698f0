//! Running a whole data set through one model or an ensemble, timing each batch.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use data::Dataset;

use crate::error::panic_message;
use crate::vote::labels_from_logits;
use crate::{InferError, Model, PIXELS};

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
    /// Wall milliseconds per batch for the whole ensemble: from handing the batch to the
    /// members until the last one answered.
    pub batch_ms: Vec<f64>,
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

    /// Fills `buf` with images `start..start + count`.
    fn fill(&self, buf: &mut Vec<f32>, images: &Dataset, start: usize, count: usize) {
        buf.clear();
        let bytes = &images.images[start * PIXELS..(start + count) * PIXELS];
        buf.extend(bytes.iter().map(|&p| self.lut[usize::from(p)]));
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
    let n = images.len();
    let bs = batch_size.max(1);
    let conv = Converter::new();
    let mut buf = Vec::with_capacity(bs.min(n) * PIXELS);
    let mut logits = Vec::with_capacity(n * model.num_classes());
    let mut batch_ms = Vec::with_capacity(n.div_ceil(bs));
    if n > 0 {
        let k = bs.min(n);
        conv.fill(&mut buf, images, 0, k);
        model.run_into(&buf, k, &mut logits)?;
        logits.clear();
    }
    for start in (0..n).step_by(bs) {
        let k = bs.min(n - start);
        conv.fill(&mut buf, images, start, k);
        let t = Instant::now();
        model.run_into(&buf, k, &mut logits)?;
        batch_ms.push(elapsed_ms(t));
    }
    Ok(Prediction { logits, batch_ms, classes: model.num_classes() })
}

type MemberResult = (usize, Result<(Vec<f32>, f64), InferError>);

/// Runs every image through every model of an ensemble, with one thread per member:
/// each batch is converted once, handed to all members at the same time, and the next
/// batch starts when all have answered. Wall time per batch is therefore about the
/// slowest member's, not the sum.
///
/// Give each model `threads / members` threads at load time so they do not
/// oversubscribe the cores. A warm-up batch is run first, untimed. All members must
/// have the same number of classes.
pub fn predict_ensemble(models: &[Model], images: &Dataset, batch_size: usize) -> Result<EnsemblePrediction, InferError> {
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
    let bs = batch_size.max(1);
    let conv = Converter::new();
    let mut members: Vec<Prediction> = models
        .iter()
        .map(|m| Prediction {
            logits: Vec::with_capacity(n * m.num_classes()),
            batch_ms: Vec::with_capacity(n.div_ceil(bs)),
            classes: m.num_classes(),
        })
        .collect();
    let mut batch_ms = Vec::with_capacity(n.div_ceil(bs));
    if n == 0 || models.is_empty() {
        return Ok(EnsemblePrediction { members, batch_ms });
    }

    std::thread::scope(|s| -> Result<(), InferError> {
        let (res_tx, res_rx) = mpsc::channel::<MemberResult>();
        let mut job_txs = Vec::with_capacity(models.len());
        for (i, model) in models.iter().enumerate() {
            let (job_tx, job_rx) = mpsc::channel::<(Arc<Vec<f32>>, usize)>();
            let res_tx = res_tx.clone();
            s.spawn(move || {
                for (buf, k) in job_rx {
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(&buf, k)));
                    let ms = elapsed_ms(t);
                    // Release the batch before answering so the main thread can reuse it.
                    drop(buf);
                    let r = match r {
                        Ok(r) => r.map(|out| (out, ms)),
                        Err(p) => Err(InferError::WorkerPanicked(format!(
                            "{}: {}",
                            model.path().display(),
                            panic_message(&*p)
                        ))),
                    };
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
            job_txs.push(job_tx);
        }
        drop(res_tx);

        let mut buf = Arc::new(Vec::with_capacity(bs.min(n) * PIXELS));
        // The warm-up batch (start 0, not recorded) then every batch.
        let batches = std::iter::once((0, false)).chain((0..n).step_by(bs).map(|s| (s, true)));
        for (start, record) in batches {
            let k = bs.min(n - start);
            match Arc::get_mut(&mut buf) {
                Some(b) => conv.fill(b, images, start, k),
                None => {
                    let mut b = Vec::with_capacity(k * PIXELS);
                    conv.fill(&mut b, images, start, k);
                    buf = Arc::new(b);
                }
            }
            let t = Instant::now();
            for tx in &job_txs {
                // A send fails only if the worker is gone, which the missing answer reports.
                let _ = tx.send((Arc::clone(&buf), k));
            }
            let mut first_err = None;
            for _ in 0..models.len() {
                match res_rx.recv() {
                    Ok((i, Ok((out, ms)))) => {
                        if record {
                            members[i].logits.extend_from_slice(&out);
                            members[i].batch_ms.push(ms);
                        }
                    }
                    Ok((_, Err(e))) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(InferError::WorkerPanicked("an ensemble worker exited".into()));
                        break;
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            if record {
                batch_ms.push(elapsed_ms(t));
            }
        }
        Ok(())
        // Dropping `job_txs` here ends the workers; the scope joins them.
    })?;
    Ok(EnsemblePrediction { members, batch_ms })
}

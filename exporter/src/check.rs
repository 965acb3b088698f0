//! The export's self-check: before a model file is written, its ONNX bytes run in the
//! runtimes that will serve it (tract always, ONNX Runtime when its library loads) on a few
//! validation images, and their logits are compared with [`models::reference::forward`] on
//! the checkpoint's own, unfolded weights. A wrong lowering, a wrong BatchNorm fold or a
//! runtime disagreeing with the graph's meaning therefore never reaches a file.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use inference::{BackendKind, InferError};

use crate::onnx::tensor_shape_proto::dimension;
use crate::onnx::{type_proto, ModelProto};
use crate::{Checkpoint, ExportError, BATCH_DIM};

/// Largest |runtime - reference| accepted, relative to the largest |reference logit|: the
/// runtimes compute in float32, whose rounding scales with the values and the depth (trained
/// efficientnet_b0 with logits of 33 differs by 1.8e-4 in ort, efficientnet_b3 with logits of
/// 166 by 2.0e-3 in tract: 5.5e-6 and 1.2e-5 relative), while a fresh net with logits of 0.01
/// must not pass with 1e-4. The tests' injected fault (one folded bias off by 1e-2) is caught.
pub const CHECK_MAX_REL_DIFF: f64 = 5e-5;
/// Images run through every runtime.
pub const CHECK_IMAGES: usize = 16;
/// Looked for relative to the current folder, then to every folder above the executable.
pub const DEFAULT_CHECK_DATA: &str = "sample/digit-recognizer.zip";
/// Side of the images the runtimes' loader accepts (`inference`'s contract).
const RUNTIME_IMAGE_SIDE: usize = 28;

/// Where the check's images come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckData {
    /// [`DEFAULT_CHECK_DATA`] if found, else [`CheckData::Synthetic`] (with a note).
    #[default]
    Default,
    /// A data folder, Kaggle zip or CSV (`train.csv` from a folder or zip).
    Path(PathBuf),
    /// Deterministic synthetic digits-like images.
    Synthetic,
}

/// How to check an export.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOptions {
    pub data: CheckData,
    /// At most this many images (fewer if the data has fewer).
    pub images: usize,
    pub max_rel_diff: f64,
    /// Threads per runtime (0: all cores).
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { data: CheckData::Default, images: CHECK_IMAGES, max_rel_diff: CHECK_MAX_REL_DIFF, threads: 0 }
    }
}

/// The images the check runs.
#[derive(Debug, Clone)]
pub struct CheckImages {
    /// `n * 784` floats, pixel/255.
    pub pixels: Vec<f32>,
    pub n: usize,
    /// Where they came from, for the report.
    pub description: String,
    /// Why synthetic images were used, if they were.
    pub note: Option<String>,
}

/// One runtime's agreement with the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeCheck {
    pub backend: BackendKind,
    pub max_abs_diff: f64,
    /// Images whose predicted class equals the reference's.
    pub argmax_agree: usize,
}

/// What the check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub images: usize,
    pub data: String,
    /// Largest |logit| of the reference, the scale of the relative tolerance.
    pub max_abs_logit: f64,
    pub max_rel_diff_allowed: f64,
    pub runtimes: Vec<RuntimeCheck>,
    /// Runtimes skipped and other caveats (ONNX Runtime unavailable, synthetic images...).
    pub notes: Vec<String>,
    /// Wall time of the whole check (images, reference, runtimes).
    pub elapsed: std::time::Duration,
}

impl CheckReport {
    /// The largest difference accepted: the relative bound times the largest |logit|.
    pub fn allowed(&self) -> f64 {
        self.max_rel_diff_allowed * self.max_abs_logit
    }

    pub fn runtime_passed(&self, r: &RuntimeCheck) -> bool {
        r.max_abs_diff <= self.allowed() // false for NaN
    }

    pub fn passed(&self) -> bool {
        self.runtimes.iter().all(|r| self.runtime_passed(r))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.runtimes.is_empty() {
            return write!(f, "not run ({})", self.notes.join("; "));
        }
        let parts: Vec<String> = self
            .runtimes
            .iter()
            .map(|r| {
                let verdict = if self.runtime_passed(r) { "ok" } else { "TOO LARGE" };
                format!(
                    "{} max |diff| {:.2e} ({:.2e} relative, {verdict}, argmax {}/{})",
                    r.backend,
                    r.max_abs_diff,
                    r.max_abs_diff / self.max_abs_logit,
                    r.argmax_agree,
                    self.images
                )
            })
            .collect();
        write!(
            f,
            "{} vs the f64 reference on {} images of {} (max |logit| {:.3e}; allowed {:.0e} relative = {:.2e})",
            parts.join("; "),
            self.images,
            self.data,
            self.max_abs_logit,
            self.max_rel_diff_allowed,
            self.allowed()
        )?;
        for n in &self.notes {
            write!(f, "; note: {n}")?;
        }
        Ok(())
    }
}

/// [`DEFAULT_CHECK_DATA`] under the current folder or a folder above the executable (so
/// `target/release/exporter` finds the repository's sample from anywhere).
pub fn find_default_check_data() -> Option<PathBuf> {
    let rel = Path::new(DEFAULT_CHECK_DATA);
    if rel.is_file() {
        return Some(rel.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).map(|a| a.join(rel)).find(|p| p.is_file())
}

/// The check's images: the first `count` of the trainer's default validation split
/// ([`data::VAL_FRACTION`], [`data::SPLIT_SEED`]: images it never trained on) of labelled
/// data, the first `count` rows of unlabelled data, or synthetic images.
pub fn check_images(data: &CheckData, count: usize) -> Result<CheckImages, ExportError> {
    let path = match data {
        CheckData::Path(p) => p.clone(),
        CheckData::Synthetic => return Ok(synthetic_images(count, None)),
        CheckData::Default => match find_default_check_data() {
            Some(p) => p,
            None => {
                let note =
                    format!("{DEFAULT_CHECK_DATA} not found here or above the executable; synthetic images used");
                return Ok(synthetic_images(count, Some(note)));
            }
        },
    };
    let err = |source| ExportError::CheckData { path: path.clone(), source };
    let ds = data::load(&path, data::Split::Train).map_err(err)?;
    if ds.is_empty() {
        return Err(ExportError::CheckDataEmpty(path));
    }
    let (indices, description) = match &ds.labels {
        Some(labels) => (
            data::stratified_split(labels, data::VAL_FRACTION, data::SPLIT_SEED).1,
            format!("the validation split of {}", ds.source),
        ),
        None => ((0..ds.len()).collect(), format!("the first rows of {} (unlabelled)", ds.source)),
    };
    let indices: Vec<usize> = indices.into_iter().take(count).collect();
    if indices.is_empty() {
        return Err(ExportError::CheckDataEmpty(path));
    }
    Ok(CheckImages { pixels: ds.to_f32(&indices), n: indices.len(), description, note: None })
}

/// [`CheckReport::data`] for synthetic images.
pub const SYNTHETIC: &str = "synthetic strokes";

/// Digit-like images without data: a few random bright strokes on black, the same every run.
fn synthetic_images(count: usize, note: Option<String>) -> CheckImages {
    let mut rng = data::Rng::new(data::SPLIT_SEED);
    let side = data::IMAGE_SIDE;
    let mut bytes = vec![0u8; count * data::PIXELS];
    for img in bytes.chunks_mut(data::PIXELS) {
        for _ in 0..4 {
            // A random walk from a random point, like a pen stroke.
            let (mut y, mut x) = (4 + rng.below(20) as isize, 4 + rng.below(20) as isize);
            for _ in 0..30 {
                img[y as usize * side + x as usize] = 128 + rng.below(128) as u8;
                let inside = 2..=side as isize - 3;
                y = (y + rng.below(3) as isize - 1).clamp(*inside.start(), *inside.end());
                x = (x + rng.below(3) as isize - 1).clamp(*inside.start(), *inside.end());
            }
        }
    }
    let ds = data::Dataset { images: bytes, labels: None, source: "synthetic".into() };
    let all: Vec<usize> = (0..count).collect();
    CheckImages { pixels: ds.to_f32(&all), n: count, description: SYNTHETIC.into(), note }
}

/// Runs the check on the encoded model `bytes` (`model` is what they encode). Returns the
/// report when every runtime agrees with the reference, [`ExportError::CheckFailed`] (with the
/// report) when one does not, and an error when a runtime cannot load or run the model.
pub fn check_export(
    ckpt: &Checkpoint,
    model: &ModelProto,
    bytes: &[u8],
    opts: &CheckOptions,
) -> Result<CheckReport, ExportError> {
    if opts.images == 0 || opts.max_rel_diff.is_nan() || opts.max_rel_diff < 0.0 {
        return Err(ExportError::InvalidOptions(format!(
            "self-check needs at least one image and a non-negative tolerance, got {} image(s), {:e}",
            opts.images, opts.max_rel_diff
        )));
    }
    let cfg = &ckpt.meta.model;
    let mut report = CheckReport {
        images: 0,
        data: String::new(),
        max_abs_logit: 0.0,
        max_rel_diff_allowed: opts.max_rel_diff,
        runtimes: Vec::new(),
        notes: Vec::new(),
        elapsed: std::time::Duration::ZERO,
    };
    let start = std::time::Instant::now();
    if cfg.image_size != RUNTIME_IMAGE_SIDE {
        report.notes.push(format!(
            "the runtimes load {RUNTIME_IMAGE_SIDE}x{RUNTIME_IMAGE_SIDE} models only; this one takes {s}x{s}",
            s = cfg.image_size
        ));
        return Ok(report);
    }
    let images = check_images(&opts.data, opts.images)?;
    report.notes.extend(images.note.clone());
    report.images = images.n;
    report.data = images.description.clone();

    let weights = |name: &str| ckpt.weights.get(name).map(|t| t.data.as_slice());
    let reference = models::reference::forward(&ckpt.graph, cfg, &weights, &images.pixels, images.n)
        .map_err(ExportError::Reference)?;
    report.max_abs_logit = reference.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));

    // The runtimes' loader wants a dynamic batch; a fixed-batch export is checked as a copy
    // whose only change is that dimension (nodes and weights are the bytes written).
    let dynamic;
    let bytes = if is_fixed_batch(model) {
        report.notes.push("fixed batch size: checked a copy with a dynamic batch dimension".into());
        dynamic = crate::encode(&with_dynamic_batch(model))?;
        &dynamic
    } else {
        bytes
    };
    let scratch = Scratch::write(bytes)?;

    for backend in [BackendKind::Tract, BackendKind::Ort] {
        let runtime_err = |source: InferError| ExportError::CheckRuntime { backend, source: Box::new(source) };
        let loaded = match inference::Model::load(&scratch.path, backend, opts.threads) {
            Ok(m) => m,
            // Optional by design: the exporter must work where only tract is available.
            Err(InferError::OrtUnavailable { tried, reason }) => {
                let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                report.notes.push(format!(
                    "{backend} not checked: ONNX Runtime is unavailable ({reason}; tried {}); run scripts/setup.sh or set ORT_DYLIB_PATH",
                    tried.join(", ")
                ));
                continue;
            }
            Err(e @ InferError::BackendNotCompiled { .. }) => {
                report.notes.push(format!("{backend} not checked: {e}"));
                continue;
            }
            Err(e) => return Err(runtime_err(e)),
        };
        let logits = loaded.run(&images.pixels, images.n).map_err(runtime_err)?;
        report.runtimes.push(compare(backend, &reference, &logits, cfg.num_classes));
    }
    report.elapsed = start.elapsed();
    if report.passed() {
        Ok(report)
    } else {
        Err(ExportError::CheckFailed(Box::new(report)))
    }
}

fn compare(backend: BackendKind, reference: &[f32], got: &[f32], classes: usize) -> RuntimeCheck {
    // NaN fails the check (`runtime_passed` is false for it): a length mismatch, or a NaN or
    // an infinity on either side. An infinite reference logit would otherwise make the allowed
    // difference infinite, and any output pass.
    let max_abs_diff = models::approx::max_abs_diff(got, reference).unwrap_or(f64::NAN);
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
    let argmax_agree =
        reference.chunks(classes).zip(got.chunks(classes)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    RuntimeCheck { backend, max_abs_diff, argmax_agree }
}

fn batch_dims(model: &ModelProto) -> impl Iterator<Item = &dimension::Value> {
    model.graph.iter().flat_map(|g| g.input.iter().chain(&g.output)).filter_map(|v| {
        match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.shape.as_ref()?.dim.first()?.value.as_ref(),
            _ => None,
        }
    })
}

fn is_fixed_batch(model: &ModelProto) -> bool {
    batch_dims(model).any(|d| matches!(d, dimension::Value::DimValue(_)))
}

fn with_dynamic_batch(model: &ModelProto) -> ModelProto {
    let mut m = model.clone();
    for v in m.graph.iter_mut().flat_map(|g| g.input.iter_mut().chain(g.output.iter_mut())) {
        if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                d.value = Some(dimension::Value::DimParam(BATCH_DIM.into()));
            }
        }
    }
    m
}

/// The bytes under test, in a private temporary file (the runtimes load from a path), removed
/// when dropped; the output path is not touched until the check has passed.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn write(bytes: &[u8]) -> Result<Scratch, ExportError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name =
            format!("exporter-check-{}-{nanos}-{}.onnx", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        // create_new: never follow or reuse a file someone else put there.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| ExportError::Scratch { path: path.clone(), source })?;
        let scratch = Scratch { path };
        f.write_all(bytes).map_err(|source| ExportError::Scratch { path: scratch.path.clone(), source })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path); // best effort: it is in the temp folder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_images_are_deterministic_and_not_blank() {
        let a = check_images(&CheckData::Synthetic, 16).unwrap();
        let b = check_images(&CheckData::Synthetic, 16).unwrap();
        assert_eq!(a.pixels, b.pixels);
        assert_eq!(a.pixels.len(), 16 * 784);
        for img in a.pixels.chunks(784) {
            let lit = img.iter().filter(|&&p| p > 0.0).count();
            assert!((20..400).contains(&lit), "{lit} lit pixels");
        }
        assert_ne!(a.pixels[..784], a.pixels[784..1568]);
    }

    #[test]
    fn report_tolerance_scales_with_the_logits_and_nan_fails() {
        let mut r = CheckReport {
            images: 2,
            data: "x".into(),
            max_abs_logit: 2.0,
            max_rel_diff_allowed: 1e-5,
            runtimes: vec![RuntimeCheck { backend: BackendKind::Tract, max_abs_diff: 1.9e-5, argmax_agree: 2 }],
            notes: vec![],
            elapsed: std::time::Duration::ZERO,
        };
        assert!(r.passed());
        r.runtimes[0].max_abs_diff = 2.1e-5; // above 1e-5 * 2.0
        assert!(!r.passed());
        r.max_abs_logit = 100.0; // 1e-3 allowed now
        assert!(r.passed());
        r.runtimes[0].max_abs_diff = 1.1e-3;
        assert!(!r.passed());
        r.runtimes[0].max_abs_diff = f64::NAN;
        assert!(!r.passed());
        assert!(compare(BackendKind::Tract, &[1.0, 2.0, 3.0], &[f32::NAN, 2.0, 3.0], 3).max_abs_diff.is_nan());
    }

    #[test]
    fn non_finite_logits_on_either_side_fail_the_check() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for (reference, got) in [([bad, 1.0], [0.0, 1.0]), ([0.0, 1.0], [bad, 1.0]), ([bad, 1.0], [bad, 1.0])] {
                let r = compare(BackendKind::Ort, &reference, &got, 2);
                assert!(r.max_abs_diff.is_nan(), "{reference:?} vs {got:?}: {r:?}");
            }
        }
        // The hole this closes: an infinite reference logit made the allowed difference
        // infinite (1e-5 * inf), and an infinite difference "within" it.
        let report = CheckReport {
            images: 1,
            data: "x".into(),
            max_abs_logit: f64::INFINITY,
            max_rel_diff_allowed: 1e-5,
            runtimes: vec![compare(BackendKind::Tract, &[f32::INFINITY, 1.0], &[0.0, 1.0], 2)],
            notes: vec![],
            elapsed: std::time::Duration::ZERO,
        };
        assert!(!report.passed(), "{report}");
        assert!(compare(BackendKind::Tract, &[1.0, 2.0], &[1.0], 2).max_abs_diff.is_nan(), "length mismatch");
    }
}

/// `compare`'s counts, image by image (cargo mutants: the argmax rule and the agreement filter
/// could change without a test noticing, the logits of a healthy export agree either way).
#[cfg(test)]
mod compare_tests {
    use super::*;

    fn agree(reference: &[f32], got: &[f32]) -> usize {
        compare(BackendKind::Tract, reference, got, 3).argmax_agree
    }

    #[test]
    fn argmax_agreement_uses_the_first_maximum() {
        // Same top class, different bottom class: an argmin would disagree.
        assert_eq!(agree(&[0.0, 1.0, 5.0], &[1.0, 0.0, 5.0]), 1);
        // A tie on the reference side goes to its first class, as on the runtime side.
        assert_eq!(agree(&[2.0, 2.0, 0.0], &[2.0, 1.9, 0.0]), 1);
        // Different top classes do not count.
        assert_eq!(agree(&[0.0, 3.0, 1.0], &[0.0, 1.0, 3.0]), 0);
        // Counted per image of `classes` logits.
        let (reference, got) = ([0.0, 1.0, 5.0, 0.0, 3.0, 1.0], [1.0, 0.0, 5.0, 0.0, 1.0, 3.0]);
        assert_eq!(agree(&reference, &got), 1);
    }

    #[test]
    fn max_abs_diff_is_the_largest_difference() {
        let r = compare(BackendKind::Tract, &[1.0, -2.0, 3.0], &[1.5, -2.25, 3.0], 3);
        assert_eq!(r.max_abs_diff, 0.5);
    }
}

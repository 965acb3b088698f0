//! Inference for the Digit Recognizer pipeline: runs exported ONNX classifiers and
//! writes Kaggle submissions (`data -> models -> trainer -> exporter -> inference`).
//!
//! * [`Model`] loads an ONNX file once on a [`BackendKind`] — tract (pure Rust, always
//!   there) or ONNX Runtime (`ort`, `ort-cuda`; libonnxruntime loaded at run time) —
//!   checks the pipeline's contract (input `input` `[N,1,28,28]` = pixel/255, output
//!   `logits` `[N,classes]`) and runs batches with [`Model::run`] (or
//!   [`Model::run_into`], which appends to a caller's buffer).
//! * [`predict`] / [`predict_ensemble`] run a whole [`data::Dataset`], timing each batch;
//!   [`BatchStats`] / [`Timings`] summarise the times.
//! * [`majority_vote`] / [`soft_vote`] combine ensemble members; [`disagreements`]
//!   reports where they differ; [`evaluate`] scores labelled data.
//! * [`serve`] (cargo feature `serve`): the models behind an HTTP API, for `infer serve`.
//! * [`cli`]: command-line pieces the pipeline's binaries share (tracking URI, error lines,
//!   the model flags of `infer` and `infer serve`).

pub mod cli;
mod contract;
mod error;
mod eval;
mod model;
#[cfg(feature = "ort")]
mod ort_backend;
mod predict;
mod probs;
mod registry;
mod resolve;
#[cfg(feature = "serve")]
pub mod serve;
mod timing;
mod tract_backend;
mod tract_depthwise;
mod vote;

pub use error::{BoxError, InferError};
pub use eval::{evaluate, ClassAccuracy, Evaluation};
pub use model::{default_threads, BackendKind, Model};
#[cfg(feature = "ort")]
pub use ort_backend::{ort_library, ort_library_candidates, ORT_DYLIB_ENV, ORT_MIN_MINOR};
pub use predict::{
    predict, predict_ensemble, predict_ensemble_with, predict_with, shift_image, EnsemblePrediction, PredictOptions,
    Prediction, TTA_SHIFTS,
};
pub use probs::{mean_probabilities, probabilities_csv};
pub use registry::{default_cache_dir, fetch_model_uri, is_model_uri, RegistryModel, DEFAULT_ALIAS};
pub use resolve::{
    choose_backend, resolve_member_in, resolve_model, BackendChoice, MemberNotFound, ResolveOptions, ResolvedModel,
    DEFAULT_MODELS_DIRS,
};
pub use timing::{percentile, BatchStats, Concurrency, Timings, WallTime};
pub use tract_backend::{TRACT_CHUNK_ENV, TRACT_LAYOUT_ENV};
pub use vote::{
    argmax, disagreements, labels_from_logits, majority_vote, soft_vote, softmax, Disagreement, DisagreementExample,
    DISAGREEMENT_EXAMPLES,
};

/// Oldest ONNX Runtime minor version (`1.x`) the `ort` crate accepts (for messages).
#[cfg(not(feature = "ort"))]
pub const ORT_MIN_MINOR: u32 = 0;

/// Side of the square input images.
pub const IMAGE_SIDE: usize = data::IMAGE_SIDE;
/// Floats per input image (`1 * 28 * 28`).
pub const PIXELS: usize = data::PIXELS;

//! Checkpoint -> ONNX, the `exporter` stage of `data -> models -> trainer -> exporter -> inference`.
//!
//! [`lower`] walks a [`models::Graph`] once and emits ONNX nodes for it with the checkpoint's
//! weights, so every architecture of the zoo exports without per-architecture code.
//! [`export_checkpoint`] does the whole job for a checkpoint directory
//! (`model.safetensors` + `config.json`) and writes the file atomically;
//! [`export_checkpoint_checked`] first runs the encoded bytes through tract and ONNX Runtime
//! and compares them with `models::reference::forward` on the unfolded weights ([`check`]).
//!
//! The exported model's contract, whatever the architecture or training config:
//! input `input` float32 `[N,1,H,W]` holding pixel/255 (the config's normalisation and channel
//! repetition are part of the graph), output `logits` float32 `[N,num_classes]`.
//! [`mlflow`] packs the result as an MLflow model directory.
//!
//! The ONNX protobuf types ([`onnx`]) are generated from the official `onnx.proto` by
//! `proto/regen.sh` and committed, so building needs neither protoc nor a build script.

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
#[rustfmt::skip] // generated: proto/regen.sh writes it as prost-build formats it
pub mod onnx;

pub mod check;
mod error;
mod lower;
pub mod mlflow;

use std::path::{Path, PathBuf};

use models::{CheckpointMeta, Graph, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};
use prost::Message;

pub use check::{check_export, CheckData, CheckOptions, CheckReport, RuntimeCheck, CHECK_MAX_REL_DIFF};
pub use error::{ExportError, ShapeMismatch, WeightsMismatch};
pub use lower::{
    ir_version_for_opset, lower, lower_with_stats, model_metadata, ExportOptions, LowerStats, BATCH_DIM, CONST_PREFIX,
    DEFAULT_OPSET, INPUT_NAME, MAX_OPSET, MIN_OPSET, OUTPUT_NAME, PRODUCER_NAME, PRODUCER_VERSION,
};
#[doc(hidden)]
pub use lower::{Fault, FAULT_BIAS_DELTA};
pub use models::{Tensor, Weights};

/// Protobuf messages cannot exceed 2 GiB.
const MAX_PROTO_BYTES: usize = i32::MAX as usize;

/// A checkpoint directory, loaded and checked.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    pub graph: Graph,
    pub weights: Weights,
}

/// Reads `<dir>/config.json` and `<dir>/model.safetensors` and checks that the weights are
/// exactly the architecture's parameters.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint, ExportError> {
    if !dir.exists() {
        return Err(ExportError::MissingCheckpoint(dir.to_path_buf()));
    }
    if !dir.is_dir() {
        return Err(ExportError::NotADirectory(dir.to_path_buf()));
    }
    let meta = CheckpointMeta::load(&dir.join(CHECKPOINT_META_FILE))?;
    let graph = models::build(&meta.model)?;
    let weights = Weights::read(&dir.join(CHECKPOINT_WEIGHTS_FILE))?;
    weights.check(&graph, meta.model.arch.name())?;
    Ok(Checkpoint { dir: dir.to_path_buf(), meta, graph, weights })
}

/// What [`export_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub path: PathBuf,
    /// Size of the ONNX file.
    pub bytes: u64,
    pub nodes: usize,
    pub initializers: usize,
    pub stats: LowerStats,
    pub opset: i64,
    pub meta: CheckpointMeta,
    /// The self-check's measurements (`None` when it was not asked for).
    pub check: Option<CheckReport>,
}

/// Serialises the model, refusing what protobuf readers would reject.
pub fn encode(model: &onnx::ModelProto) -> Result<Vec<u8>, ExportError> {
    let len = model.encoded_len();
    if len > MAX_PROTO_BYTES {
        return Err(ExportError::TooLarge { bytes: len });
    }
    Ok(model.encode_to_vec())
}

/// Exports the checkpoint in `dir` to the ONNX file `out`, written atomically: on any error
/// `out` is left as it was (absent, or the previous file). No self-check; see
/// [`export_checkpoint_checked`].
pub fn export_checkpoint(dir: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    export_checkpoint_checked(dir, out, opts, None)
}

/// [`export_checkpoint`], and with `check` the self-check ([`check_export`]) runs on the
/// encoded bytes before they are written: if a runtime disagrees with the reference
/// evaluation of the checkpoint, or cannot run the model, the error says by how much and
/// `out` is not touched.
pub fn export_checkpoint_checked(
    dir: &Path,
    out: &Path,
    opts: &ExportOptions,
    check: Option<&CheckOptions>,
) -> Result<ExportReport, ExportError> {
    opts.validate()?;
    let ckpt = load_checkpoint(dir)?;
    let (model, stats) = lower_with_stats(&ckpt.graph, &ckpt.meta, &ckpt.weights, opts)?;
    let bytes = encode(&model)?;
    let check = check.map(|c| check_export(&ckpt, &model, &bytes, c)).transpose()?;
    data::atomic_write(out, &bytes).map_err(|source| ExportError::Write { path: out.to_path_buf(), source })?;
    let g = model.graph.as_ref();
    Ok(ExportReport {
        path: out.to_path_buf(),
        bytes: bytes.len() as u64,
        nodes: g.map_or(0, |g| g.node.len()),
        initializers: g.map_or(0, |g| g.initializer.len()),
        stats,
        opset: opts.opset,
        meta: ckpt.meta,
        check,
    })
}

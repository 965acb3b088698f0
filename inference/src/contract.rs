//! The pipeline's ONNX contract as both backends check it: the opset range, the input
//! `input` `[N,1,28,28]` with a dynamic batch, the output `[N,classes]`. A module of its own so
//! that `model` (which picks a backend) and the backends (which read the declared shapes)
//! depend on it and not on each other.

use std::path::Path;

use crate::InferError;
use models::contract::INPUT_NAME;

/// A contract error about the model at `path`.
pub(crate) fn contract_error(path: &Path, message: impl Into<String>) -> InferError {
    InferError::Contract { path: path.to_path_buf(), message: message.into() }
}

/// Formats a shape with `?` for unknown dimensions, for contract errors.
pub(crate) fn fmt_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(","))
}

/// ONNX opsets (of the default domain) a model may declare: from 7, the oldest ONNX Runtime
/// supports, to 26, the newest the exporter writes. Outside it a backend refuses the model
/// with a long message (ONNX Runtime), or reads it with other operator semantics (tract).
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=models::contract::MAX_OPSET;

/// Refuses a model declaring an opset outside [`OPSETS`]. A file that does not decode is
/// left to the backend, whose error says why.
pub(crate) fn check_opset(path: &Path) -> Result<(), InferError> {
    use tract_onnx::prelude::Framework;
    let Ok(proto) = tract_onnx::onnx().proto_model_for_path(path) else { return Ok(()) };
    match proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
        Some(o) if OPSETS.contains(&o.version) => Ok(()),
        found => Err(contract_error(
            path,
            format!(
                "declares ONNX opset {}, expected {}..={} (the exporter writes 17)",
                found.map_or_else(|| "none".to_string(), |o| o.version.to_string()),
                OPSETS.start(),
                OPSETS.end()
            ),
        )),
    }
}

/// Checks a declared input's name and shape against `input` `[N,1,28,28]` with a dynamic
/// `N`. `None` is an unknown (symbolic) dimension.
pub(crate) fn check_input_dims(path: &Path, name: &str, dims: &[Option<i64>]) -> Result<(), InferError> {
    if name != INPUT_NAME {
        return Err(contract_error(
            path,
            format!("input is named `{name}`, expected `{INPUT_NAME}` [N,1,28,28] (pixel/255)"),
        ));
    }
    let side = crate::IMAGE_SIDE as i64;
    let ok_tail = dims.len() == 4 && dims[1] == Some(1) && dims[2] == Some(side) && dims[3] == Some(side);
    if !ok_tail {
        return Err(contract_error(
            path,
            format!("input `{name}` has shape {}, expected [N,1,28,28] (gray 28x28 images, pixel/255)", fmt_dims(dims)),
        ));
    }
    if let Some(b) = dims[0] {
        return Err(contract_error(
            path,
            format!(
                "input `{name}` has a fixed batch size of {b}, expected a dynamic batch [N,1,28,28] \
                 (export with dynamic_axes={{\"input\": {{0: \"N\"}}}})"
            ),
        ));
    }
    Ok(())
}

/// Checks a declared output shape `[N,classes]` and returns `classes`.
pub(crate) fn check_output_dims(path: &Path, name: &str, dims: &[Option<i64>]) -> Result<usize, InferError> {
    match dims {
        [_, Some(c)] if *c > 0 => Ok(*c as usize),
        _ => Err(contract_error(
            path,
            format!("output `{name}` has shape {}, expected [N,classes] logits", fmt_dims(dims)),
        )),
    }
}

//! The ONNX side of the model contract: what every exported model is called at its edges.
//!
//! The exporter writes these names and the runtimes refuse a model without them, so they are
//! defined once here rather than by each side.

/// Name of the graph input: float32 `[N, 1, 28, 28]` gray images holding pixel/255.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output: float32 `[N, classes]` class scores (logits).
pub const OUTPUT_NAME: &str = "logits";
/// `dim_param` of the batch dimension when it is dynamic.
pub const BATCH_DIM: &str = "N";
/// Newest ONNX opset the exporter writes and the runtimes accept (the pinned onnxruntime loads it).
pub const MAX_OPSET: i64 = 26;

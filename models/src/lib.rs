//! The model zoo as data.
//!
//! Each architecture is described ONCE, as a [`Graph`] of layers whose parameter paths are
//! torchvision's `state_dict` keys (`layer1.0.downsample.0.weight`). The trainer lowers the
//! graph to tch modules and the exporter lowers the same graph to ONNX nodes, so no network is
//! ever written twice. This crate has no heavy dependency: serving never needs libtorch.

pub mod approx;
mod config;
pub mod contract;
mod error;
pub mod graph;
pub mod reference;
pub mod weights;
pub mod zoo;

pub use config::{CheckpointMeta, ModelConfig, Normalization, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};
pub use error::ModelsError;
pub use graph::{Act, BatchNorm, Conv2d, Graph, Init, Linear, MaxPool2d, Node, Op, ParamKind, ParamSpec, ValueId};
pub use weights::{ShapeMismatch, Tensor, Weights, WeightsMismatch};
pub use zoo::Arch;

/// Builds the graph described by `config` (architecture, input channels, classes, image size).
pub fn build(config: &ModelConfig) -> Result<Graph, ModelsError> {
    config.validate()?;
    Ok(zoo::build(config))
}

//! Training for the Digit Recognizer pipeline on libtorch (tch).
//!
//! * [`net`] lowers any [`models::Graph`] to tch variables named as torchvision's state_dict
//!   and runs it; there is no per-architecture code here.
//! * [`checkpoint`] writes and reads checkpoint directories (`model.safetensors` +
//!   `config.json`), the contract the exporter and inference read.
//! * [`pretrained`] starts a network from torchvision weights (`--pretrained`).
//! * [`train`] is the seed project's recipe with MLflow tracking, behind the `trainer` binary.

pub mod checkpoint;
mod error;
pub mod net;
pub mod pretrained;
pub mod train;

pub use checkpoint::{load_checkpoint, load_weights, save_checkpoint, save_weights, PRODUCER};
pub use error::{Result, TrainerError};
pub use net::{Model, Net};
pub use pretrained::{load_pretrained, PretrainedReport};
pub use train::{resolve_device, train, DeviceChoice, EpochStats, TrainOptions, TrainReport};

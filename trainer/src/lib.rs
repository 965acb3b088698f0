//! Training for the Digit Recognizer pipeline on libtorch (tch).
//!
//! * [`net`] lowers any [`models::Graph`] to tch variables named as torchvision's state_dict
//!   and runs it; there is no per-architecture code here.
//! * [`checkpoint`] writes and reads checkpoint directories (`model.safetensors` +
//!   `config.json`), the contract the exporter and inference read.
//! * [`pretrained`] starts a network from torchvision weights (`--pretrained`).
//! * [`recipe`] holds every hyperparameter (`--recipe seed|strong` and the flags);
//!   [`optim`] Adam/AdamW and the weight EMA with checkpointable state; [`augment`] the
//!   on-device random affine (and optional elastic) augmentation; [`loader`] the
//!   training set held on the training device; [`amp`] bf16 autocast.
//! * [`options`] is what one run is (its resolved options, an epoch's numbers, the report);
//!   [`train`] runs, checkpoints, resumes and tracks a training (the `trainer` binary);
//!   [`state`] is what a resume reads, [`report`] the confusion matrix artifacts.

pub mod amp;
pub mod augment;
pub mod checkpoint;
mod error;
pub mod fault;
pub mod loader;
pub mod net;
pub mod optim;
pub mod options;
pub mod pretrained;
pub mod recipe;
pub mod report;
pub mod state;
pub mod train;

pub use checkpoint::{load_checkpoint, load_weights, save_checkpoint, save_weights, PRODUCER};
pub use error::{Result, TrainerError};
pub use net::{Model, Net};
pub use options::{resolve_device, DeviceChoice, EpochStats, MemoryFormat, TrainOptions, TrainReport};
pub use pretrained::{load_pretrained, PretrainedReport};
pub use recipe::{Hyper, Keep, OptimizerKind, Recipe, Schedule};
pub use train::{resume, train, ResumeOverrides};

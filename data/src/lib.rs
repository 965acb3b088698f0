//! Kaggle "Digit Recognizer" (MNIST as CSV) data for the pipeline
//! `data -> models -> trainer -> exporter -> inference`.
//!
//! * [`load`] reads `train.csv` / `test.csv` from the Kaggle zip, a folder, or a CSV file,
//!   validating every row (errors name file, line and column: bad data must never reach a
//!   model silently).
//! * [`Dataset`] keeps raw `u8` pixels (4x smaller than `f32`); [`Dataset::to_f32`] applies
//!   the one input normalisation every crate must share (`pixel / 255`).
//! * [`stratified_split`] and [`Rng`] give a deterministic, seedable train/validation split.
//! * [`write_submission`], [`atomic_write`] and [`atomic_write_with`] write files so that
//!   a crash never leaves a half-written submission, checkpoint or model behind.

mod csv;
mod dataset;
mod error;
mod rng;
mod source;
mod split;
mod write;

pub use csv::parse_csv;
pub use dataset::Dataset;
pub use error::DataError;
pub use rng::Rng;
pub use source::{load, load_csv, Split};
pub use split::{stratified_split, SPLIT_SEED, VAL_FRACTION};
pub use write::{atomic_write, atomic_write_in, atomic_write_with, read_submission, write_csv, write_submission};

/// Width and height of one digit image, in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image (`IMAGE_SIDE * IMAGE_SIDE`): the length of one row of [`Dataset::images`].
pub const PIXELS: usize = 784;
/// Number of digit classes (labels are `0..=9`).
pub const NUM_CLASSES: usize = 10;

const _: () = assert!(IMAGE_SIDE * IMAGE_SIDE == PIXELS);

/// Kaggle's name of pixel column `i` (`pixel0`..`pixel783`), read and written alike.
pub(crate) fn pixel_column(i: usize) -> String {
    format!("pixel{i}")
}

//! The in-memory data set.

use crate::{NUM_CLASSES, PIXELS};

/// A set of 28x28 grey-scale digits, optionally labelled.
///
/// Pixels stay raw `u8` (what the CSV holds, 4x smaller than `f32`); convert a batch with
/// [`Dataset::to_f32`] so every crate applies the same normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * PIXELS` bytes, image after image, each row-major, values `0..=255`.
    pub images: Vec<u8>,
    /// One label `0..=9` per image for labelled data (`train.csv`), `None` for `test.csv`.
    pub labels: Option<Vec<u8>>,
    /// Human name of where the data came from, e.g. `digit-recognizer.zip:train.csv`.
    pub source: String,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len() / PIXELS
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `PIXELS` bytes of image `i` (row-major).
    ///
    /// # Panics
    /// If `i >= len()` (a caller bug, like slice indexing); use [`Dataset::get`] otherwise.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Image `i`, or `None` when out of range.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.images.get(i.checked_mul(PIXELS)?..i.checked_add(1)?.checked_mul(PIXELS)?)
    }

    /// Label of image `i`; `None` for unlabelled data or an index out of range.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.as_ref()?.get(i).copied()
    }

    /// Number of images per class, or `None` for unlabelled data. Labels above 9 cannot
    /// come out of the parser; if set by hand they are not counted.
    pub fn class_counts(&self) -> Option<[usize; NUM_CLASSES]> {
        let labels = self.labels.as_ref()?;
        let mut counts = [0usize; NUM_CLASSES];
        for &l in labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        Some(counts)
    }

    /// A new data set holding the images (and labels) at `indices`, in that order
    /// (repeats allowed). `source` is kept so logs still say where the rows came from.
    ///
    /// # Panics
    /// If an index is `>= len()` (a caller bug; indices come from [`crate::stratified_split`]
    /// or `0..len()`).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect());
        Dataset { images, labels, source: self.source.clone() }
    }

    /// The images at `indices` as model input: `indices.len() * PIXELS` floats, each
    /// `pixel as f32 / 255.0` (exactly, so it matches numpy/PyTorch's `x / 255`).
    ///
    /// This is the single place the input normalisation is defined; trainer, exporter
    /// and inference all call it.
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn to_f32(&self, indices: &[usize]) -> Vec<f32> {
        let mut lut = [0f32; 256];
        for (v, slot) in lut.iter_mut().enumerate() {
            *slot = v as f32 / 255.0;
        }
        let mut out = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            out.extend(self.image(i).iter().map(|&p| lut[usize::from(p)]));
        }
        out
    }
}

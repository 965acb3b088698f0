//! A loader thread that turns the next batches of an epoch into tensors (gather + u8 -> f32)
//! while the device computes the current one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use tch::Tensor;

/// Batches of one epoch, in order; dropping it stops the thread.
pub struct Loader {
    rx: Option<Receiver<(Tensor, Tensor)>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Batches of `batch_size` images of `ds` in `order` (`[b,1,28,28]` pixel/255 on the CPU,
    /// int64 labels). A last batch of one image is dropped: training-mode BatchNorm cannot
    /// normalise it. `ds` must be labelled.
    pub fn spawn(ds: Arc<data::Dataset>, order: Vec<usize>, batch_size: usize) -> Loader {
        // Two batches ahead is enough to hide the copy; more only holds memory.
        let (tx, rx) = sync_channel(2);
        let handle = std::thread::spawn(move || {
            let labels = ds.labels.as_ref().expect("training data is labelled");
            let side = data::IMAGE_SIDE as i64;
            for chunk in order.chunks(batch_size).filter(|c| c.len() >= 2) {
                let x = Tensor::from_slice(&ds.to_f32(chunk)).reshape([chunk.len() as i64, 1, side, side]);
                let y: Vec<i64> = chunk.iter().map(|&i| i64::from(labels[i])).collect();
                if tx.send((x, Tensor::from_slice(&y))).is_err() {
                    return; // the epoch was abandoned
                }
            }
        });
        Loader { rx: Some(rx), handle: Some(handle) }
    }

    /// Number of batches `spawn` yields for `n` images.
    pub fn batches(n: usize, batch_size: usize) -> usize {
        n / batch_size + usize::from(n % batch_size >= 2)
    }
}

impl Iterator for Loader {
    type Item = (Tensor, Tensor);
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel first unblocks a thread waiting to send.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

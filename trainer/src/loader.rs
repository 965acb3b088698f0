//! The training set lives on the training device, copied there once; each batch is gathered
//! there by index. Nothing per batch crosses from the host, so a GPU is never fed through the
//! CPU, and the CPU runs the very same code (what the CPU tests check is what a GPU runs).

use tch::{Device, Tensor};

/// A labelled image set on one device: `[N,1,28,28]` pixel/255 as f32, int64 labels.
pub struct DeviceSet {
    x: Tensor,
    y: Tensor,
    len: usize,
}

impl DeviceSet {
    /// Copies `ds` (labelled) to `device`. The pixels are scaled on the host by the same table
    /// as everywhere else (`Dataset::to_f32`), so batches are bit-identical on every device.
    pub fn new(ds: &data::Dataset, device: Device) -> Result<DeviceSet, tch::TchError> {
        let labels = ds.labels.as_ref().expect("training data is labelled");
        let side = data::IMAGE_SIDE as i64;
        let all: Vec<usize> = (0..ds.len()).collect();
        let x =
            Tensor::from_slice(&ds.to_f32(&all)).f_reshape([ds.len() as i64, 1, side, side])?.f_to_device(device)?;
        let y: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let y = Tensor::from_slice(&y).f_to_device(device)?;
        Ok(DeviceSet { x, y, len: ds.len() })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> Device {
        self.x.device()
    }

    /// The batches of one epoch, `batch_size` images in `order` (indices into this set). The
    /// order goes to the device once per epoch. A last batch of one image is dropped:
    /// training-mode BatchNorm cannot normalise it.
    pub fn epoch(&self, order: &[usize], batch_size: usize) -> Result<Batches<'_>, tch::TchError> {
        assert!(batch_size > 0, "batch size is checked by the recipe");
        let order: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        let n = order.len();
        let order = Tensor::from_slice(&order).f_to_device(self.x.device())?;
        Ok(Batches { set: self, order, n, batch_size, start: 0 })
    }

    /// Number of batches [`DeviceSet::epoch`] yields for `n` images.
    pub fn batches(n: usize, batch_size: usize) -> usize {
        n / batch_size + usize::from(n % batch_size >= 2)
    }
}

/// One epoch's batches, gathered on the set's device.
pub struct Batches<'a> {
    set: &'a DeviceSet,
    order: Tensor,
    n: usize,
    batch_size: usize,
    start: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<(Tensor, Tensor), tch::TchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.batch_size.min(self.n - self.start);
        if len < 2 {
            return None;
        }
        let start = self.start;
        self.start += len;
        let gather = || -> Result<(Tensor, Tensor), tch::TchError> {
            let idx = self.order.f_narrow(0, start as i64, len as i64)?;
            Ok((self.set.x.f_index_select(0, &idx)?, self.set.y.f_index_select(0, &idx)?))
        };
        Some(gather())
    }
}

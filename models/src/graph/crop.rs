//! Kernel taps that can never touch real input. At 28x28, resnet's last stage runs 3x3
//! convolutions on 1x1 maps: eight of the nine taps only ever multiply the zero padding, so
//! they add exactly 0 to every output and receive exactly 0 gradient. A lowering may drop
//! them (a 3x3 convolution on a 1x1 map becomes a 1x1 one) and get the same maths from a
//! smaller product; the stored weights keep torchvision's shape either way.

use super::{Graph, Op};

/// The taps `first..first + len` of one kernel axis that are kept, and the padding they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisCrop {
    pub first: usize,
    pub len: usize,
    pub pad_before: usize,
    pub pad_after: usize,
}

impl AxisCrop {
    /// Whether tap `t` of the axis is kept.
    pub fn keeps(&self, t: usize) -> bool {
        (self.first..self.first + self.len).contains(&t)
    }
}

/// Which taps of a `kernel`-wide window (stride, dilation, `pad_before`) over an input of
/// `len` producing `out` positions ever read real input. `None` when no crop is possible
/// without changing the output (or the geometry is degenerate).
pub fn crop_axis(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_before: usize,
    out: usize,
) -> Option<AxisCrop> {
    if len == 0 || kernel == 0 || out == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let touches = |t: usize| {
        (0..out).any(|o| {
            let p = (o * stride + t * dilation) as isize - pad_before as isize;
            p >= 0 && (p as usize) < len
        })
    };
    let first = (0..kernel).find(|&t| touches(t))?;
    let last = (0..kernel).rev().find(|&t| touches(t))?;
    // Keeping `first` as tap 0 shifts the window right by first * dilation.
    let pad_before = pad_before.checked_sub(first * dilation)?;
    let kept = last - first + 1;
    let span = (kept - 1) * dilation + 1;
    let pad_after = ((out - 1) * stride + span).saturating_sub(len + pad_before);
    let padded = len + pad_before + pad_after;
    // The cropped window must give exactly the same output positions.
    if padded < span || (padded - span) / stride + 1 != out {
        return None;
    }
    Some(AxisCrop { first, len: kept, pad_before, pad_after })
}

/// The kept taps of a convolution's kernel, per spatial axis `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCrop(pub [AxisCrop; 2]);

impl KernelCrop {
    /// Whether the kernel tap at row `y`, column `x` is kept.
    pub fn keeps(&self, y: usize, x: usize) -> bool {
        self.0[0].keeps(y) && self.0[1].keeps(x)
    }
}

impl Graph {
    /// For node `id`, a convolution whose kernel overhangs its input map, the taps that can
    /// touch real input; `None` for other nodes and for convolutions every tap of which
    /// reads input somewhere.
    pub fn kernel_crop(&self, id: usize) -> Option<KernelCrop> {
        let node = &self.nodes[id];
        let Op::Conv2d(c) = &node.op else { return None };
        let input = &self.nodes[*node.inputs.first()?].shape;
        let (&[_, h, w], &[_, oh, ow]) = (input.as_slice(), node.shape.as_slice()) else { return None };
        let axis = |ax: usize, len, out| crop_axis(len, c.kernel[ax], c.stride[ax], 1, c.padding[ax], out);
        let crop = KernelCrop([axis(0, h, oh)?, axis(1, w, ow)?]);
        (crop.0[0].len < c.kernel[0] || crop.0[1].len < c.kernel[1]).then_some(crop)
    }
}

#[cfg(test)]
mod tests {
    use super::{crop_axis, AxisCrop};
    use crate::{Arch, ModelConfig, Op};

    #[test]
    fn kernel_taps_outside_the_map_are_cropped() {
        // 3x3, pad 1 on a 1x1 map: only the centre tap reads input.
        assert_eq!(crop_axis(1, 3, 1, 1, 1, 1), Some(AxisCrop { first: 1, len: 1, pad_before: 0, pad_after: 0 }));
        // 3x3, stride 2, pad 1 on 2x2 -> 1x1: taps 1 and 2 read input 0 and 1.
        assert_eq!(crop_axis(2, 3, 2, 1, 1, 1), Some(AxisCrop { first: 1, len: 2, pad_before: 0, pad_after: 0 }));
        // Dilation 2, pad 2 on 1x1: the centre tap again.
        assert_eq!(crop_axis(1, 3, 1, 2, 2, 1), Some(AxisCrop { first: 1, len: 1, pad_before: 0, pad_after: 0 }));
        // 3x3, pad 1 on 2x2 -> 2x2: every tap reads input at some output.
        assert_eq!(crop_axis(2, 3, 1, 1, 1, 2), Some(AxisCrop { first: 0, len: 3, pad_before: 1, pad_after: 1 }));
        // 7x7, stride 2, pad 3 on 28 -> 14: nothing to crop; the last padding column is
        // never read, so the padding needed is one less (same output).
        assert_eq!(crop_axis(28, 7, 2, 1, 3, 14), Some(AxisCrop { first: 0, len: 7, pad_before: 3, pad_after: 2 }));
        assert_eq!(crop_axis(0, 3, 1, 1, 1, 1), None);
    }

    #[test]
    fn resnet18_at_28_crops_exactly_its_last_stage_3x3_convolutions() {
        let crops = |size: usize| {
            let g = crate::build(&ModelConfig { image_size: size, ..ModelConfig::new(Arch::Resnet18) }).unwrap();
            (0..g.nodes.len())
                .filter_map(|i| match (&g.nodes[i].op, g.kernel_crop(i)) {
                    (Op::Conv2d(c), Some(k)) => Some((c.name.clone(), k.0.map(|a| a.len))),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // 28 -> 14 -> 7 -> 4 -> 2 -> 1: the stride-2 entry reads a 2x2 map, the rest 1x1.
        let want = [
            ("layer4.0.conv1", [2, 2]),
            ("layer4.0.conv2", [1, 1]),
            ("layer4.1.conv1", [1, 1]),
            ("layer4.1.conv2", [1, 1]),
        ];
        assert_eq!(crops(28), want.map(|(n, k)| (n.to_string(), k)).to_vec());
        // At 224 every map is at least 7x7: nothing to crop.
        assert_eq!(crops(224), vec![]);
    }
}

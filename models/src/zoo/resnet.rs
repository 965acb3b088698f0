//! ResNet with basic blocks (torchvision `resnet18`/`resnet34`), and the same family with a
//! stem fit for 28×28 digits.

use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

pub struct ResnetSpec {
    /// `true`: torchvision's 7×7 stride-2 conv + 3×3 max-pool; `false`: 3×3 stride-1 conv only,
    /// which keeps 28×28 digits at full resolution in the first stage.
    pub imagenet_stem: bool,
    pub stem_width: usize,
    /// (width, blocks, stride) per stage: `layer1`, `layer2`, ...
    pub stages: &'static [(usize, usize, usize)],
}

pub const RESNET18: ResnetSpec =
    ResnetSpec { imagenet_stem: true, stem_width: 64, stages: &[(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)] };
pub const RESNET34: ResnetSpec =
    ResnetSpec { imagenet_stem: true, stem_width: 64, stages: &[(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)] };
pub const RESNET_DIGITS: ResnetSpec =
    ResnetSpec { imagenet_stem: false, stem_width: 32, stages: &[(32, 2, 1), (64, 2, 2), (128, 2, 2)] };

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize, spec: &ResnetSpec) -> Graph {
    let (mut g, mut x) = start;
    let stem = if spec.imagenet_stem { ConvOpts::k(7).stride(2).pad(3) } else { ConvOpts::k(3).pad(1) };
    x = g.conv(x, "conv1", spec.stem_width, stem);
    x = g.bn(x, "bn1", EPS, MOMENTUM);
    x = g.act(x, Act::Relu);
    if spec.imagenet_stem {
        x = g.max_pool(x, 3, 2, 1, false);
    }
    for (i, &(width, blocks, stride)) in spec.stages.iter().enumerate() {
        for b in 0..blocks {
            x = basic_block(&mut g, x, &format!("layer{}.{b}", i + 1), width, if b == 0 { stride } else { 1 });
        }
    }
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    // nn.Linear's default init (ResNet does not re-initialise fc).
    let features = g.shape(x)[0];
    let init = Init::torch_default(&[num_classes, features]);
    x = g.linear(x, "fc", num_classes, true, init, init);
    g.finish(x)
}

fn basic_block(g: &mut GraphBuilder, x: ValueId, p: &str, width: usize, stride: usize) -> ValueId {
    let mut y = g.conv(x, &format!("{p}.conv1"), width, ConvOpts::k(3).stride(stride).pad(1));
    y = g.bn(y, &format!("{p}.bn1"), EPS, MOMENTUM);
    y = g.act(y, Act::Relu);
    y = g.conv(y, &format!("{p}.conv2"), width, ConvOpts::k(3).pad(1));
    y = g.bn(y, &format!("{p}.bn2"), EPS, MOMENTUM);
    // After the main branch, so parameters come in torchvision's state_dict order.
    let identity = if stride != 1 || g.channels(x) != width {
        let d = g.conv(x, &format!("{p}.downsample.0"), width, ConvOpts::k(1).stride(stride));
        g.bn(d, &format!("{p}.downsample.1"), EPS, MOMENTUM)
    } else {
        x
    };
    let sum = g.add(y, identity);
    g.act(sum, Act::Relu)
}

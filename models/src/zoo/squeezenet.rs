//! SqueezeNet 1.0 and 1.1 (torchvision `squeezenet1_0`, `squeezenet1_1`).

use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// One entry of `features`, indexed as torchvision's `nn.Sequential` indexes it.
#[derive(Clone, Copy)]
pub enum Layer {
    /// First conv (+ ReLU, which takes the next index): out channels, kernel, stride.
    Stem(usize, usize, usize),
    /// 3×3 stride-2 max-pool with `ceil_mode=True`.
    Pool,
    /// Fire(squeeze, expand1x1, expand3x3).
    Fire(usize, usize, usize),
}
use Layer::{Fire, Pool, Stem};

pub const V1_0: [Layer; 12] = [
    Stem(96, 7, 2),
    Pool,
    Fire(16, 64, 64),
    Fire(16, 64, 64),
    Fire(32, 128, 128),
    Pool,
    Fire(32, 128, 128),
    Fire(48, 192, 192),
    Fire(48, 192, 192),
    Fire(64, 256, 256),
    Pool,
    Fire(64, 256, 256),
];
pub const V1_1: [Layer; 12] = [
    Stem(64, 3, 2),
    Pool,
    Fire(16, 64, 64),
    Fire(16, 64, 64),
    Pool,
    Fire(32, 128, 128),
    Fire(32, 128, 128),
    Pool,
    Fire(48, 192, 192),
    Fire(48, 192, 192),
    Fire(64, 256, 256),
    Fire(64, 256, 256),
];

/// SqueezeNet initialises every conv with `kaiming_uniform_` except the final one.
fn conv(g: &mut GraphBuilder, x: ValueId, name: &str, out: usize, o: ConvOpts) -> ValueId {
    let shape = [out, g.channels(x), o.kernel, o.kernel];
    g.conv_init(x, name, out, o.bias(), Init::kaiming_uniform_fan_in(&shape), Init::ZEROS)
}

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize, layers: &[Layer]) -> Graph {
    let (mut g, mut x) = start;
    let mut index = 0;
    for &layer in layers {
        let p = format!("features.{index}");
        match layer {
            Stem(out, k, s) => {
                x = conv(&mut g, x, &p, out, ConvOpts::k(k).stride(s));
                x = g.act(x, Act::Relu);
                index += 1; // the ReLU is its own Sequential entry
            }
            Pool => x = g.max_pool(x, 3, 2, 0, true),
            Fire(squeeze, e1, e3) => {
                let s = conv(&mut g, x, &format!("{p}.squeeze"), squeeze, ConvOpts::k(1));
                let s = g.act(s, Act::Relu);
                let a = conv(&mut g, s, &format!("{p}.expand1x1"), e1, ConvOpts::k(1));
                let a = g.act(a, Act::Relu);
                let b = conv(&mut g, s, &format!("{p}.expand3x3"), e3, ConvOpts::k(3).pad(1));
                let b = g.act(b, Act::Relu);
                x = g.concat(&[a, b]);
            }
        }
        index += 1;
    }
    x = g.dropout(x, 0.5);
    x = g.conv_init(x, "classifier.1", num_classes, ConvOpts::k(1).bias(), Init::Normal { std: 0.01 }, Init::ZEROS);
    x = g.act(x, Act::Relu);
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    g.finish(x)
}

//! MNASNet (torchvision `mnasnet0_5`, `mnasnet0_75`, `mnasnet1_0`, `mnasnet1_3`).

use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// torchvision's `_BN_MOMENTUM = 1 - 0.9997` (TensorFlow's decay, converted).
const MOMENTUM: f64 = 1.0 - 0.9997;
const EPS: f64 = 1e-5;
const BASE_DEPTHS: [usize; 8] = [32, 16, 24, 40, 80, 96, 192, 320];
/// `_stack` rows on `layers.8..=13`: (kernel, stride, expansion, repeats); in/out from depths.
const STACKS: [(usize, usize, usize, usize); 6] =
    [(3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1)];

/// torchvision's `_round_to_multiple_of(val, 8, 0.9)`.
fn round_to_8(v: f64) -> usize {
    let n = 8usize.max(((v + 4.0) as usize) / 8 * 8);
    if n as f64 >= 0.9 * v {
        n
    } else {
        n + 8
    }
}

fn conv_bn(g: &mut GraphBuilder, x: ValueId, p: &str, first: usize, out: usize, o: ConvOpts, relu: bool) -> ValueId {
    let y = g.conv(x, &format!("{p}.{first}"), out, o);
    let y = g.bn(y, &format!("{p}.{}", first + 1), EPS, MOMENTUM);
    if relu {
        g.act(y, Act::Relu)
    } else {
        y
    }
}

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize, alpha: f64) -> Graph {
    let d: Vec<usize> = BASE_DEPTHS.iter().map(|&c| round_to_8(c as f64 * alpha)).collect();
    let (mut g, mut x) = start;
    x = conv_bn(&mut g, x, "layers", 0, d[0], ConvOpts::k(3).stride(2).pad(1), true);
    x = conv_bn(&mut g, x, "layers", 3, d[0], ConvOpts::k(3).pad(1).groups(d[0]), true);
    x = conv_bn(&mut g, x, "layers", 6, d[1], ConvOpts::k(1), false);
    for (i, &(k, stride, expand, repeats)) in STACKS.iter().enumerate() {
        for r in 0..repeats {
            let inp = g.channels(x);
            let (out, stride) = (d[i + 2], if r == 0 { stride } else { 1 });
            let mid = inp * expand;
            let p = format!("layers.{}.{r}.layers", i + 8);
            let mut y = conv_bn(&mut g, x, &p, 0, mid, ConvOpts::k(1), true);
            y = conv_bn(&mut g, y, &p, 3, mid, ConvOpts::k(k).pad(k / 2).stride(stride).groups(mid), true);
            y = conv_bn(&mut g, y, &p, 6, out, ConvOpts::k(1), false);
            x = if inp == out && stride == 1 { g.add(y, x) } else { y };
        }
    }
    x = conv_bn(&mut g, x, "layers", 14, 1280, ConvOpts::k(1), true);
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    x = g.dropout(x, 0.2);
    // kaiming_uniform_(mode="fan_out", nonlinearity="sigmoid"): gain 1, bound sqrt(3 / fan_out).
    let w = Init::Uniform { bound: (3.0 / num_classes as f64).sqrt() };
    x = g.linear(x, "classifier.1", num_classes, true, w, Init::ZEROS);
    g.finish(x)
}

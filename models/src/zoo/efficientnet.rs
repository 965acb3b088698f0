//! EfficientNet B0 and B3 (torchvision `efficientnet_b0`, `efficientnet_b3`).

use super::{conv_norm_act, make_divisible, squeeze_excitation, BN_DEFAULT};
use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// torchvision's `MBConvConfig` base rows: (expand_ratio, kernel, stride, input, out, layers).
pub const BASE: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

pub struct Scale {
    pub width: f64,
    pub depth: f64,
    pub dropout: f64,
}
pub const B0: Scale = Scale { width: 1.0, depth: 1.0, dropout: 0.2 };
pub const B3: Scale = Scale { width: 1.2, depth: 1.4, dropout: 0.3 };
const STOCHASTIC_DEPTH_PROB: f64 = 0.2;

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize, s: &Scale) -> Graph {
    let width = |c: usize| make_divisible(c as f64 * s.width, 8);
    let depth = |n: usize| (n as f64 * s.depth).ceil() as usize;
    let (mut g, mut x) = start;
    x = conv_norm_act(&mut g, x, "features.0", width(BASE[0].3), ConvOpts::k(3).stride(2), BN_DEFAULT, Some(Act::Silu));
    let total_blocks: usize = BASE.iter().map(|r| depth(r.5)).sum();
    let mut block_id = 0;
    for (stage, &(expand, k, stride, _, out, layers)) in BASE.iter().enumerate() {
        let out = width(out);
        for j in 0..depth(layers) {
            let inp = g.channels(x);
            let stride = if j == 0 { stride } else { 1 };
            let expanded = make_divisible((inp * expand) as f64, 8);
            let p = format!("features.{}.{j}.block", stage + 1);
            let mut y = x;
            let mut i = 0;
            if expanded != inp {
                y = conv_norm_act(&mut g, y, &format!("{p}.0"), expanded, ConvOpts::k(1), BN_DEFAULT, Some(Act::Silu));
                i += 1;
            }
            let dw = ConvOpts::k(k).stride(stride).groups(expanded);
            y = conv_norm_act(&mut g, y, &format!("{p}.{i}"), expanded, dw, BN_DEFAULT, Some(Act::Silu));
            y = squeeze_excitation(&mut g, y, &format!("{p}.{}", i + 1), (inp / 4).max(1), Act::Silu, Act::Sigmoid);
            y = conv_norm_act(&mut g, y, &format!("{p}.{}", i + 2), out, ConvOpts::k(1), BN_DEFAULT, None);
            if stride == 1 && inp == out {
                let sd = STOCHASTIC_DEPTH_PROB * block_id as f64 / total_blocks as f64;
                y = g.stochastic_depth(y, sd);
                x = g.add(y, x);
            } else {
                x = y;
            }
            block_id += 1;
        }
    }
    let last = 4 * g.channels(x);
    x = conv_norm_act(
        &mut g,
        x,
        &format!("features.{}", BASE.len() + 1),
        last,
        ConvOpts::k(1),
        BN_DEFAULT,
        Some(Act::Silu),
    );
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    x = g.dropout(x, s.dropout);
    let range = 1.0 / (num_classes as f64).sqrt();
    x = g.linear(x, "classifier.1", num_classes, true, Init::Uniform { bound: range }, Init::ZEROS);
    g.finish(x)
}

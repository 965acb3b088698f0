//! MobileNetV2 (torchvision `mobilenet_v2`, width 1.0).

use super::{conv_norm_act, make_divisible, BN_DEFAULT};
use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// `(t, c, n, s)`: expansion, output channels, repeats, first stride.
pub const INVERTED_RESIDUAL_SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
const FIRST: usize = 32;
const LAST: usize = 1280;

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize) -> Graph {
    let (mut g, mut x) = start;
    let act = Some(Act::Relu6);
    x = conv_norm_act(
        &mut g,
        x,
        "features.0",
        make_divisible(FIRST as f64, 8),
        ConvOpts::k(3).stride(2),
        BN_DEFAULT,
        act,
    );
    let mut index = 1;
    for &(t, c, n, s) in &INVERTED_RESIDUAL_SETTINGS {
        let out = make_divisible(c as f64, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let inp = g.channels(x);
            let hidden = inp * t;
            let p = format!("features.{index}.conv");
            let mut y = x;
            let mut k = 0;
            if t != 1 {
                y = conv_norm_act(&mut g, y, &format!("{p}.0"), hidden, ConvOpts::k(1), BN_DEFAULT, act);
                k += 1;
            }
            y = conv_norm_act(
                &mut g,
                y,
                &format!("{p}.{k}"),
                hidden,
                ConvOpts::k(3).stride(stride).groups(hidden),
                BN_DEFAULT,
                act,
            );
            y = g.conv(y, &format!("{p}.{}", k + 1), out, ConvOpts::k(1));
            y = g.bn(y, &format!("{p}.{}", k + 2), BN_DEFAULT.0, BN_DEFAULT.1);
            x = if stride == 1 && inp == out { g.add(x, y) } else { y };
            index += 1;
        }
    }
    x = conv_norm_act(&mut g, x, &format!("features.{index}"), LAST, ConvOpts::k(1), BN_DEFAULT, act);
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    x = g.dropout(x, 0.2);
    x = g.linear(x, "classifier.1", num_classes, true, Init::Normal { std: 0.01 }, Init::ZEROS);
    g.finish(x)
}

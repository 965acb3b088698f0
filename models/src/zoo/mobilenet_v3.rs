//! MobileNetV3 Small and Large (torchvision `mobilenet_v3_small`, `mobilenet_v3_large`).

use super::{conv_norm_act, make_divisible, squeeze_excitation, BnParams};
use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// torchvision's `bneck_conf` rows: (input, kernel, expanded, out, use_se, activation, stride).
type Bneck = (usize, usize, usize, usize, bool, Act, usize);
const RE: Act = Act::Relu;
const HS: Act = Act::Hardswish;

pub struct Spec {
    pub blocks: &'static [Bneck],
    pub last_channel: usize,
}

pub const LARGE: Spec = Spec {
    blocks: &[
        (16, 3, 16, 16, false, RE, 1),
        (16, 3, 64, 24, false, RE, 2),
        (24, 3, 72, 24, false, RE, 1),
        (24, 5, 72, 40, true, RE, 2),
        (40, 5, 120, 40, true, RE, 1),
        (40, 5, 120, 40, true, RE, 1),
        (40, 3, 240, 80, false, HS, 2),
        (80, 3, 200, 80, false, HS, 1),
        (80, 3, 184, 80, false, HS, 1),
        (80, 3, 184, 80, false, HS, 1),
        (80, 3, 480, 112, true, HS, 1),
        (112, 3, 672, 112, true, HS, 1),
        (112, 5, 672, 160, true, HS, 2),
        (160, 5, 960, 160, true, HS, 1),
        (160, 5, 960, 160, true, HS, 1),
    ],
    last_channel: 1280,
};

pub const SMALL: Spec = Spec {
    blocks: &[
        (16, 3, 16, 16, true, RE, 2),
        (16, 3, 72, 24, false, RE, 2),
        (24, 3, 88, 24, false, RE, 1),
        (24, 5, 96, 40, true, HS, 2),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 120, 48, true, HS, 1),
        (48, 5, 144, 48, true, HS, 1),
        (48, 5, 288, 96, true, HS, 2),
        (96, 5, 576, 96, true, HS, 1),
        (96, 5, 576, 96, true, HS, 1),
    ],
    last_channel: 1024,
};

const BN: BnParams = (0.001, 0.01);

pub fn build(start: (GraphBuilder, ValueId), num_classes: usize, spec: &Spec) -> Graph {
    let (mut g, mut x) = start;
    let ch = |c: usize| make_divisible(c as f64, 8);
    x = conv_norm_act(&mut g, x, "features.0", ch(spec.blocks[0].0), ConvOpts::k(3).stride(2), BN, Some(HS));
    for (i, &(inp, k, exp, out, se, act, stride)) in spec.blocks.iter().enumerate() {
        let (inp, exp, out) = (ch(inp), ch(exp), ch(out));
        let p = format!("features.{}.block", i + 1);
        let mut y = x;
        let mut j = 0;
        if exp != inp {
            y = conv_norm_act(&mut g, y, &format!("{p}.0"), exp, ConvOpts::k(1), BN, Some(act));
            j += 1;
        }
        y = conv_norm_act(
            &mut g,
            y,
            &format!("{p}.{j}"),
            exp,
            ConvOpts::k(k).stride(stride).groups(exp),
            BN,
            Some(act),
        );
        j += 1;
        if se {
            y = squeeze_excitation(
                &mut g,
                y,
                &format!("{p}.{j}"),
                make_divisible((exp / 4) as f64, 8),
                Act::Relu,
                Act::Hardsigmoid,
            );
            j += 1;
        }
        y = conv_norm_act(&mut g, y, &format!("{p}.{j}"), out, ConvOpts::k(1), BN, None);
        x = if stride == 1 && inp == out { g.add(x, y) } else { y };
    }
    let last_conv = 6 * g.channels(x);
    x = conv_norm_act(
        &mut g,
        x,
        &format!("features.{}", spec.blocks.len() + 1),
        last_conv,
        ConvOpts::k(1),
        BN,
        Some(HS),
    );
    x = g.global_avg_pool(x);
    x = g.flatten(x);
    let hidden = ch(spec.last_channel);
    x = g.linear(x, "classifier.0", hidden, true, Init::Normal { std: 0.01 }, Init::ZEROS);
    x = g.act(x, HS);
    x = g.dropout(x, 0.2);
    x = g.linear(x, "classifier.3", num_classes, true, Init::Normal { std: 0.01 }, Init::ZEROS);
    g.finish(x)
}

//! The architectures. Each file states one family as a table of stages, in torchvision's terms,
//! and walks it with the [`GraphBuilder`](crate::graph::GraphBuilder).

mod digits;
mod efficientnet;
mod mnasnet;
mod mobilenet_v2;
mod mobilenet_v3;
mod resnet;
mod squeezenet;

use std::fmt;
use std::str::FromStr;

use clap::builder::PossibleValue;
use serde::{Deserialize, Serialize};

use crate::graph::{Graph, GraphBuilder, Init};
use crate::{ModelConfig, ModelsError};

macro_rules! archs {
    ($($variant:ident => $name:literal, $about:literal;)*) => {
        /// Every architecture a user can train, export and serve.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Arch { $($variant),* }

        impl Arch {
            pub const ALL: &'static [Arch] = &[$(Arch::$variant),*];
            /// The name used on the command line, in MLflow and in file names (torchvision's).
            pub fn name(self) -> &'static str {
                match self { $(Arch::$variant => $name),* }
            }
            pub fn about(self) -> &'static str {
                match self { $(Arch::$variant => $about),* }
            }
        }
    };
}

archs! {
    Resnet18 => "resnet18", "torchvision ResNet-18";
    Resnet34 => "resnet34", "torchvision ResNet-34";
    MobilenetV2 => "mobilenet_v2", "torchvision MobileNetV2";
    MobilenetV3Small => "mobilenet_v3_small", "torchvision MobileNetV3-Small";
    MobilenetV3Large => "mobilenet_v3_large", "torchvision MobileNetV3-Large";
    Squeezenet1_0 => "squeezenet1_0", "torchvision SqueezeNet 1.0";
    Squeezenet1_1 => "squeezenet1_1", "torchvision SqueezeNet 1.1";
    EfficientnetB0 => "efficientnet_b0", "torchvision EfficientNet-B0";
    EfficientnetB3 => "efficientnet_b3", "torchvision EfficientNet-B3";
    Mnasnet0_5 => "mnasnet0_5", "torchvision MNASNet 0.5";
    Mnasnet0_75 => "mnasnet0_75", "torchvision MNASNet 0.75";
    Mnasnet1_0 => "mnasnet1_0", "torchvision MNASNet 1.0";
    Mnasnet1_3 => "mnasnet1_3", "torchvision MNASNet 1.3";
    ResnetDigits => "resnet_digits", "ResNet for 28x28: 3x3 stride-1 stem, no max-pool, widths 32/64/128";
    M5 => "m5", "An et al. 2020 M5: five 5x5 conv+BN+ReLU, no pooling, linear+BN";
    CnnDigits => "cnn_digits", "Deotte 2018 Kaggle CNN: 3x3,3x3,5x5/2 stages of 32 and 64, 4x4 conv to 128, dropout";
}

impl Arch {
    pub fn names() -> Vec<&'static str> {
        Arch::ALL.iter().map(|a| a.name()).collect()
    }
    /// Whether torchvision has this network (and so a golden state_dict list to test against).
    pub fn in_torchvision(self) -> bool {
        !matches!(self, Arch::ResnetDigits | Arch::M5 | Arch::CnnDigits)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Arch::ALL.iter().copied().find(|a| a.name() == s).ok_or_else(|| ModelsError::UnknownArch(s.to_string()))
    }
}

impl clap::ValueEnum for Arch {
    fn value_variants<'a>() -> &'a [Self] {
        Arch::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()).help(self.about()))
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) fn build(c: &ModelConfig) -> Graph {
    let mut g = build_table(c);
    if c.arch.in_torchvision() && c.in_channels != 3 {
        fresh_first_conv(&mut g);
    }
    g
}

/// torchvision's models take RGB; a user adapting one to gray digits replaces the first conv
/// (`model.conv1 = nn.Conv2d(1, ...)`), which gets PyTorch's default init, not the model's
/// kaiming fan-out (about 3x smaller for a 1-channel stem). We start where that user starts, so
/// our runs and PyTorch's reference scripts are comparable.
fn fresh_first_conv(g: &mut Graph) {
    if let Some(crate::Op::Conv2d(conv)) =
        g.nodes.iter_mut().map(|n| &mut n.op).find(|op| matches!(op, crate::Op::Conv2d(_)))
    {
        let shape = [conv.out_channels, conv.in_channels / conv.groups, conv.kernel[0], conv.kernel[1]];
        conv.weight_init = Init::torch_default(&shape);
        conv.bias_init = Init::torch_default(&shape);
    }
}

fn build_table(c: &ModelConfig) -> Graph {
    // Every family starts after the input prologue, so none of them knows about it.
    let input = GraphBuilder::with_prologue(c);
    let n = c.num_classes;
    match c.arch {
        Arch::Resnet18 => resnet::build(input, n, &resnet::RESNET18),
        Arch::Resnet34 => resnet::build(input, n, &resnet::RESNET34),
        Arch::MobilenetV2 => mobilenet_v2::build(input, n),
        Arch::MobilenetV3Small => mobilenet_v3::build(input, n, &mobilenet_v3::SMALL),
        Arch::MobilenetV3Large => mobilenet_v3::build(input, n, &mobilenet_v3::LARGE),
        Arch::Squeezenet1_0 => squeezenet::build(input, n, &squeezenet::V1_0),
        Arch::Squeezenet1_1 => squeezenet::build(input, n, &squeezenet::V1_1),
        Arch::EfficientnetB0 => efficientnet::build(input, n, &efficientnet::B0),
        Arch::EfficientnetB3 => efficientnet::build(input, n, &efficientnet::B3),
        Arch::Mnasnet0_5 => mnasnet::build(input, n, 0.5),
        Arch::Mnasnet0_75 => mnasnet::build(input, n, 0.75),
        Arch::Mnasnet1_0 => mnasnet::build(input, n, 1.0),
        Arch::Mnasnet1_3 => mnasnet::build(input, n, 1.3),
        Arch::ResnetDigits => resnet::build(input, n, &resnet::RESNET_DIGITS),
        Arch::M5 => digits::build_m5(input, n),
        Arch::CnnDigits => digits::build_cnn_digits(input, n),
    }
}

/// torchvision's `_make_divisible`: round to a multiple of 8, never losing more than 10%.
pub(crate) fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (divisor).max(((v + d / 2.0) as usize) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// BatchNorm hyper-parameters, `(eps, momentum)` in PyTorch's convention.
pub(crate) type BnParams = (f64, f64);
pub(crate) const BN_DEFAULT: BnParams = (1e-5, 0.1);

/// torchvision's `Conv2dNormActivation`: `<p>.0` conv (no bias), `<p>.1` BatchNorm, activation.
pub(crate) fn conv_norm_act(
    g: &mut crate::graph::GraphBuilder,
    x: crate::ValueId,
    p: &str,
    out: usize,
    o: crate::graph::ConvOpts,
    bn: BnParams,
    act: Option<crate::Act>,
) -> crate::ValueId {
    let y = g.conv(x, &format!("{p}.0"), out, o.same());
    let y = g.bn(y, &format!("{p}.1"), bn.0, bn.1);
    match act {
        Some(a) => g.act(y, a),
        None => y,
    }
}

/// torchvision's `SqueezeExcitation`: `<p>.fc1`, `<p>.fc2` (1×1 convs with bias), then `scale * x`.
pub(crate) fn squeeze_excitation(
    g: &mut crate::graph::GraphBuilder,
    x: crate::ValueId,
    p: &str,
    squeeze: usize,
    act: crate::Act,
    scale_act: crate::Act,
) -> crate::ValueId {
    use crate::graph::ConvOpts;
    let c = g.channels(x);
    let s = g.global_avg_pool(x);
    let s = g.conv(s, &format!("{p}.fc1"), squeeze, ConvOpts::k(1).bias());
    let s = g.act(s, act);
    let s = g.conv(s, &format!("{p}.fc2"), c, ConvOpts::k(1).bias());
    let s = g.act(s, scale_act);
    g.mul(s, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(serde_json::from_str::<Arch>(&serde_json::to_string(&a).unwrap()).unwrap(), a);
        }
        assert!("resnet19".parse::<Arch>().unwrap_err().to_string().contains("resnet18"));
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        // torchvision.models._utils._make_divisible on these inputs.
        assert_eq!(make_divisible(32.0 * 1.2, 8), 40);
        assert_eq!(make_divisible(16.0, 8), 16);
        assert_eq!(make_divisible(72.0 / 4.0, 8), 24);
        assert_eq!(make_divisible(3.0, 8), 8);
    }
}

//! The input side of the model contract, as ordinary graph nodes: every model takes gray images
//! holding pixel/255 (`models::contract::INPUT_NAME`, `[N, 1, S, S]`), and the config's
//! normalisation and gray-to-RGB repeat are ops every lowering already walks, so no lowering
//! special-cases them and all of them compute them alike.

use super::{GraphBuilder, ValueId};
use crate::{ModelConfig, Normalization};

impl GraphBuilder {
    /// Starts `config`'s network: the `[1, S, S]` input, then `input * mul + add` when the
    /// normalisation is not the identity, then the gray plane concatenated `in_channels` times
    /// when the network takes more than one channel (as the seed project fed RGB models).
    /// Returns the value the network body reads. [`Graph::validate`](super::Graph::validate)
    /// checks a graph against exactly these nodes.
    pub fn with_prologue(config: &ModelConfig) -> (GraphBuilder, ValueId) {
        let (mut g, mut x) = GraphBuilder::new([1, config.image_size, config.image_size]);
        if let Some((mul, add)) = input_affine(config.normalization) {
            x = g.affine(x, mul, add);
        }
        if config.in_channels > 1 {
            x = g.concat(&vec![x; config.in_channels]);
        }
        (g, x)
    }
}

/// `(pixel * scale - mean) / std` on input = pixel/255, as `input * mul + add` (rounded to
/// float32 once each, as libtorch rounds a scalar operand); `None` when it is the identity
/// within 1e-6, which the default (scale 1/255, mean 0, std 1) is, so default models see
/// exactly the pixel/255 PyTorch sees.
fn input_affine(n: Normalization) -> Option<(f32, f32)> {
    let mul = 255.0 * f64::from(n.scale) / f64::from(n.std);
    let add = -f64::from(n.mean) / f64::from(n.std);
    if (mul - 1.0).abs() < 1e-6 && add == 0.0 {
        return None;
    }
    // `+ 0.0` turns a -0 (mean 0) into 0, so the constant reads as what it does.
    Some((mul as f32, add as f32 + 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, Op};

    #[test]
    fn default_input_is_left_alone_and_others_get_their_ops() {
        let ops = |c: &ModelConfig| {
            let (g, x) = GraphBuilder::with_prologue(c);
            let g = g.finish(x);
            g.nodes.into_iter().map(|n| (n.op, n.inputs, n.shape)).collect::<Vec<_>>()
        };
        let gray = ModelConfig::new(Arch::M5);
        assert_eq!(ops(&gray), [(Op::Input, vec![], vec![1, 28, 28])]);
        let rgb_norm = ModelConfig {
            in_channels: 3,
            normalization: Normalization { scale: 1.0, mean: 127.5, std: 127.5 },
            ..gray
        };
        assert_eq!(
            ops(&rgb_norm),
            [
                (Op::Input, vec![], vec![1, 28, 28]),
                (Op::Affine { mul: 2.0, add: -1.0 }, vec![0], vec![1, 28, 28]),
                (Op::Concat, vec![1, 1, 1], vec![3, 28, 28]),
            ]
        );
        // std only: no -0 shift.
        let std = Normalization { scale: 1.0 / 255.0, mean: 0.0, std: 2.0 };
        assert_eq!(input_affine(std).map(|(m, a)| (m, a.to_bits())), Some((0.5, 0)));
    }
}

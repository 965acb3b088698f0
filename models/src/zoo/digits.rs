//! Networks designed for 28×28 digits rather than ImageNet.

use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init};

/// M5 of An et al. 2020, "An Ensemble of Simple Convolutional Neural Network Models for MNIST
/// Digit Recognizer": five 5×5 valid convolutions with BatchNorm and ReLU, no pooling
/// (28 → 24 → 20 → 16 → 12 → 8), then a bias-free linear layer followed by BatchNorm.
pub const M5_WIDTHS: [usize; 5] = [32, 64, 96, 128, 160];

pub fn build_m5(input: [usize; 3], num_classes: usize) -> Graph {
    let (mut g, mut x) = GraphBuilder::new(input);
    for (i, &w) in M5_WIDTHS.iter().enumerate() {
        x = g.conv(x, &format!("conv{}", i + 1), w, ConvOpts::k(5));
        x = g.bn(x, &format!("bn{}", i + 1), 1e-5, 0.1);
        x = g.act(x, Act::Relu);
    }
    x = g.flatten(x);
    let features = g.shape(x)[0];
    x = g.linear(x, "fc", num_classes, false, Init::torch_default(&[num_classes, features]), Init::ZEROS);
    x = g.bn(x, "fc_bn", 1e-5, 0.1);
    g.finish(x)
}

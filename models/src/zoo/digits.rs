//! Networks designed for 28×28 digits rather than ImageNet.

use crate::graph::{Act, ConvOpts, Graph, GraphBuilder, Init, ValueId};

/// M5 of An et al. 2020, "An Ensemble of Simple Convolutional Neural Network Models for MNIST
/// Digit Recognizer": five 5×5 valid convolutions with BatchNorm and ReLU, no pooling
/// (28 → 24 → 20 → 16 → 12 → 8), then a bias-free linear layer followed by BatchNorm.
pub const M5_WIDTHS: [usize; 5] = [32, 64, 96, 128, 160];

pub fn build_m5(start: (GraphBuilder, ValueId), num_classes: usize) -> Graph {
    let (mut g, mut x) = start;
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

/// One stage of [`CNN_DIGITS`]: two 3×3 valid convolutions, then a 5×5 stride-2 convolution
/// that halves the map (a learned pooling), each conv + BN + ReLU, then dropout.
pub struct CnnStage {
    pub width: usize,
    pub dropout: f64,
}

/// The small CNN of C. Deotte's Kaggle study of MNIST architectures (2018, "How to choose CNN
/// architecture MNIST"), the building block of his 0.99757 ensemble: 28 → 26 → 24 → 12 → 10 →
/// 8 → 4, then a 4×4 convolution to 128 channels at 1×1, dropout and the classifier. Keras puts
/// BN after the ReLU; we use PyTorch's usual conv → BN → ReLU order with bias-free convs.
pub const CNN_DIGITS: [CnnStage; 2] = [CnnStage { width: 32, dropout: 0.4 }, CnnStage { width: 64, dropout: 0.4 }];
/// Channels of the final 4×4 convolution and the dropout before the classifier.
pub const CNN_DIGITS_HEAD: (usize, f64) = (128, 0.4);

pub fn build_cnn_digits(start: (GraphBuilder, ValueId), num_classes: usize) -> Graph {
    let (mut g, mut x) = start;
    let mut i = 0;
    let mut conv_bn_relu = |g: &mut GraphBuilder, x, width, o: ConvOpts| {
        i += 1;
        let y = g.conv(x, &format!("conv{i}"), width, o);
        let y = g.bn(y, &format!("bn{i}"), 1e-5, 0.1);
        g.act(y, Act::Relu)
    };
    for stage in &CNN_DIGITS {
        x = conv_bn_relu(&mut g, x, stage.width, ConvOpts::k(3));
        x = conv_bn_relu(&mut g, x, stage.width, ConvOpts::k(3));
        x = conv_bn_relu(&mut g, x, stage.width, ConvOpts::k(5).stride(2).same());
        x = g.dropout(x, stage.dropout);
    }
    let (head, head_dropout) = CNN_DIGITS_HEAD;
    let k = g.shape(x)[1];
    x = conv_bn_relu(&mut g, x, head, ConvOpts::k(k));
    x = g.flatten(x);
    x = g.dropout(x, head_dropout);
    let features = g.shape(x)[0];
    // nn.Linear's default: weight and bias both U(±1/sqrt(fan_in)).
    let init = Init::torch_default(&[num_classes, features]);
    x = g.linear(x, "fc", num_classes, true, init, init);
    g.finish(x)
}

//! The layer graph every lowering walks.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order; node 0 is the input and every node
//! produces one value, identified by its index. Shapes are per sample (no batch dimension) and
//! are inferred while the graph is built, so a lowering never has to compute them.

use serde::Serialize;

mod crop;
mod prologue;
mod validate;

pub use crop::{crop_axis, AxisCrop, KernelCrop};
pub use validate::GraphError;

/// Index of a node, and of the value it produces.
pub type ValueId = usize;

/// How a parameter tensor is initialised; builders resolve torchvision's schemes (kaiming
/// normal fan-out, PyTorch's default linear init, ...) to one of these with concrete numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Init {
    Normal { std: f64 },
    Uniform { bound: f64 },
    Const(f64),
}

impl Init {
    /// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`; PyTorch's fan-out of a
    /// conv weight `[out, in/groups, kh, kw]` is `out * kh * kw` (groups do not divide it).
    pub fn kaiming_normal_fan_out(shape: &[usize]) -> Init {
        Init::Normal { std: (2.0 / fan_out(shape) as f64).sqrt() }
    }
    /// `nn.init.kaiming_uniform_(w)` with its defaults (fan-in, leaky_relu a=0): bound sqrt(6/fan_in).
    pub fn kaiming_uniform_fan_in(shape: &[usize]) -> Init {
        Init::Uniform { bound: (6.0 / fan_in(shape) as f64).sqrt() }
    }
    /// PyTorch's default `nn.Linear`/`nn.Conv2d` init for weight and bias: U(±1/sqrt(fan_in)).
    pub fn torch_default(weight_shape: &[usize]) -> Init {
        Init::Uniform { bound: 1.0 / (fan_in(weight_shape) as f64).sqrt() }
    }
    pub const ZEROS: Init = Init::Const(0.0);
    pub const ONES: Init = Init::Const(1.0);
}

fn receptive(shape: &[usize]) -> usize {
    shape.iter().skip(2).product::<usize>().max(1)
}
/// PyTorch's `_calculate_fan_in_and_fan_out`, fan-in half.
pub fn fan_in(shape: &[usize]) -> usize {
    shape.get(1).copied().unwrap_or(1) * receptive(shape)
}
/// PyTorch's `_calculate_fan_in_and_fan_out`, fan-out half.
pub fn fan_out(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(1) * receptive(shape)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conv2d {
    /// Parameter path prefix, e.g. `layer1.0.conv1` (weights are `<name>.weight`, `<name>.bias`).
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
    pub bias: bool,
    pub weight_init: Init,
    pub bias_init: Init,
}

impl Conv2d {
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.out_channels, self.in_channels / self.groups, self.kernel[0], self.kernel[1]]
    }
}

/// BatchNorm over channels: `BatchNorm2d` on `[N,C,H,W]`, `BatchNorm1d` on `[N,C]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchNorm {
    pub name: String,
    pub channels: usize,
    pub eps: f64,
    /// PyTorch convention: running = (1 - momentum) * running + momentum * batch.
    pub momentum: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Linear {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub weight_init: Init,
    pub bias_init: Init,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Act {
    Relu,
    Relu6,
    Hardswish,
    Hardsigmoid,
    Silu,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// SqueezeNet pools with `ceil_mode=True`; the output size formula differs.
    pub ceil_mode: bool,
}

impl MaxPool2d {
    /// PyTorch's pooling output size, including its rule that the last window must start
    /// inside the input (or left padding) when `ceil_mode` is on.
    pub fn output_size(&self, input: usize) -> usize {
        let (i, k, s, p) = (input as i64, self.kernel as i64, self.stride as i64, self.padding as i64);
        let span = i + 2 * p - k;
        let mut out = if self.ceil_mode {
            span.div_euclid(s) + i64::from(span.rem_euclid(s) != 0) + 1
        } else {
            span.div_euclid(s) + 1
        };
        if self.ceil_mode && (out - 1) * s >= i + p {
            out -= 1;
        }
        out.max(0) as usize
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Op {
    /// The model input: gray images holding pixel/255 (see [`GraphBuilder::with_prologue`]).
    Input,
    /// `x * mul + add` elementwise, constants in float32 (input normalisation). Not a layer:
    /// no parameters, so nothing in the state dict.
    Affine {
        mul: f32,
        add: f32,
    },
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Linear(Linear),
    Act(Act),
    MaxPool2d(MaxPool2d),
    /// `AdaptiveAvgPool2d(1)`: `[C,H,W] -> [C,1,1]`.
    GlobalAvgPool,
    /// `[C,H,W] -> [C*H*W]`.
    Flatten,
    /// Elementwise sum of two equal shapes (residual connections).
    Add,
    /// Product of `[C,1,1]` and `[C,H,W]` (squeeze-and-excitation scaling).
    Mul,
    /// Channel concatenation (SqueezeNet's fire modules).
    Concat,
    /// Identity at inference; the trainer applies it in training mode only.
    Dropout {
        p: f64,
    },
    /// torchvision `StochasticDepth(p, "row")`: drops whole samples of a residual branch while
    /// training, identity at inference.
    StochasticDepth {
        p: f64,
    },
}

impl Op {
    /// The op's name without its parameters, for messages and ONNX node descriptions.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Affine { .. } => "Affine",
            Op::Conv2d(_) => "Conv2d",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Linear(_) => "Linear",
            Op::Act(_) => "Act",
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Flatten => "Flatten",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Concat => "Concat",
            Op::Dropout { .. } => "Dropout",
            Op::StochasticDepth { .. } => "StochasticDepth",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    /// Output shape per sample, batch dimension excluded.
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ParamKind {
    /// Optimised by gradient descent.
    Trainable,
    /// Part of the state but not trained (BatchNorm running statistics).
    Buffer,
}

/// One tensor of the model's state, named exactly as torchvision's `state_dict` key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub init: Init,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: ValueId,
}

impl Graph {
    /// Shape of node 0, the model input: `[1, S, S]` gray pixel/255 for every zoo graph (the
    /// normalisation and channel repeat are nodes after it, see [`GraphBuilder::with_prologue`]).
    pub fn input_shape(&self) -> &[usize] {
        &self.nodes[0].shape
    }
    pub fn output_shape(&self) -> &[usize] {
        &self.nodes[self.output].shape
    }

    /// Every tensor of the state in `state_dict` order, without `num_batches_tracked` (it does
    /// not affect outputs with a fixed momentum, and torchvision loads fine without it).
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        let mut push = |name: &str, suffix: &str, shape: Vec<usize>, kind, init| {
            out.push(ParamSpec { name: format!("{name}.{suffix}"), shape, kind, init })
        };
        for node in &self.nodes {
            match &node.op {
                Op::Conv2d(c) => {
                    push(&c.name, "weight", c.weight_shape(), ParamKind::Trainable, c.weight_init);
                    if c.bias {
                        push(&c.name, "bias", vec![c.out_channels], ParamKind::Trainable, c.bias_init);
                    }
                }
                Op::BatchNorm(b) => {
                    push(&b.name, "weight", vec![b.channels], ParamKind::Trainable, Init::ONES);
                    push(&b.name, "bias", vec![b.channels], ParamKind::Trainable, Init::ZEROS);
                    push(&b.name, "running_mean", vec![b.channels], ParamKind::Buffer, Init::ZEROS);
                    push(&b.name, "running_var", vec![b.channels], ParamKind::Buffer, Init::ONES);
                }
                Op::Linear(l) => {
                    push(&l.name, "weight", vec![l.out_features, l.in_features], ParamKind::Trainable, l.weight_init);
                    if l.bias {
                        push(&l.name, "bias", vec![l.out_features], ParamKind::Trainable, l.bias_init);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Number of trainable scalars (what torchvision users count with `p.numel()`).
    pub fn num_trainable(&self) -> usize {
        self.params().iter().filter(|p| p.kind == ParamKind::Trainable).map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Multiply-accumulates of one forward pass on one image (convolutions and linears; the
    /// convention of torchvision's published "GFLOPS").
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv2d(c) => {
                    let out: usize = n.shape.iter().product();
                    (out * (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1]) as u64
                }
                Op::Linear(l) => (l.in_features * l.out_features) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Index of the nodes that consume each value, for lowerings that fuse (BatchNorm folding).
    pub fn consumers(&self) -> Vec<Vec<ValueId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &x in &n.inputs {
                users[x].push(i);
            }
        }
        users
    }
}

/// Builds a graph while inferring shapes, so architecture descriptions only state what
/// torchvision states (output channels, kernel, stride), never derived sizes.
pub struct GraphBuilder {
    nodes: Vec<Node>,
}

/// Options of a convolution, in torchvision's vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct ConvOpts {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
}

impl ConvOpts {
    /// A `kernel`×`kernel` convolution with stride 1, no padding, no bias.
    pub fn k(kernel: usize) -> Self {
        ConvOpts { kernel, stride: 1, padding: 0, groups: 1, bias: false }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn pad(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    /// torchvision's `Conv2dNormActivation` padding: `(k - 1) / 2`.
    pub fn same(mut self) -> Self {
        self.padding = (self.kernel - 1) / 2;
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self) -> Self {
        self.bias = true;
        self
    }
}

impl GraphBuilder {
    pub fn new(input_shape: [usize; 3]) -> (Self, ValueId) {
        let b = GraphBuilder { nodes: vec![Node { op: Op::Input, inputs: vec![], shape: input_shape.to_vec() }] };
        (b, 0)
    }

    pub fn shape(&self, x: ValueId) -> &[usize] {
        &self.nodes[x].shape
    }
    pub fn channels(&self, x: ValueId) -> usize {
        self.nodes[x].shape[0]
    }

    /// Appends `op` with the shape its rule computes ([`Op::output_shape`], the rule validation
    /// checks), so a description that breaks it fails here, at the line that states it.
    fn push(&mut self, op: Op, inputs: Vec<ValueId>) -> ValueId {
        let ins: Vec<&[usize]> = inputs.iter().map(|&v| self.shape(v)).collect();
        let shape = op.output_shape(&ins).unwrap_or_else(|e| panic!("{}: {e}", op.kind()));
        self.nodes.push(Node { op, inputs, shape });
        self.nodes.len() - 1
    }

    /// Conv with torchvision's most common init: kaiming-normal fan-out weights, zero bias.
    pub fn conv(&mut self, x: ValueId, name: &str, out_channels: usize, o: ConvOpts) -> ValueId {
        let shape = [out_channels, self.channels(x) / o.groups, o.kernel, o.kernel];
        self.conv_init(x, name, out_channels, o, Init::kaiming_normal_fan_out(&shape), Init::ZEROS)
    }

    pub fn conv_init(
        &mut self,
        x: ValueId,
        name: &str,
        out_channels: usize,
        o: ConvOpts,
        weight_init: Init,
        bias_init: Init,
    ) -> ValueId {
        let conv = Conv2d {
            name: name.to_string(),
            in_channels: self.channels(x),
            out_channels,
            kernel: [o.kernel; 2],
            stride: [o.stride; 2],
            padding: [o.padding; 2],
            groups: o.groups,
            bias: o.bias,
            weight_init,
            bias_init,
        };
        self.push(Op::Conv2d(conv), vec![x])
    }

    pub fn bn(&mut self, x: ValueId, name: &str, eps: f64, momentum: f64) -> ValueId {
        let bn = BatchNorm { name: name.to_string(), channels: self.channels(x), eps, momentum };
        self.push(Op::BatchNorm(bn), vec![x])
    }

    pub fn act(&mut self, x: ValueId, a: Act) -> ValueId {
        self.push(Op::Act(a), vec![x])
    }

    /// `x * mul + add` (input normalisation).
    pub fn affine(&mut self, x: ValueId, mul: f32, add: f32) -> ValueId {
        self.push(Op::Affine { mul, add }, vec![x])
    }

    pub fn max_pool(&mut self, x: ValueId, kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> ValueId {
        self.push(Op::MaxPool2d(MaxPool2d { kernel, stride, padding, ceil_mode }), vec![x])
    }

    pub fn global_avg_pool(&mut self, x: ValueId) -> ValueId {
        self.push(Op::GlobalAvgPool, vec![x])
    }

    pub fn flatten(&mut self, x: ValueId) -> ValueId {
        self.push(Op::Flatten, vec![x])
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.push(Op::Add, vec![a, b])
    }

    /// `scale * x` with `scale` of shape `[C,1,1]`.
    pub fn mul(&mut self, scale: ValueId, x: ValueId) -> ValueId {
        self.push(Op::Mul, vec![scale, x])
    }

    /// Channel concatenation; the same value may appear more than once (a channel repeat).
    pub fn concat(&mut self, parts: &[ValueId]) -> ValueId {
        self.push(Op::Concat, parts.to_vec())
    }

    pub fn dropout(&mut self, x: ValueId, p: f64) -> ValueId {
        self.push(Op::Dropout { p }, vec![x])
    }

    pub fn stochastic_depth(&mut self, x: ValueId, p: f64) -> ValueId {
        self.push(Op::StochasticDepth { p }, vec![x])
    }

    pub fn linear(
        &mut self,
        x: ValueId,
        name: &str,
        out_features: usize,
        bias: bool,
        weight_init: Init,
        bias_init: Init,
    ) -> ValueId {
        // A non-flat input has no feature count: 0 makes the shape rule reject it.
        let in_features = match self.shape(x) {
            [f] => *f,
            _ => 0,
        };
        let l = Linear { name: name.to_string(), in_features, out_features, bias, weight_init, bias_init };
        self.push(Op::Linear(l), vec![x])
    }

    pub fn finish(self, output: ValueId) -> Graph {
        Graph { nodes: self.nodes, output }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_mode_matches_pytorch_formula() {
        let p = MaxPool2d { kernel: 3, stride: 2, padding: 0, ceil_mode: true };
        // Values from torch.nn.MaxPool2d(3, 2, ceil_mode=True) on these sizes.
        assert_eq!([11, 5, 2, 13, 6, 3].map(|i| p.output_size(i)), [5, 2, 1, 6, 3, 1]);
        let q = MaxPool2d { ceil_mode: false, ..p };
        assert_eq!([11, 5, 13, 6].map(|i| q.output_size(i)), [5, 2, 6, 2]);
        let r = MaxPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
        assert_eq!([14, 7].map(|i| r.output_size(i)), [7, 4]);
    }

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fan_in(&[64, 1, 7, 7]), 49);
        assert_eq!(fan_out(&[32, 1, 3, 3]), 288); // depthwise: groups do not divide fan-out
        assert_eq!(fan_in(&[10, 512]), 512);
    }
}

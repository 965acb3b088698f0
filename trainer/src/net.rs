//! Lowering of a [`models::Graph`] to libtorch: one tch variable per [`ParamSpec`], and a
//! forward pass that walks the graph's nodes once. Nothing here knows any architecture.

use std::collections::{HashMap, HashSet};

use models::graph::KernelCrop;
use models::{Act, Graph, Init, MaxPool2d, ModelConfig, Op, ParamKind, ParamSpec};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Result, TrainerError};

/// One node, with the tensors it reads resolved once at build time.
enum Layer {
    Input,
    Affine {
        mul: f64,
        add: f64,
    },
    /// `crop`: the kernel taps that can touch real input ([`Graph::kernel_crop`]); the
    /// others only multiply padding, so they are left out of the product.
    Conv {
        w: Tensor,
        b: Option<Tensor>,
        stride: [i64; 2],
        padding: [i64; 2],
        groups: i64,
        crop: Option<KernelCrop>,
    },
    BatchNorm {
        w: Tensor,
        b: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
        momentum: f64,
    },
    Linear {
        w: Tensor,
        b: Option<Tensor>,
    },
    Act(Act),
    MaxPool(MaxPool2d),
    GlobalAvgPool,
    Flatten,
    Add,
    Mul,
    Concat,
    Dropout(f64),
    StochasticDepth(f64),
}

/// A network ready to run on libtorch. Its tensors are shallow copies of the variables of the
/// [`nn::VarStore`] it was built on, so an optimiser over that store trains this network.
pub struct Net {
    config: ModelConfig,
    graph: Graph,
    layers: Vec<Layer>,
    /// Every state tensor in [`Graph::params`] order (what checkpoints hold).
    params: Vec<(ParamSpec, Tensor)>,
    /// Index of the last node reading each value, so the forward pass frees activations early;
    /// `usize::MAX` for the output.
    last_use: Vec<usize>,
    device: Device,
    /// Set by [`Net::set_channels_last`] (strides cannot tell: a 1x1 kernel, or one with a
    /// single input channel, is contiguous either way).
    channels_last: bool,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("arch", &self.config.arch)
            .field("nodes", &self.graph.nodes.len())
            .field("tensors", &self.params.len())
            .field("device", &self.device)
            .finish()
    }
}

/// A network together with the variable store that owns its tensors.
#[derive(Debug)]
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Net,
}

impl Model {
    /// Builds `config`'s architecture on `device`, freshly initialised (from torch's global RNG,
    /// so `tch::manual_seed` makes it reproducible).
    pub fn new(config: &ModelConfig, device: Device) -> Result<Model> {
        let vs = nn::VarStore::new(device);
        let net = Net::new(&vs.root(), config)?;
        Ok(Model { vs, net })
    }

    /// Like [`Model::new`] with a graph supplied (e.g. edited by a test).
    pub fn from_graph(graph: Graph, config: &ModelConfig, device: Device) -> Result<Model> {
        let vs = nn::VarStore::new(device);
        let net = Net::from_graph(&vs.root(), graph, config)?;
        Ok(Model { vs, net })
    }
}

impl Net {
    /// Builds `config`'s graph and creates its variables under `root`.
    pub fn new(root: &nn::Path, config: &ModelConfig) -> Result<Net> {
        let graph = models::build(config)?;
        Net::from_graph(root, graph, config)
    }

    /// Creates one variable per [`ParamSpec`] of `graph` under `root`, named exactly as the
    /// spec (`layer1.0.conv1.weight` is variable `weight` of sub-path `layer1/0/conv1`),
    /// initialised as the spec says; buffers are not trainable.
    pub fn from_graph(root: &nn::Path, graph: Graph, config: &ModelConfig) -> Result<Net> {
        config.validate()?;
        graph.validate(config).map_err(|e| TrainerError::Graph(e.to_string()))?;
        let device = root.device();
        let specs = graph.params();
        let mut seen = HashSet::new();
        let mut params = Vec::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.name.clone()) {
                return Err(TrainerError::Graph(format!("tensor {} is declared twice", spec.name)));
            }
            let tensor = create_var(root, &spec, device)?;
            params.push((spec, tensor));
        }
        let by_name: HashMap<&str, &Tensor> = params.iter().map(|(s, t)| (s.name.as_str(), t)).collect();
        let get = |name: &str| -> Result<Tensor> {
            by_name
                .get(name)
                .map(|t| t.shallow_clone())
                .ok_or_else(|| TrainerError::Graph(format!("no tensor {name} among the graph's parameters")))
        };

        let mut layers = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            layers.push(match &node.op {
                Op::Input => Layer::Input,
                // f32 constants, so libtorch's float32 arithmetic sees exactly the graph's.
                Op::Affine { mul, add } => Layer::Affine { mul: f64::from(*mul), add: f64::from(*add) },
                Op::Conv2d(c) => Layer::Conv {
                    w: get(&format!("{}.weight", c.name))?,
                    b: if c.bias { Some(get(&format!("{}.bias", c.name))?) } else { None },
                    stride: c.stride.map(|v| v as i64),
                    padding: c.padding.map(|v| v as i64),
                    groups: c.groups as i64,
                    crop: None,
                },
                Op::BatchNorm(b) => Layer::BatchNorm {
                    w: get(&format!("{}.weight", b.name))?,
                    b: get(&format!("{}.bias", b.name))?,
                    mean: get(&format!("{}.running_mean", b.name))?,
                    var: get(&format!("{}.running_var", b.name))?,
                    eps: b.eps,
                    momentum: b.momentum,
                },
                Op::Linear(l) => Layer::Linear {
                    w: get(&format!("{}.weight", l.name))?,
                    b: if l.bias { Some(get(&format!("{}.bias", l.name))?) } else { None },
                },
                Op::Act(a) => Layer::Act(*a),
                Op::MaxPool2d(p) => Layer::MaxPool(*p),
                Op::GlobalAvgPool => Layer::GlobalAvgPool,
                Op::Flatten => Layer::Flatten,
                Op::Add => Layer::Add,
                Op::Mul => Layer::Mul,
                Op::Concat => Layer::Concat,
                Op::Dropout { p } => Layer::Dropout(*p),
                Op::StochasticDepth { p } => Layer::StochasticDepth(*p),
            });
        }

        let mut last_use = vec![0usize; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            for &v in &node.inputs {
                last_use[v] = last_use[v].max(i);
            }
        }
        last_use[graph.output] = usize::MAX;

        let mut net = Net { config: config.clone(), graph, layers, params, last_use, device, channels_last: false };
        net.set_kernel_crops(true);
        Ok(net)
    }

    /// Whether convolutions whose kernel overhangs their input map (resnet's last stage at
    /// 28x28: 3x3 on 1x1) compute only the taps that touch real input (the default). The
    /// dropped taps add exactly 0 and get exactly 0 gradient, so only the summation order
    /// changes; off, every tap is computed, as PyTorch's eager model does.
    pub fn set_kernel_crops(&mut self, on: bool) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if let Layer::Conv { crop, .. } = layer {
                *crop = if on { self.graph.kernel_crop(i) } else { None };
            }
        }
    }

    /// The weights of the convolutions that run on a cropped kernel, by `state_dict` name, with
    /// the taps they read: only those can ever get a nonzero gradient.
    pub fn live_taps(&self) -> HashMap<String, KernelCrop> {
        self.layers
            .iter()
            .zip(&self.graph.nodes)
            .filter_map(|(layer, node)| match (layer, &node.op) {
                (Layer::Conv { crop: Some(crop), .. }, Op::Conv2d(c)) => Some((format!("{}.weight", c.name), *crop)),
                _ => None,
            })
            .collect()
    }

    /// Stores every 4-D weight channels-last (`[O, I, kh, kw]` with the input channel varying
    /// fastest, PyTorch's `memory_format=torch.channels_last`), or back to contiguous. libtorch
    /// then runs each convolution on oneDNN's NHWC kernels and keeps activations NHWC through
    /// BatchNorm, activations and pooling. Shapes, names and saved weights are unchanged; the
    /// results are not bit-identical to NCHW (another summation order, and dropout draws its
    /// mask in memory order).
    pub fn set_channels_last(&mut self, on: bool) -> Result<()> {
        tch::no_grad(|| -> Result<(), tch::TchError> {
            for (_, t) in &mut self.params {
                if t.dim() == 4 {
                    let data = if on { channels_last_copy(t)? } else { t.f_contiguous()? };
                    t.f_set_data(&data)?;
                }
            }
            Ok(())
        })
        .map_err(TrainerError::torch(format!("{} weights to channels-last {on}", self.config.arch)))?;
        self.channels_last = on;
        Ok(())
    }

    /// Whether the convolution weights are stored channels-last ([`Net::set_channels_last`]).
    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Every state tensor with its spec, in [`Graph::params`] (state_dict) order.
    pub fn params(&self) -> &[(ParamSpec, Tensor)] {
        &self.params
    }

    /// The input every model takes: `[N, 1, image_size, image_size]`.
    pub fn input_dims(&self) -> [i64; 4] {
        let s = self.config.image_size as i64;
        [-1, 1, s, s]
    }

    /// Logits `[N, num_classes]` for `x` = `[N, 1, H, W]` float pixel/255. `train` selects
    /// training behaviour: BatchNorm on batch statistics (updating the running ones in place),
    /// dropout and stochastic depth active.
    ///
    /// # Panics
    /// On a wrongly shaped input or a libtorch failure; use [`Net::f_forward_t`] to get an error.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(x, train).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Net::forward_t`] returning errors (bad input shape, out of memory, ...).
    pub fn f_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        let [_, c, h, w] = self.input_dims();
        if size.len() != 4 || size[0] < 1 || size[1] != c || size[2] != h || size[3] != w {
            return Err(TrainerError::Input(format!("expected [N, {c}, {h}, {w}] pixel/255, got {size:?}")));
        }
        let torch = |what: &str| TrainerError::torch(format!("{} forward: {what}", self.config.arch));
        let mut x = x.f_to_kind(Kind::Float).map_err(torch("input"))?;
        if x.device() != self.device {
            x = x.f_to_device(self.device).map_err(torch("input to device"))?;
        }

        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(self.layers.len());
        values.push(Some(x));
        for (i, (layer, node)) in self.layers.iter().zip(&self.graph.nodes).enumerate().skip(1) {
            let inputs: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&v| values[v].as_ref().expect("graph checked: inputs precede their users and stay alive"))
                .collect();
            let y = run_layer(layer, &inputs, train).map_err(|source| TrainerError::Torch {
                context: format!("{} forward, node {i} ({})", self.config.arch, op_name(&node.op)),
                source,
            })?;
            values.push(Some(y));
            for &v in &node.inputs {
                if self.last_use[v] == i {
                    values[v] = None;
                }
            }
        }
        Ok(values[self.graph.output].take().expect("output is never freed"))
    }
}

fn run_layer(layer: &Layer, inputs: &[&Tensor], train: bool) -> Result<Tensor, tch::TchError> {
    let x = inputs[0];
    match layer {
        Layer::Input => Ok(x.shallow_clone()),
        Layer::Affine { mul, add } => x.f_mul_scalar(*mul)?.f_add_scalar(*add),
        Layer::Conv { w, b, stride, padding, groups, crop: None } => {
            x.f_conv2d(w, b.as_ref(), stride, padding, [1, 1], *groups)
        }
        Layer::Conv { w, b, stride, groups, crop: Some(KernelCrop([h, v])), .. } => {
            // A view of the kept taps: autograd scatters its gradient back into the full
            // weight, zero at the dropped taps (what they get from the full convolution).
            let k = w.f_narrow(2, h.first as i64, h.len as i64)?.f_narrow(3, v.first as i64, v.len as i64)?;
            if h.pad_before == h.pad_after && v.pad_before == v.pad_after {
                let padding = [h.pad_before as i64, v.pad_before as i64];
                x.f_conv2d(&k, b.as_ref(), stride, padding, [1, 1], *groups)
            } else {
                let pads = [v.pad_before, v.pad_after, h.pad_before, h.pad_after].map(|p| p as i64);
                x.f_constant_pad_nd(pads)?.f_conv2d(&k, b.as_ref(), stride, [0, 0], [1, 1], *groups)
            }
        }
        // In training mode this updates the running statistics in place, with PyTorch's
        // momentum convention and unbiased batch variance (the same aten kernel as nn.BatchNorm).
        Layer::BatchNorm { w, b, mean, var, eps, momentum } => {
            x.f_batch_norm(Some(w), Some(b), Some(mean), Some(var), train, *momentum, *eps, true)
        }
        Layer::Linear { w, b } => x.f_linear(w, b.as_ref()),
        Layer::Act(a) => match a {
            Act::Relu => x.f_relu(),
            Act::Relu6 => x.f_relu6(),
            Act::Hardswish => x.f_hardswish(),
            Act::Hardsigmoid => x.f_hardsigmoid(),
            Act::Silu => x.f_silu(),
            Act::Sigmoid => x.f_sigmoid(),
        },
        Layer::MaxPool(p) => {
            let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
            x.f_max_pool2d([k, k], [s, s], [pad, pad], [1, 1], p.ceil_mode)
        }
        Layer::GlobalAvgPool => x.f_adaptive_avg_pool2d([1, 1]),
        Layer::Flatten => x.f_flatten(1, -1),
        Layer::Add => x.f_add(inputs[1]),
        // inputs = [scale [N,C,1,1], x [N,C,H,W]]: broadcast.
        Layer::Mul => inputs[1].f_mul(x),
        Layer::Concat => Tensor::f_cat(inputs, 1),
        Layer::Dropout(p) => {
            if train && *p > 0.0 {
                x.f_dropout(*p, true)
            } else {
                Ok(x.shallow_clone())
            }
        }
        Layer::StochasticDepth(p) => {
            if !train || *p <= 0.0 {
                return Ok(x.shallow_clone());
            }
            // torchvision stochastic_depth(mode="row"): one Bernoulli(1-p) per sample, kept
            // samples scaled by 1/(1-p).
            let survival = 1.0 - p;
            let mut shape = vec![1i64; x.dim()];
            shape[0] = x.size()[0];
            let mut noise = Tensor::f_empty(shape.as_slice(), (x.kind(), x.device()))?;
            noise = noise.f_bernoulli_float_(survival)?;
            if survival > 0.0 {
                noise = noise.f_div_scalar(survival)?;
            }
            x.f_mul(&noise)
        }
    }
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Conv2d(c) => format!("conv {}", c.name),
        Op::BatchNorm(b) => format!("batchnorm {}", b.name),
        Op::Linear(l) => format!("linear {}", l.name),
        other => other.kind().to_string(),
    }
}

/// `t` (`[N, C, H, W]`) copied into channels-last strides, exactly as PyTorch's
/// `contiguous(memory_format=torch.channels_last)` lays it out, also where `C` is 1 (a
/// permute-and-copy would give contiguous strides there, which libtorch then reads as NCHW).
fn channels_last_copy(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let [_, c, _, w] = t.size()[..] else { return t.f_contiguous() };
    let h = t.size()[2];
    let out = Tensor::f_empty_strided(t.size(), [h * w * c, 1, w * c, c], (t.kind(), t.device()))?;
    let mut dst = out.shallow_clone();
    dst.f_copy_(t)?;
    Ok(out)
}

/// Adds one spec's variable under `root`, descending one sub-path per dotted component
/// because tch reserves '.' as its own separator.
fn create_var(root: &nn::Path, spec: &ParamSpec, device: Device) -> Result<Tensor> {
    let mut parts: Vec<&str> = spec.name.split('.').collect();
    let leaf = parts.pop().unwrap_or_default();
    if leaf.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(TrainerError::Graph(format!("bad tensor name {:?}", spec.name)));
    }
    let mut path = root.clone();
    for p in parts {
        path = path.sub(p);
    }
    if path.get(leaf).is_some() {
        // tch would silently rename it `<name>__<n>`, breaking the state_dict contract.
        return Err(TrainerError::Graph(format!("variable {} already exists in the var store", spec.name)));
    }
    let dims: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
    let torch = TrainerError::torch(format!("initialising {}", spec.name));
    let tensor = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
        let mut t = Tensor::f_zeros(dims.as_slice(), (Kind::Float, device))?;
        match spec.init {
            Init::Normal { std } => {
                let _ = t.f_normal_(0.0, std)?;
            }
            Init::Uniform { bound } => {
                let _ = t.f_uniform_(-bound, bound)?;
            }
            Init::Const(v) => {
                let _ = t.f_fill_(v)?;
            }
        }
        Ok(t)
    })
    .map_err(torch)?;
    Ok(path.add(leaf, tensor, spec.kind == ParamKind::Trainable))
}

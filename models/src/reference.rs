//! A plain, obviously-correct evaluator of a [`Graph`] in eval mode, in f64.
//!
//! It is the reference the exporter checks every ONNX file against (and the one that exists
//! without libtorch): loops written the way the operators are defined, no fusion, no folding,
//! no clever memory layout. Activations stay f64 from the input to the logits, so what a
//! float32 runtime computes differs from it only by float32 rounding.
//!
//! Per-sample values are `[C,H,W]` (or `[F]`) row-major, as `Node::shape` states them.

use crate::graph::{Act, BatchNorm, Conv2d, Graph, Linear, MaxPool2d, Op};
use crate::{ModelConfig, ModelsError};

/// Runs `graph` on `n` gray images and returns `n * num_classes` logits, image after image.
///
/// * `input`: `[n, 1, H, W]` float32 holding pixel/255 (the ONNX input contract); the
///   config's normalisation and gray-to-`in_channels` repetition are nodes of the graph
///   ([`GraphBuilder::with_prologue`](crate::graph::GraphBuilder::with_prologue)).
/// * `weights`: the checkpoint tensor named by a `Graph::params()` name (unfolded: BatchNorm
///   running statistics included), row-major float32.
///
/// Eval mode: BatchNorm uses its running statistics, Dropout and StochasticDepth are identity.
/// A malformed graph, a missing or mis-sized weight, or an input of the wrong length is an
/// error, never a panic. Samples are independent, so they are spread over the cores.
pub fn forward<'w>(
    graph: &Graph,
    config: &ModelConfig,
    weights: &dyn Fn(&str) -> Option<&'w [f32]>,
    input: &[f32],
    n: usize,
) -> Result<Vec<f32>, ModelsError> {
    let per_image = config.image_size.saturating_mul(config.image_size);
    if Some(input.len()) != n.checked_mul(per_image) {
        return Err(bad(format!(
            "input has {} floats, expected {n} images of 1x{s}x{s} = {}",
            input.len(),
            n.saturating_mul(per_image),
            s = config.image_size
        )));
    }
    let plan = Plan::new(graph, config, weights)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n);
    let per_thread = n.div_ceil(threads);
    let plan = &plan;
    let chunks: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = input
            .chunks(per_thread * per_image)
            .map(|chunk| s.spawn(move || chunk.chunks(per_image).flat_map(|img| plan.run(img)).collect::<Vec<f32>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| bad("a reference worker thread panicked".into())))
            .collect::<Result<_, _>>()
    })?;
    Ok(chunks.concat())
}

/// Every error of this module is about the graph/weights/input handed in; `ModelsError` has no
/// better-fitting variant, and the message says it comes from the reference evaluator.
fn bad(msg: String) -> ModelsError {
    ModelsError::InvalidConfig(format!("reference forward: {msg}"))
}

/// One node with its parameters resolved; [`Graph::validate`] checked its shapes, so running it
/// cannot index out of bounds.
enum Step<'a> {
    Input,
    Identity(usize),
    Affine { x: usize, mul: f64, add: f64 },
    Conv { x: usize, c: &'a Conv2d, in_shape: [usize; 3], out_shape: [usize; 3], w: &'a [f32], b: Option<&'a [f32]> },
    BatchNorm { x: usize, eps: f64, gamma: &'a [f32], beta: &'a [f32], mean: &'a [f32], var: &'a [f32] },
    Linear { x: usize, l: &'a Linear, w: &'a [f32], b: Option<&'a [f32]> },
    Act { x: usize, a: Act },
    MaxPool { x: usize, p: MaxPool2d, in_shape: [usize; 3], out_shape: [usize; 3] },
    GlobalAvgPool { x: usize, channels: usize },
    Add(usize, usize),
    Mul { scale: usize, x: usize, channels: usize },
    Concat(Vec<usize>),
}

/// The graph (`'a`) with its weights (which outlive it for the duration of the call).
struct Plan<'a> {
    steps: Vec<Step<'a>>,
    output: usize,
}

impl<'a> Plan<'a> {
    fn new<'w: 'a>(
        graph: &'a Graph,
        config: &ModelConfig,
        weights: &dyn Fn(&str) -> Option<&'w [f32]>,
    ) -> Result<Self, ModelsError> {
        config.validate()?;
        // Shapes are checked once, here; the steps index by them.
        graph.validate_classifier(config).map_err(|e| bad(e.to_string()))?;
        let nodes = &graph.nodes;
        let param = |name: String, len: usize| -> Result<&'a [f32], ModelsError> {
            let t = weights(&name).ok_or_else(|| bad(format!("weight {name} is missing")))?;
            if t.len() != len {
                return Err(bad(format!("weight {name} has {} values, expected {len}", t.len())));
            }
            Ok(t)
        };
        let chw = |v: usize| -> [usize; 3] { nodes[v].shape.as_slice().try_into().expect("validated: [C,H,W]") };
        let mut steps = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let x = node.inputs.first().copied().unwrap_or(0);
            steps.push(match &node.op {
                Op::Input => Step::Input,
                Op::Dropout { .. } | Op::StochasticDepth { .. } | Op::Flatten => Step::Identity(x),
                Op::Affine { mul, add } => Step::Affine { x, mul: f64::from(*mul), add: f64::from(*add) },
                Op::Conv2d(c) => {
                    let w = param(format!("{}.weight", c.name), c.weight_shape().iter().product())?;
                    let b = if c.bias { Some(param(format!("{}.bias", c.name), c.out_channels)?) } else { None };
                    Step::Conv { x, c, in_shape: chw(x), out_shape: chw(i), w, b }
                }
                Op::BatchNorm(BatchNorm { name, channels, eps, .. }) => {
                    let p = |s: &str| param(format!("{name}.{s}"), *channels);
                    Step::BatchNorm {
                        x,
                        eps: *eps,
                        gamma: p("weight")?,
                        beta: p("bias")?,
                        mean: p("running_mean")?,
                        var: p("running_var")?,
                    }
                }
                Op::Linear(l) => {
                    let w = param(format!("{}.weight", l.name), l.out_features * l.in_features)?;
                    let b = if l.bias { Some(param(format!("{}.bias", l.name), l.out_features)?) } else { None };
                    Step::Linear { x, l, w, b }
                }
                Op::Act(a) => Step::Act { x, a: *a },
                Op::MaxPool2d(p) => Step::MaxPool { x, p: *p, in_shape: chw(x), out_shape: chw(i) },
                Op::GlobalAvgPool => Step::GlobalAvgPool { x, channels: chw(x)[0] },
                Op::Add => Step::Add(node.inputs[0], node.inputs[1]),
                Op::Mul => Step::Mul { scale: node.inputs[0], x: node.inputs[1], channels: chw(node.inputs[1])[0] },
                Op::Concat => Step::Concat(node.inputs.clone()),
            });
        }
        Ok(Plan { steps, output: graph.output })
    }

    /// One image (`H*W` floats, pixel/255) to its logits. Shapes were checked by `new`.
    fn run(&self, image: &[f32]) -> Vec<f32> {
        let mut values: Vec<Vec<f64>> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let v = match step {
                Step::Input => image.iter().map(|&p| f64::from(p)).collect(),
                Step::Identity(x) => values[*x].clone(),
                Step::Affine { x, mul, add } => values[*x].iter().map(|&v| v * mul + add).collect(),
                Step::Conv { x, c, in_shape, out_shape, w, b } => conv(&values[*x], c, *in_shape, *out_shape, w, *b),
                Step::BatchNorm { x, eps, gamma, beta, mean, var } => {
                    let xs = &values[*x];
                    let per_channel = xs.len() / gamma.len();
                    xs.iter()
                        .enumerate()
                        .map(|(k, &v)| {
                            let c = k / per_channel;
                            (v - f64::from(mean[c])) / (f64::from(var[c]) + eps).sqrt() * f64::from(gamma[c])
                                + f64::from(beta[c])
                        })
                        .collect()
                }
                Step::Linear { x, l, w, b } => {
                    let xs = &values[*x];
                    (0..l.out_features)
                        .map(|o| {
                            let row = &w[o * l.in_features..(o + 1) * l.in_features];
                            let dot: f64 = row.iter().zip(xs).map(|(&wi, &xi)| f64::from(wi) * xi).sum();
                            dot + b.map_or(0.0, |b| f64::from(b[o]))
                        })
                        .collect()
                }
                Step::Act { x, a } => values[*x].iter().map(|&v| activation(*a, v)).collect(),
                Step::MaxPool { x, p, in_shape, out_shape } => max_pool(&values[*x], p, *in_shape, *out_shape),
                Step::GlobalAvgPool { x, channels } => {
                    let xs = &values[*x];
                    let hw = xs.len() / channels;
                    xs.chunks(hw).map(|c| c.iter().sum::<f64>() / hw as f64).collect()
                }
                Step::Add(a, b) => values[*a].iter().zip(&values[*b]).map(|(p, q)| p + q).collect(),
                Step::Mul { scale, x, channels } => {
                    let (s, xs) = (&values[*scale], &values[*x]);
                    let hw = xs.len() / channels;
                    xs.iter().enumerate().map(|(k, &v)| s[k / hw] * v).collect()
                }
                Step::Concat(parts) => parts.iter().flat_map(|&p| values[p].iter().copied()).collect(),
            };
            values.push(v);
        }
        values.swap_remove(self.output).into_iter().map(|v| v as f32).collect()
    }
}

/// PyTorch's definitions (torch.nn.functional).
fn activation(a: Act, x: f64) -> f64 {
    let relu6 = |v: f64| v.clamp(0.0, 6.0);
    match a {
        Act::Relu => x.max(0.0),
        Act::Relu6 => relu6(x),
        Act::Hardswish => x * relu6(x + 3.0) / 6.0,
        Act::Hardsigmoid => relu6(x + 3.0) / 6.0,
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// Grouped 2-d cross-correlation with zero padding, as `torch.nn.Conv2d` (dilation 1).
fn conv(
    x: &[f64],
    c: &Conv2d,
    [cin, h, w]: [usize; 3],
    [cout, oh, ow]: [usize; 3],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f64> {
    let (cin_g, cout_g) = (cin / c.groups, cout / c.groups);
    let ([kh, kw], [sh, sw]) = (c.kernel, c.stride);
    let (ph, pw) = (c.padding[0] as isize, c.padding[1] as isize);
    let mut out = vec![0.0f64; cout * oh * ow];
    for oc in 0..cout {
        let group = oc / cout_g;
        let acc = &mut out[oc * oh * ow..(oc + 1) * oh * ow];
        acc.fill(bias.map_or(0.0, |b| f64::from(b[oc])));
        for icg in 0..cin_g {
            let plane = &x[(group * cin_g + icg) * h * w..][..h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let wv = f64::from(weight[((oc * cin_g + icg) * kh + ky) * kw + kx]);
                    for oy in 0..oh {
                        let iy = (oy * sh + ky) as isize - ph;
                        if iy < 0 || iy >= h as isize {
                            continue; // zero padding
                        }
                        let row = &plane[iy as usize * w..][..w];
                        for ox in 0..ow {
                            let ix = (ox * sw + kx) as isize - pw;
                            if ix >= 0 && ix < w as isize {
                                acc[oy * ow + ox] += wv * row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// `torch.nn.MaxPool2d`: padding counts as -inf (only real pixels compete), and with
/// `ceil_mode` the last window may hang over the right/bottom edge.
fn max_pool(x: &[f64], p: &MaxPool2d, [c, h, w]: [usize; 3], [_, oh, ow]: [usize; 3]) -> Vec<f64> {
    let (k, s, pad) = (p.kernel as isize, p.stride as isize, p.padding as isize);
    let mut out = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        let plane = &x[ch * h * w..][..h * w];
        for oy in 0..oh as isize {
            for ox in 0..ow as isize {
                let mut m = f64::NEG_INFINITY;
                for iy in (oy * s - pad).max(0)..(oy * s - pad + k).min(h as isize) {
                    for ix in (ox * s - pad).max(0)..(ox * s - pad + k).min(w as isize) {
                        m = m.max(plane[iy as usize * w + ix as usize]);
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ConvOpts, GraphBuilder};
    use crate::{Arch, Init};

    /// A tiny graph for the checks that do not need PyTorch (those are in tests/reference.rs).
    fn tiny() -> (Graph, ModelConfig) {
        let (mut g, x) = GraphBuilder::new([1, 28, 28]);
        let x = g.conv(x, "c", 2, ConvOpts::k(3).stride(2).pad(1).bias());
        let x = g.max_pool(x, 3, 2, 0, true);
        let x = g.global_avg_pool(x);
        let x = g.flatten(x);
        let x = g.linear(x, "fc", 10, true, Init::ZEROS, Init::ZEROS);
        (g.finish(x), ModelConfig::new(Arch::M5))
    }

    /// Deterministic, non-trivial values for every parameter of `graph`.
    fn params_of(graph: &Graph) -> Vec<(String, Vec<f32>)> {
        graph
            .params()
            .into_iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                (p.name, (0..n).map(|k| ((k * 37 % 11) as f32 - 5.0) / 7.0).collect())
            })
            .collect()
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (graph, cfg) = tiny();
        let params = params_of(&graph);
        let good = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let image = [0.5f32; 784];
        assert!(forward(&graph, &cfg, &good, &image, 1).is_ok());
        let err = forward(&graph, &cfg, &good, &[0.0; 10], 1).unwrap_err().to_string();
        assert!(err.contains("input has 10 floats"), "{err}");
        let none = |_: &str| None;
        let err = forward(&graph, &cfg, &none, &image, 1).unwrap_err().to_string();
        assert!(err.contains("c.weight is missing"), "{err}");
        let long = vec![1.0f32; 1000];
        let all_long = |_: &str| Some(&long[..]);
        let err = forward(&graph, &cfg, &all_long, &image, 1).unwrap_err().to_string();
        assert!(err.contains("c.weight has 1000 values, expected 18"), "{err}");
        let mut broken = graph.clone();
        broken.nodes[2].shape = vec![2, 5, 5];
        let err = forward(&broken, &cfg, &good, &image, 1).unwrap_err().to_string();
        assert!(err.contains("computes shape [2, 7, 7]"), "{err}");
        let mut cyclic = graph.clone();
        cyclic.nodes[1].inputs = vec![3];
        let err = forward(&cyclic, &cfg, &good, &image, 1).unwrap_err().to_string();
        assert!(err.contains("not 1 earlier node"), "{err}");
        let wide = ModelConfig { in_channels: 3, ..cfg };
        let err = forward(&graph, &wide, &good, &image, 1).unwrap_err().to_string();
        assert!(err.contains("differs from the config"), "{err}");
    }

    #[test]
    fn samples_are_independent_of_batching() {
        let (graph, cfg) = tiny();
        let params = params_of(&graph);
        let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let images: Vec<f32> = (0..5 * 784).map(|k| (k * 7919 % 256) as f32 / 255.0).collect();
        let all = forward(&graph, &cfg, &get, &images, 5).unwrap();
        for i in 0..5 {
            let one = forward(&graph, &cfg, &get, &images[i * 784..(i + 1) * 784], 1).unwrap();
            assert_eq!(one, all[i * 10..(i + 1) * 10]);
        }
        assert_ne!(all[..10], all[10..20], "different images, different logits");
        assert!(forward(&graph, &cfg, &get, &[], 0).unwrap().is_empty());
    }
}

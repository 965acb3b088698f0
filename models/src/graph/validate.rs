//! What a graph must satisfy before anything runs it: each op's shape rule, and the structure
//! every lowering relies on (node 0 is the input, inputs precede their users, arities). The
//! builder computes shapes with the same rule, the trainer, the exporter and the reference
//! evaluator all call [`Graph::validate`], so none of them checks a graph its own way.

use super::{Graph, GraphBuilder, Node, Op, ValueId};
use crate::ModelConfig;

/// Why a graph cannot be lowered: the node at fault and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node} ({op}): {reason}")]
pub struct GraphError {
    pub node: ValueId,
    pub op: &'static str,
    pub reason: String,
}

impl Op {
    /// Number of inputs the op reads; `None` for "one or more" (Concat).
    fn arity(&self) -> Option<usize> {
        match self {
            Op::Input => Some(0),
            Op::Add | Op::Mul => Some(2),
            Op::Concat => None,
            _ => Some(1),
        }
    }

    /// The per-sample shape this op computes from its inputs' shapes, or why it cannot: a
    /// lowering may index by these shapes without checking them again.
    pub fn output_shape(&self, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
        let chw = |s: &[usize]| <[usize; 3]>::try_from(s).map_err(|_| format!("expected a [C,H,W] input, got {s:?}"));
        let x = || ins.first().copied().ok_or_else(|| "no input".to_string());
        Ok(match self {
            Op::Input => return Err("only node 0 may be the input".into()),
            Op::Affine { .. } | Op::Act(_) | Op::Dropout { .. } | Op::StochasticDepth { .. } => x()?.to_vec(),
            Op::Conv2d(c) => {
                let s = chw(x()?)?;
                let [kh, kw] = c.kernel;
                let fits = c.groups > 0
                    && s[0] == c.in_channels
                    && c.in_channels % c.groups == 0
                    && c.out_channels % c.groups == 0
                    && c.stride.iter().all(|&v| v > 0)
                    && kh > 0
                    && kw > 0
                    && s[1] + 2 * c.padding[0] >= kh
                    && s[2] + 2 * c.padding[1] >= kw;
                if !fits {
                    return Err(format!("conv {} does not fit its input {s:?}", c.name));
                }
                let oh = (s[1] + 2 * c.padding[0] - kh) / c.stride[0] + 1;
                let ow = (s[2] + 2 * c.padding[1] - kw) / c.stride[1] + 1;
                vec![c.out_channels, oh, ow]
            }
            Op::BatchNorm(b) => {
                let s = x()?;
                if s.first() != Some(&b.channels) {
                    return Err(format!("BatchNorm {} of {} channels on {s:?}", b.name, b.channels));
                }
                s.to_vec()
            }
            Op::Linear(l) => {
                let s = x()?;
                if s != [l.in_features] {
                    return Err(format!("linear {} of {} inputs on {s:?}", l.name, l.in_features));
                }
                vec![l.out_features]
            }
            Op::MaxPool2d(p) => {
                let s = chw(x()?)?;
                let out = [s[0], p.output_size(s[1]), p.output_size(s[2])];
                // PyTorch's limits (padding at most half the kernel; the ceil-mode rule in
                // `output_size`) guarantee every window meets at least one real pixel.
                if p.kernel == 0 || p.stride == 0 || 2 * p.padding > p.kernel || out[1] == 0 || out[2] == 0 {
                    return Err(format!("max-pool {p:?} does not fit its input {s:?}"));
                }
                out.to_vec()
            }
            Op::GlobalAvgPool => {
                let s = chw(x()?)?;
                if s[1] * s[2] == 0 {
                    return Err(format!("average of an empty {s:?}"));
                }
                vec![s[0], 1, 1]
            }
            Op::Flatten => vec![x()?.iter().product()],
            Op::Add => {
                let (a, b) = (x()?, ins.get(1).copied().unwrap_or_default());
                if a != b {
                    return Err(format!("adding {a:?} and {b:?}"));
                }
                a.to_vec()
            }
            Op::Mul => {
                let (scale, xs) = (x()?, chw(ins.get(1).copied().unwrap_or_default())?);
                if scale != [xs[0], 1, 1] {
                    return Err(format!("scale {scale:?} does not broadcast over {xs:?}"));
                }
                xs.to_vec()
            }
            Op::Concat => {
                let first = chw(x()?)?;
                let mut shape = first;
                shape[0] = 0;
                for s in ins {
                    let s = chw(s)?;
                    if s[1..] != first[1..] {
                        return Err(format!("concatenating {s:?} with {first:?}"));
                    }
                    shape[0] += s[0];
                }
                shape.to_vec()
            }
        })
    }
}

impl Graph {
    /// Checks everything a lowering relies on, so a malformed (hand-built or edited) graph is
    /// an error, never a panic or a silently different model: node 0 is the only input and
    /// every other node reads earlier values, as many as its op takes; every stated shape is
    /// what the op computes; the graph starts with the input and prologue `config` prescribes
    /// ([`GraphBuilder::with_prologue`]). The output may have any shape (test networks end
    /// anywhere); [`Graph::validate_classifier`] also pins it.
    pub fn validate(&self, config: &ModelConfig) -> Result<(), GraphError> {
        let err = |node: ValueId, reason: String| GraphError {
            node,
            op: self.nodes.get(node).map_or("?", |n| n.op.kind()),
            reason,
        };
        let first = self.nodes.first().ok_or_else(|| err(0, "the graph is empty".into()))?;
        if first.op != Op::Input || !first.inputs.is_empty() {
            return Err(err(0, "node 0 must be the input".into()));
        }
        if self.output >= self.nodes.len() {
            return Err(err(self.output, format!("output {} is not a node", self.output)));
        }
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let arity_ok = node.op.arity().map_or(!node.inputs.is_empty(), |a| node.inputs.len() == a);
            if !arity_ok || node.inputs.iter().any(|&v| v >= i) {
                let arity = node.op.arity().unwrap_or(1);
                return Err(err(i, format!("inputs {:?} are not {arity} earlier node(s)", node.inputs)));
            }
            let ins: Vec<&[usize]> = node.inputs.iter().map(|&v| self.nodes[v].shape.as_slice()).collect();
            let computed = node.op.output_shape(&ins).map_err(|reason| err(i, reason))?;
            if computed != node.shape {
                return Err(err(i, format!("computes shape {computed:?} but the graph states {:?}", node.shape)));
            }
        }
        let (want, _) = GraphBuilder::with_prologue(config);
        let got = &self.nodes[..want.nodes.len().min(self.nodes.len())];
        if got != want.nodes.as_slice() {
            return Err(err(
                0,
                format!("input and prologue {} differs from the config's {}", describe(got), describe(&want.nodes)),
            ));
        }
        Ok(())
    }

    /// [`Graph::validate`], and the output is `config.num_classes` class scores: what an
    /// exported model and the reference evaluator promise their callers.
    pub fn validate_classifier(&self, config: &ModelConfig) -> Result<(), GraphError> {
        self.validate(config)?;
        if self.output_shape() != [config.num_classes] {
            return Err(GraphError {
                node: self.output,
                op: self.nodes[self.output].op.kind(),
                reason: format!("output shape {:?} is not [{}]", self.output_shape(), config.num_classes),
            });
        }
        Ok(())
    }
}

/// `Input[1, 28, 28] -> Concat[3, 28, 28]`, for messages.
fn describe(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("{}{:?}", n.op.kind(), n.shape)).collect::<Vec<_>>().join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ConvOpts;
    use crate::{Arch, Init, Normalization};

    fn m5() -> ModelConfig {
        ModelConfig::new(Arch::M5)
    }

    #[test]
    fn every_zoo_graph_is_valid_for_its_config() {
        for &arch in Arch::ALL {
            for in_channels in [1, 3] {
                let config = ModelConfig { in_channels, ..ModelConfig::new(arch) };
                let graph = crate::build(&config).unwrap();
                assert_eq!(graph.validate_classifier(&config), Ok(()), "{arch} {in_channels}");
            }
        }
    }

    #[test]
    fn structure_shapes_and_prologue_are_checked() {
        let (mut g, x) = GraphBuilder::new([1, 28, 28]);
        let y = g.conv(x, "c", 2, ConvOpts::k(3));
        let y = g.flatten(y);
        let y = g.linear(y, "fc", 10, true, Init::ZEROS, Init::ZEROS);
        let graph = g.finish(y);
        assert_eq!(graph.validate_classifier(&m5()), Ok(()));

        let mut late = graph.clone();
        late.nodes[2].inputs = vec![2];
        assert!(late.validate(&m5()).unwrap_err().to_string().contains("node 2 (Flatten): inputs [2] are not 1"));
        let mut add = graph.clone();
        add.nodes[2].op = Op::Add;
        assert!(add.validate(&m5()).unwrap_err().reason.contains("not 2 earlier"));
        let mut second_input = graph.clone();
        second_input.nodes[2].op = Op::Input;
        second_input.nodes[2].inputs.clear();
        assert!(second_input.validate(&m5()).is_err());
        let mut shape = graph.clone();
        shape.nodes[1].shape = vec![2, 28, 28];
        assert!(shape.validate(&m5()).unwrap_err().reason.contains("computes shape [2, 26, 26]"));
        let mut out = graph.clone();
        out.output = 9;
        assert!(out.validate(&m5()).is_err());
        out.output = 2;
        assert_eq!(out.validate(&m5()), Ok(()), "any output shape is a valid network");
        assert!(out.validate_classifier(&m5()).unwrap_err().reason.contains("output shape [1352] is not [10]"));

        // The same graph for a config that prescribes a prologue it lacks.
        let norm = ModelConfig { normalization: Normalization { scale: 1.0 / 255.0, mean: 0.5, std: 0.25 }, ..m5() };
        let e = graph.validate(&norm).unwrap_err().to_string();
        assert!(
            e.contains(
                "Input[1, 28, 28] -> Conv2d[2, 26, 26] differs from the config's Input[1, 28, 28] -> Affine[1, 28, 28]"
            ),
            "{e}"
        );
        let big = ModelConfig { image_size: 32, ..m5() };
        assert!(graph.validate(&big).unwrap_err().reason.contains("differs from the config's Input[1, 32, 32]"));
    }
}

//! `models::Graph` + weights -> ONNX `ModelProto`, in one walk over the nodes.
//!
//! Naming is deterministic and readable: a layer with parameters gives its node and output the
//! layer's `state_dict` prefix (`layer1.0.conv1`), its initializers the full keys
//! (`layer1.0.conv1.weight`); a parameter-free op is named after its first input plus the op
//! (`layer1.0.bn1/relu`). The same checkpoint therefore always gives the same bytes.

use std::collections::HashSet;

use models::{Act, CheckpointMeta, Graph, Op, ValueId};

use crate::error::WeightsMismatch;
use crate::onnx::attribute_proto::AttributeType;
use crate::onnx::tensor_proto::DataType;
use crate::onnx::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::{ExportError, Weights};

/// Oldest opset we emit: `HardSwish` appeared in opset 14.
pub const MIN_OPSET: i64 = 14;
/// Our ops mean the same in every opset from [`MIN_OPSET`] to [`MAX_OPSET`].
pub use models::contract::{BATCH_DIM, INPUT_NAME, MAX_OPSET, OUTPUT_NAME};
pub const DEFAULT_OPSET: i64 = 17;
pub const PRODUCER_NAME: &str = "digit-recognizer-exporter";
pub const PRODUCER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// ONNX default-domain opset, `MIN_OPSET..=MAX_OPSET`.
    pub opset: i64,
    /// Fold each BatchNorm into the Conv/Linear before it when that layer feeds nothing else.
    pub fold_bn: bool,
    /// Batch dimension `N` (any batch) instead of the fixed `batch_size`.
    pub dynamic_batch: bool,
    /// Used only when `dynamic_batch` is false.
    pub batch_size: usize,
    /// Test hook: a deliberately wrong lowering, to prove the self-check catches one.
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: DEFAULT_OPSET, fold_bn: true, dynamic_batch: true, batch_size: 1, fault: None }
    }
}

/// A deliberate lowering bug (tests of the self-check only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Adds [`FAULT_BIAS_DELTA`] to the first value of the last folded bias (the BatchNorm
    /// folded last, nearest the logits, so the error cannot vanish behind a ReLU).
    PerturbFoldedBias,
}

#[doc(hidden)]
pub const FAULT_BIAS_DELTA: f32 = 1e-2;

impl ExportOptions {
    pub fn validate(&self) -> Result<(), ExportError> {
        if !(MIN_OPSET..=MAX_OPSET).contains(&self.opset) {
            return Err(ExportError::InvalidOptions(format!(
                "opset {} is not supported; use {MIN_OPSET}..={MAX_OPSET}",
                self.opset
            )));
        }
        if !self.dynamic_batch && (self.batch_size == 0 || i64::try_from(self.batch_size).is_err()) {
            return Err(ExportError::InvalidOptions(format!(
                "fixed batch size must be positive, got {}",
                self.batch_size
            )));
        }
        Ok(())
    }

    /// The batch dimension as written in shapes and MLflow signatures: `None` when dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        (!self.dynamic_batch).then_some(self.batch_size)
    }
}

/// The IR version released with `opset` (onnx.helper.VERSION_TABLE), so older runtimes that
/// know the opset also accept the file.
pub fn ir_version_for_opset(opset: i64) -> Option<i64> {
    Some(match opset {
        14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => return None,
    })
}

/// What a lowering did, beyond the model itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LowerStats {
    /// BatchNorms folded into the preceding Conv/Linear.
    pub folded_batch_norms: usize,
    /// Scalars in the initializers (after folding).
    pub parameters: usize,
}

/// Lowers `graph` with `weights` to an ONNX model (see the crate docs for the contract).
pub fn lower(
    graph: &Graph,
    meta: &CheckpointMeta,
    weights: &Weights,
    opts: &ExportOptions,
) -> Result<ModelProto, ExportError> {
    lower_with_stats(graph, meta, weights, opts).map(|(m, _)| m)
}

/// [`lower`], also returning what was folded and how many parameters the model holds.
pub fn lower_with_stats(
    graph: &Graph,
    meta: &CheckpointMeta,
    weights: &Weights,
    opts: &ExportOptions,
) -> Result<(ModelProto, LowerStats), ExportError> {
    opts.validate()?;
    let cfg = &meta.model;
    let arch = cfg.arch.name();
    weights.check(graph, arch)?;
    let ir_version = ir_version_for_opset(opts.opset)
        .ok_or_else(|| ExportError::InvalidOptions(format!("no IR version for opset {}", opts.opset)))?;
    graph.validate_classifier(cfg).map_err(|e| ExportError::Unsupported {
        node: e.node,
        op: e.op.into(),
        reason: e.reason,
    })?;

    let nodes = &graph.nodes;
    let consumers = graph.consumers();
    // folded_bn_of[conv] = the BatchNorm folded into it. Only when the conv's output feeds that
    // BatchNorm alone: anything else reading the raw conv output would see changed values.
    let mut folded_bn_of: Vec<Option<ValueId>> = vec![None; nodes.len()];
    let mut is_folded = vec![false; nodes.len()];
    if opts.fold_bn {
        for (i, n) in nodes.iter().enumerate() {
            if let Op::BatchNorm(_) = n.op {
                let src = n.inputs[0];
                if matches!(nodes[src].op, Op::Conv2d(_) | Op::Linear(_))
                    && consumers[src] == [i]
                    && src != graph.output
                {
                    folded_bn_of[src] = Some(i);
                    is_folded[i] = true;
                }
            }
        }
    }
    // The value whose ONNX tensor becomes `logits` (identities resolved).
    let mut out_value = graph.output;
    while matches!(nodes[out_value].op, Op::Dropout { .. } | Op::StochasticDepth { .. }) {
        out_value = nodes[out_value].inputs[0];
    }

    let mut lw = Lowering::new(weights, out_value);
    let mut names: Vec<Option<String>> = vec![None; nodes.len()];
    names[0] = Some(INPUT_NAME.to_string());

    for (i, node) in nodes.iter().enumerate().skip(1) {
        let input = |k: usize| -> Result<String, ExportError> {
            node.inputs.get(k).and_then(|&v| names[v].clone()).ok_or_else(|| ExportError::Unsupported {
                node: i,
                op: node.op.kind().into(),
                reason: format!("input {k} is missing or not computed before this node"),
            })
        };
        let name = match &node.op {
            Op::Input => {
                return Err(ExportError::Unsupported {
                    node: i,
                    op: "Input".into(),
                    reason: "only node 0 may be the input".into(),
                })
            }
            // Identity at inference: later nodes read the input tensor directly.
            Op::Dropout { .. } | Op::StochasticDepth { .. } => input(0)?,
            Op::Affine { mul, add } => {
                let x = input(0)?;
                lw.affine(i, x, *mul, *add)
            }
            Op::Conv2d(c) => {
                let x = input(0)?;
                let w = lw.param(&format!("{}.weight", c.name))?;
                let b = if c.bias { Some(lw.param(&format!("{}.bias", c.name))?) } else { None };
                let (w_data, b_data, out_v, out_base, doc) = match folded_bn_of[i] {
                    Some(bn_id) => {
                        let Op::BatchNorm(bn) = &nodes[bn_id].op else {
                            unreachable!("folded_bn_of points at BatchNorms")
                        };
                        let (w2, b2) =
                            lw.fold(&bn.name, bn.eps, &w.data, b.map(|t| t.data.as_slice()), c.out_channels)?;
                        (w2, Some(b2), bn_id, bn.name.clone(), Some(format!("BatchNorm {} folded in", bn.name)))
                    }
                    None => (w.data.clone(), b.map(|t| t.data.clone()), i, c.name.clone(), None),
                };
                let wn =
                    lw.initializer(&format!("{}.weight", c.name), &dims(&c.weight_shape()), &w_data, doc.as_deref());
                let mut inputs = vec![x, wn];
                if let Some(bd) = b_data {
                    inputs.push(lw.initializer(
                        &format!("{}.bias", c.name),
                        &[c.out_channels as i64],
                        &bd,
                        doc.as_deref(),
                    ));
                }
                let out = lw.output_name(out_v, &out_base);
                let [ph, pw] = c.padding.map(|p| p as i64);
                let attrs = vec![
                    ints("dilations", &[1, 1]),
                    int("group", c.groups as i64),
                    ints("kernel_shape", &dims(&c.kernel)),
                    ints("pads", &[ph, pw, ph, pw]),
                    ints("strides", &dims(&c.stride)),
                ];
                lw.node("Conv", &c.name, inputs, &out, attrs, doc);
                if out_v != i {
                    names[out_v] = Some(out.clone());
                }
                out
            }
            Op::BatchNorm(bn) => {
                if is_folded[i] {
                    continue; // emitted with its conv, which set names[i]
                }
                let x = input(0)?;
                let mut inputs = vec![x];
                for suffix in ["weight", "bias", "running_mean", "running_var"] {
                    let key = format!("{}.{suffix}", bn.name);
                    let t = lw.param(&key)?;
                    let data = t.data.clone();
                    inputs.push(lw.initializer(&key, &[bn.channels as i64], &data, None));
                }
                let out = lw.output_name(i, &bn.name);
                lw.node("BatchNormalization", &bn.name, inputs, &out, vec![float("epsilon", bn.eps as f32)], None);
                out
            }
            Op::Linear(l) => {
                let x = input(0)?;
                let w = lw.param(&format!("{}.weight", l.name))?;
                let b = if l.bias { Some(lw.param(&format!("{}.bias", l.name))?) } else { None };
                let (w_data, b_data, out_v, out_base, doc) = match folded_bn_of[i] {
                    Some(bn_id) => {
                        let Op::BatchNorm(bn) = &nodes[bn_id].op else {
                            unreachable!("folded_bn_of points at BatchNorms")
                        };
                        let (w2, b2) =
                            lw.fold(&bn.name, bn.eps, &w.data, b.map(|t| t.data.as_slice()), l.out_features)?;
                        (w2, Some(b2), bn_id, bn.name.clone(), Some(format!("BatchNorm {} folded in", bn.name)))
                    }
                    None => (w.data.clone(), b.map(|t| t.data.clone()), i, l.name.clone(), None),
                };
                let wn = lw.initializer(
                    &format!("{}.weight", l.name),
                    &[l.out_features as i64, l.in_features as i64],
                    &w_data,
                    doc.as_deref(),
                );
                let mut inputs = vec![x, wn];
                if let Some(bd) = b_data {
                    inputs.push(lw.initializer(
                        &format!("{}.bias", l.name),
                        &[l.out_features as i64],
                        &bd,
                        doc.as_deref(),
                    ));
                }
                let out = lw.output_name(out_v, &out_base);
                // nn.Linear stores weight as [out, in]: y = x W^T + b.
                lw.node("Gemm", &l.name, inputs, &out, vec![int("transB", 1)], doc);
                if out_v != i {
                    names[out_v] = Some(out.clone());
                }
                out
            }
            Op::Act(a) => {
                let x = input(0)?;
                lw.activation(i, *a, x)
            }
            Op::MaxPool2d(p) => {
                let x = input(0)?;
                let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
                let attrs = vec![
                    int("ceil_mode", i64::from(p.ceil_mode)),
                    ints("kernel_shape", &[k, k]),
                    ints("pads", &[pad; 4]),
                    ints("strides", &[s, s]),
                ];
                lw.simple(i, "MaxPool", "maxpool", vec![x], attrs)
            }
            Op::GlobalAvgPool => {
                let x = input(0)?;
                lw.simple(i, "GlobalAveragePool", "avgpool", vec![x], vec![])
            }
            Op::Flatten => {
                let x = input(0)?;
                lw.simple(i, "Flatten", "flatten", vec![x], vec![int("axis", 1)])
            }
            Op::Add => {
                let (a, b) = (input(0)?, input(1)?);
                lw.simple(i, "Add", "add", vec![a, b], vec![])
            }
            Op::Mul => {
                // Named after `x` (input 1): the scale branch is the side path.
                let (scale, x) = (input(0)?, input(1)?);
                let out = lw.output_name(i, &format!("{x}/mul"));
                lw.node("Mul", &out.clone(), vec![scale, x], &out, vec![], None);
                out
            }
            Op::Concat => {
                let parts = (0..node.inputs.len()).map(input).collect::<Result<Vec<_>, _>>()?;
                lw.simple(i, "Concat", "concat", parts, vec![int("axis", 1)])
            }
        };
        names[i] = Some(name);
    }

    if let Some(Fault::PerturbFoldedBias) = opts.fault {
        lw.perturb_last_folded_bias()?;
    }

    let final_name = names[graph.output].clone().ok_or_else(|| ExportError::Unsupported {
        node: graph.output,
        op: nodes[graph.output].op.kind().into(),
        reason: "the graph output is never computed".into(),
    })?;
    if final_name != OUTPUT_NAME {
        // Only when the output is the input itself; every real model ends in an op.
        lw.node("Identity", OUTPUT_NAME, vec![final_name], OUTPUT_NAME, vec![], None);
    }

    let batch = match opts.fixed_batch() {
        Some(b) => dimension::Value::DimValue(b as i64),
        None => dimension::Value::DimParam(BATCH_DIM.into()),
    };
    // [1, S, S] pixel/255, the contract the graph's first node states (validated above).
    let in_shape = dims(graph.input_shape());
    let out_shape: Vec<i64> = dims(graph.output_shape());
    let stats = LowerStats {
        folded_batch_norms: is_folded.iter().filter(|&&f| f).count(),
        parameters: lw
            .inits
            .iter()
            .filter(|t| !t.name.as_deref().unwrap_or("").starts_with(CONST_PREFIX))
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum(),
    };
    let graph_proto = GraphProto {
        node: lw.nodes,
        name: Some(arch.to_string()),
        initializer: lw.inits,
        doc_string: Some(format!("{arch}: {} -> {}", INPUT_NAME, OUTPUT_NAME)),
        input: vec![value_info(INPUT_NAME, batch.clone(), &in_shape, "gray digits [N,1,H,W] holding pixel/255")],
        output: vec![value_info(
            OUTPUT_NAME,
            batch,
            &out_shape,
            "unnormalised class scores (argmax = predicted digit)",
        )],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(ir_version),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) }],
        producer_name: Some(PRODUCER_NAME.into()),
        producer_version: Some(PRODUCER_VERSION.into()),
        domain: None,
        doc_string: Some(doc_string(meta, opts, &stats)),
        graph: Some(graph_proto),
        metadata_props: metadata_props(meta, opts),
        ..Default::default()
    };
    Ok((model, stats))
}

/// Prefix of the constant initializers we add (Affine constants, Relu6 bounds), so they can be
/// told apart from checkpoint parameters.
pub const CONST_PREFIX: &str = "const.";

/// What a consumer needs to use the model without the checkpoint; written as the ONNX
/// `metadata_props` and as the MLflow model's `metadata`.
pub fn model_metadata(meta: &CheckpointMeta, opts: &ExportOptions) -> Vec<(String, String)> {
    let cfg = &meta.model;
    let labels: Vec<String> = (0..cfg.num_classes).map(|c| c.to_string()).collect();
    let mut props = vec![
        ("architecture", cfg.arch.name().to_string()),
        ("normalization", serde_json::to_string(&cfg.normalization).unwrap_or_default()),
        ("class_labels", labels.join(",")),
        ("in_channels", cfg.in_channels.to_string()),
        ("image_size", cfg.image_size.to_string()),
        ("num_classes", cfg.num_classes.to_string()),
        ("epoch", meta.epoch.to_string()),
        ("fold_bn", opts.fold_bn.to_string()),
    ];
    if let Some(a) = meta.val_accuracy {
        props.push(("val_accuracy", a.to_string()));
    }
    if let Some(l) = meta.val_loss {
        props.push(("val_loss", l.to_string()));
    }
    if let Some(r) = &meta.run_id {
        props.push(("run_id", r.clone()));
    }
    if !meta.producer.is_empty() {
        props.push(("checkpoint_producer", meta.producer.clone()));
    }
    props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn metadata_props(meta: &CheckpointMeta, opts: &ExportOptions) -> Vec<StringStringEntryProto> {
    model_metadata(meta, opts)
        .into_iter()
        .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
        .collect()
}

fn doc_string(meta: &CheckpointMeta, opts: &ExportOptions, stats: &LowerStats) -> String {
    let cfg = &meta.model;
    let acc = meta.val_accuracy.map(|a| format!(", val_accuracy {a:.4}")).unwrap_or_default();
    format!(
        "Digit Recognizer {} (epoch {}{acc}). Input `{INPUT_NAME}`: float32 [N,1,{s},{s}] gray images holding pixel/255; \
         output `{OUTPUT_NAME}`: float32 [N,{}] class scores for digits 0..{}. {} BatchNorm(s) folded.",
        cfg.arch.name(),
        meta.epoch,
        cfg.num_classes,
        cfg.num_classes - 1,
        stats.folded_batch_norms,
        s = cfg.image_size,
    ) + if opts.dynamic_batch { "" } else { " Fixed batch size." }
}

struct Lowering<'a> {
    weights: &'a Weights,
    out_value: ValueId,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Tensor names in use (values and initializers share one namespace in ONNX).
    used: HashSet<String>,
    node_names: HashSet<String>,
}

impl<'a> Lowering<'a> {
    fn new(weights: &'a Weights, out_value: ValueId) -> Self {
        let used = [INPUT_NAME, OUTPUT_NAME].map(String::from).into_iter().collect();
        Lowering { weights, out_value, nodes: Vec::new(), inits: Vec::new(), used, node_names: HashSet::new() }
    }

    fn param(&self, name: &str) -> Result<&'a crate::Tensor, ExportError> {
        self.weights.get(name).ok_or_else(|| {
            ExportError::WeightsMismatch(Box::new(WeightsMismatch {
                path: self.weights.origin().to_string(),
                arch: String::new(),
                missing: vec![name.to_string()],
                wrong_shape: vec![],
                unexpected: vec![],
            }))
        })
    }

    /// `base`, or `base.1`, `base.2`... if taken (deterministic: depends only on walk order).
    fn unique(set: &mut HashSet<String>, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while set.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        set.insert(name.clone());
        name
    }

    /// Name of the tensor holding graph value `v`: `logits` for the model output.
    fn output_name(&mut self, v: ValueId, base: &str) -> String {
        if v == self.out_value {
            OUTPUT_NAME.to_string()
        } else {
            Self::unique(&mut self.used, base)
        }
    }

    fn initializer(&mut self, name: &str, dims: &[i64], data: &[f32], doc: Option<&str>) -> String {
        let name = Self::unique(&mut self.used, name);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            doc_string: doc.map(String::from),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn perturb_last_folded_bias(&mut self) -> Result<(), ExportError> {
        let folded = |t: &&mut TensorProto| {
            t.name.as_deref().is_some_and(|n| n.ends_with(".bias"))
                && t.doc_string.as_deref().is_some_and(|d| d.contains("folded in"))
        };
        let t = self.inits.iter_mut().rev().find(folded).ok_or_else(|| {
            ExportError::InvalidOptions(
                "fault injection needs a folded BatchNorm (fold_bn on, an architecture with BatchNorm)".into(),
            )
        })?;
        let raw = t
            .raw_data
            .as_mut()
            .filter(|r| r.len() >= 4)
            .ok_or_else(|| ExportError::InvalidOptions("empty folded bias".into()))?;
        let v = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) + FAULT_BIAS_DELTA;
        raw[..4].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    /// A shared constant, added on first use.
    fn constant(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let full = format!("{CONST_PREFIX}{name}");
        if self.inits.iter().any(|t| t.name.as_deref() == Some(full.as_str())) {
            return full;
        }
        self.initializer(&full, dims, data, None)
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
        doc: Option<String>,
    ) {
        let name = Self::unique(&mut self.node_names, name);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute,
            doc_string: doc,
            ..Default::default()
        });
    }

    /// A parameter-free op named `<first input>/<suffix>`.
    fn simple(
        &mut self,
        v: ValueId,
        op: &str,
        suffix: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.output_name(v, &format!("{}/{suffix}", inputs[0]));
        self.node(op, &out.clone(), inputs, &out, attrs, None);
        out
    }

    fn activation(&mut self, v: ValueId, a: Act, x: String) -> String {
        match a {
            Act::Relu => self.simple(v, "Relu", "relu", vec![x], vec![]),
            Act::Sigmoid => self.simple(v, "Sigmoid", "sigmoid", vec![x], vec![]),
            Act::Hardswish => self.simple(v, "HardSwish", "hardswish", vec![x], vec![]),
            // PyTorch: relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1); ONNX's default alpha is 0.2.
            Act::Hardsigmoid => self.simple(
                v,
                "HardSigmoid",
                "hardsigmoid",
                vec![x],
                vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
            ),
            Act::Relu6 => {
                let lo = self.constant("relu6.min", &[], &[0.0]);
                let hi = self.constant("relu6.max", &[], &[6.0]);
                self.simple(v, "Clip", "relu6", vec![x, lo, hi], vec![])
            }
            // No SiLU op before opset 24 (Swish); x * sigmoid(x) is what exporters emit.
            Act::Silu => {
                let sig = Self::unique(&mut self.used, &format!("{x}/silu.sigmoid"));
                self.node("Sigmoid", &sig.clone(), vec![x.clone()], &sig, vec![], None);
                let out = self.output_name(v, &format!("{x}/silu"));
                self.node("Mul", &out.clone(), vec![x, sig], &out, vec![], None);
                out
            }
        }
    }

    /// `x * mul + add` as ONNX Mul then Add on float32 scalars (what libtorch computes too).
    fn affine(&mut self, v: ValueId, x: String, mul: f32, add: f32) -> String {
        let m = self.initializer(&format!("{CONST_PREFIX}{x}/affine.mul"), &[], &[mul], None);
        let a = self.initializer(&format!("{CONST_PREFIX}{x}/affine.add"), &[], &[add], None);
        let scaled = Self::unique(&mut self.used, &format!("{x}/affine.mul"));
        self.node("Mul", &scaled.clone(), vec![x.clone(), m], &scaled, vec![], None);
        let out = self.output_name(v, &format!("{x}/affine"));
        self.node("Add", &out.clone(), vec![scaled, a], &out, vec![], None);
        out
    }

    /// Folds BatchNorm `bn` into a layer with per-output-row weights `w` (`[out, ...]`) and
    /// optional bias: w' = w*g/sqrt(v+eps), b' = (b-m)*g/sqrt(v+eps) + beta, in f64 so the
    /// folded model stays within rounding of the unfolded one.
    fn fold(
        &self,
        bn: &str,
        eps: f64,
        w: &[f32],
        b: Option<&[f32]>,
        out: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
        let get = |s: &str| self.param(&format!("{bn}.{s}")).map(|t| &t.data);
        let (g, beta, m, var) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        if out == 0
            || !w.len().is_multiple_of(out)
            || [g.len(), beta.len(), m.len(), var.len()].iter().any(|&l| l != out)
        {
            return Err(ExportError::Unsupported {
                node: 0,
                op: "BatchNorm".into(),
                reason: format!("{bn} does not match its layer's {out} outputs"),
            });
        }
        let per_row = w.len() / out;
        let scale: Vec<f64> = (0..out).map(|o| f64::from(g[o]) / (f64::from(var[o]) + eps).sqrt()).collect();
        let w2 = w.iter().enumerate().map(|(k, &x)| (f64::from(x) * scale[k / per_row]) as f32).collect();
        let b2 = (0..out)
            .map(|o| {
                let b0 = b.map_or(0.0, |b| f64::from(b[o]));
                ((b0 - f64::from(m[o])) * scale[o] + f64::from(beta[o])) as f32
            })
            .collect();
        Ok((w2, b2))
    }
}

fn dims(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, batch: dimension::Value, rest: &[i64], doc: &str) -> ValueInfoProto {
    let mut dim = vec![Dimension { value: Some(batch), denotation: None }];
    dim.extend(rest.iter().map(|&d| Dimension { value: Some(dimension::Value::DimValue(d)), denotation: None }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: Some(doc.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::graph::{ConvOpts, GraphBuilder};
    use models::{Arch, Init, ModelConfig};

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            model: ModelConfig::new(Arch::M5),
            epoch: 1,
            val_accuracy: None,
            val_loss: None,
            run_id: None,
            tracking_uri: None,
            producer: String::new(),
        }
    }

    fn weights_for(graph: &Graph) -> Weights {
        let mut w = Weights::new("test");
        for p in graph.params() {
            let n = p.shape.iter().product();
            w.insert(p.name, p.shape, vec![0.5; n]).unwrap();
        }
        w
    }

    fn graph_of(m: &ModelProto) -> &GraphProto {
        m.graph.as_ref().unwrap()
    }

    #[test]
    fn trailing_identity_ops_still_end_in_logits() {
        let (mut g, x) = GraphBuilder::new([1, 28, 28]);
        let x = g.flatten(x);
        let x = g.linear(x, "fc", 10, true, Init::ZEROS, Init::ZEROS);
        let x = g.dropout(x, 0.5);
        let graph = g.finish(x);
        let m = lower(&graph, &meta(), &weights_for(&graph), &ExportOptions::default()).unwrap();
        let ops: Vec<_> = graph_of(&m).node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["Flatten", "Gemm"]);
        assert_eq!(graph_of(&m).node[1].output, [OUTPUT_NAME]);
    }

    #[test]
    fn batch_norm_stays_when_the_conv_output_is_shared() {
        let (mut g, x) = GraphBuilder::new([1, 28, 28]);
        let c = g.conv(x, "conv", 4, ConvOpts::k(3).pad(1));
        let b = g.bn(c, "bn", 1e-5, 0.1);
        let s = g.add(b, c); // the raw conv output is read again: folding would change it
        let c2 = g.conv(s, "conv2", 4, ConvOpts::k(3).pad(1));
        let b2 = g.bn(c2, "bn2", 1e-5, 0.1);
        let p = g.global_avg_pool(b2);
        let f = g.flatten(p);
        let y = g.linear(f, "fc", 10, false, Init::ZEROS, Init::ZEROS);
        let graph = g.finish(y);
        let (m, stats) = lower_with_stats(&graph, &meta(), &weights_for(&graph), &ExportOptions::default()).unwrap();
        let bns: Vec<_> = graph_of(&m)
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("BatchNormalization"))
            .map(|n| n.name.clone().unwrap())
            .collect();
        assert_eq!(bns, ["bn"]);
        assert_eq!(stats.folded_batch_norms, 1);
        // Gemm without bias has no C input.
        let gemm = graph_of(&m).node.iter().find(|n| n.op_type.as_deref() == Some("Gemm")).unwrap();
        assert_eq!(gemm.input.len(), 2);
    }

    #[test]
    fn fold_is_exact_on_a_hand_computed_case() {
        // w=2, b=1, gamma=3, beta=0.5, mean=1, var=3, eps=1: s = 3/sqrt(4) = 1.5;
        // w' = 3, b' = (1 - 1) * 1.5 + 0.5 = 0.5.
        let mut w = Weights::new("t");
        for (k, v) in [("weight", 3.0), ("bias", 0.5), ("running_mean", 1.0), ("running_var", 3.0)] {
            w.insert(format!("bn.{k}"), vec![1], vec![v]).unwrap();
        }
        let lw = Lowering::new(&w, 0);
        assert_eq!(lw.fold("bn", 1.0, &[2.0], Some(&[1.0]), 1).unwrap(), (vec![3.0], vec![0.5]));
        assert_eq!(lw.fold("bn", 1.0, &[2.0, 4.0], None, 1).unwrap(), (vec![3.0, 6.0], vec![-1.0]));
    }

    #[test]
    fn ir_versions_follow_onnx_releases() {
        // onnx.helper.VERSION_TABLE: opset 14 shipped with IR 7, 17 with IR 8, 21 with IR 10.
        assert_eq!([14, 17, 21, 26].map(ir_version_for_opset), [Some(7), Some(8), Some(10), Some(13)]);
        assert_eq!(ir_version_for_opset(13), None);
        for o in MIN_OPSET..=MAX_OPSET {
            assert!(ir_version_for_opset(o).is_some(), "opset {o}");
        }
    }
}

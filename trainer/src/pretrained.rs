//! `--pretrained`: starts a network from a torchvision state_dict saved as safetensors (e.g.
//! ImageNet weights), keeping what fits a 1-channel, `num_classes`-way digit model.
//!
//! Rules, from the graph alone (no per-architecture code):
//! * every tensor whose name and shape match is copied;
//! * the first convolution's 3-channel (RGB) weight is summed over its input channels when the
//!   model takes 1 channel: on a gray image repeated to RGB, that gives the same response;
//! * the classifier (the Conv2d/Linear nearest the output producing `num_classes` values) is
//!   skipped when its shape differs only in the number of classes, and keeps its fresh init;
//! * `num_batches_tracked` and tensors the model lacks are ignored; F64, F16 and BF16 tensors
//!   are converted to f32, a tensor of any other element type is an error;
//! * any other shape clash is an error, and so is finding fewer than half of the model's
//!   tensors (most likely weights of another architecture).

use std::collections::HashSet;
use std::path::Path;

use models::weights::Accept;
use models::{Graph, Op, Weights};
use tch::Kind;

use crate::checkpoint::from_host;
use crate::error::{Result, TrainerError};
use crate::net::Net;

/// What [`load_pretrained`] did, tensor names in the model's (state_dict) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PretrainedReport {
    /// Copied as they are.
    pub copied: Vec<String>,
    /// The first convolution, summed over the file's RGB input channels.
    pub rgb_summed: Vec<String>,
    /// Classifier tensors of another number of classes, left at their fresh init.
    pub skipped_classifier: Vec<String>,
    /// Model tensors absent from the file, left at their fresh init.
    pub missing: Vec<String>,
    /// File tensors the model has no use for (`num_batches_tracked` not counted).
    pub unused: Vec<String>,
}

impl PretrainedReport {
    /// Tensors whose values now come from the file.
    pub fn loaded(&self) -> usize {
        self.copied.len() + self.rgb_summed.len()
    }

    /// Model tensors left at their fresh initialisation.
    pub fn skipped(&self) -> usize {
        self.skipped_classifier.len() + self.missing.len()
    }

    /// The line the trainer prints.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "pretrained: loaded {} tensors ({} first-conv RGB->gray), skipped {} (classifier {}, missing {}), \
             {} unused in the file",
            self.loaded(),
            self.rgb_summed.len(),
            self.skipped(),
            self.skipped_classifier.len(),
            self.missing.len(),
            self.unused.len()
        );
        if !self.missing.is_empty() {
            s.push_str(&format!("; missing: {}", preview(&self.missing)));
        }
        s
    }
}

fn preview(items: &[String]) -> String {
    let shown = items.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 4 {
        format!("{shown}, ... ({} in all)", items.len())
    } else {
        shown
    }
}

/// Name prefix (`conv1.`) of the first convolution of `graph`.
fn first_conv(graph: &Graph) -> Option<String> {
    graph.nodes.iter().find_map(|n| match &n.op {
        Op::Conv2d(c) => Some(format!("{}.", c.name)),
        _ => None,
    })
}

/// Name prefixes (`fc.`, `classifier.1.`) of the layer producing the logits: the Conv2d or
/// Linear with `num_classes` outputs nearest the output (nodes are in topological order), plus
/// any BatchNorm over the `num_classes` logits after it (M5's `fc_bn`).
fn classifier(graph: &Graph, num_classes: usize) -> Vec<String> {
    let head = graph.nodes.iter().rposition(|n| match &n.op {
        Op::Conv2d(c) => c.out_channels == num_classes,
        Op::Linear(l) => l.out_features == num_classes,
        _ => false,
    });
    let Some(head) = head else { return Vec::new() };
    graph.nodes[head..]
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.op {
            Op::Conv2d(c) if i == 0 => Some(format!("{}.", c.name)),
            Op::Linear(l) if i == 0 => Some(format!("{}.", l.name)),
            Op::BatchNorm(b) if b.channels == num_classes => Some(format!("{}.", b.name)),
            _ => None,
        })
        .collect()
}

/// How one model tensor is filled from the file.
enum Plan {
    Copy,
    SumRgb,
}

/// Copies the usable tensors of the safetensors file at `path` into `net` (see the module
/// docs for the rules). Nothing is written into `net` unless the whole file is acceptable.
pub fn load_pretrained(path: &Path, net: &Net) -> Result<PretrainedReport> {
    let file = Weights::read_accepting(path, Accept::AnyFloat).map_err(TrainerError::PretrainedFile)?;
    let bad = |message: String| TrainerError::Pretrained { path: path.to_path_buf(), message };

    let config = net.config();
    let first = first_conv(net.graph());
    let head = classifier(net.graph(), config.num_classes);
    let is_head = |name: &str| head.iter().any(|p| name.starts_with(p.as_str()));

    let mut report = PretrainedReport::default();
    let mut plan: Vec<(usize, Plan)> = Vec::new();
    let mut errors = Vec::new();
    for (i, (spec, _)) in net.params().iter().enumerate() {
        let Some(tensor) = file.get(&spec.name) else {
            report.missing.push(spec.name.clone());
            continue;
        };
        let (have, want) = (tensor.shape.as_slice(), spec.shape.as_slice());
        if have == want {
            plan.push((i, Plan::Copy));
            report.copied.push(spec.name.clone());
            continue;
        }
        let same_except = |dim: usize| {
            have.len() == want.len() && have.iter().zip(want).enumerate().all(|(d, (a, b))| d == dim || a == b)
        };
        if is_head(&spec.name) && same_except(0) {
            report.skipped_classifier.push(spec.name.clone());
        } else if first.as_deref().is_some_and(|p| spec.name.starts_with(p))
            && spec.name.ends_with(".weight")
            && want.len() == 4
            && want[1] == 1
            && have.get(1) == Some(&3)
            && same_except(1)
        {
            plan.push((i, Plan::SumRgb));
            report.rgb_summed.push(spec.name.clone());
        } else {
            errors.push(format!("{} has shape {have:?}, the model's is {want:?}", spec.name));
        }
    }
    let known: HashSet<&str> = net.params().iter().map(|(s, _)| s.name.as_str()).collect();
    // In name order; the reader already left out num_batches_tracked.
    report.unused = file.names().filter(|n| !known.contains(n)).map(String::from).collect();

    if !errors.is_empty() {
        return Err(bad(format!("incompatible with {}: {}", config.arch, preview(&errors))));
    }
    let total = net.params().len();
    let found = report.loaded() + report.skipped_classifier.len();
    if found * 2 < total {
        return Err(bad(format!(
            "only {found} of the {total} tensors of {} are in the file (weights of another architecture?); \
             e.g. missing {}; the file has {}",
            config.arch,
            preview(&report.missing),
            preview(&report.unused)
        )));
    }

    tch::no_grad(|| -> Result<()> {
        for (i, how) in plan {
            let (spec, var) = &net.params()[i];
            let tensor = file.get(&spec.name).expect("checked above");
            let mut src = from_host(tensor, &format!("{} from {}", spec.name, path.display()))?;
            if let Plan::SumRgb = how {
                src = src
                    .f_sum_dim_intlist(1, true, Kind::Float)
                    .map_err(TrainerError::torch(format!("summing {} over RGB", spec.name)))?;
            }
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src).map_err(TrainerError::torch(format!("copying {}", spec.name)))?;
        }
        Ok(())
    })?;
    Ok(report)
}

//! Every architecture, exported with and without BatchNorm folding, must compute what PyTorch
//! computes with the same weights (tests/reference.py: torchvision + onnxruntime).

mod common;

use std::collections::BTreeMap;

use common::*;
use exporter::{export_checkpoint, ExportOptions, MAX_OPSET, MIN_OPSET};
use models::{Arch, ModelConfig, Normalization, Op};
use serde_json::json;

struct Job {
    name: String,
    /// BatchNorm nodes the export must contain (0 when folded).
    expected_bn: usize,
    opts: ExportOptions,
}

#[test]
fn every_arch_matches_torch_with_and_without_folding() {
    let tmp = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    let mut json_jobs = Vec::new();
    let mut add = |name: String, cfg: ModelConfig, variants: &[ExportOptions], seed: u64| {
        let ckpt = tmp.path().join(&name);
        let graph = write_checkpoint(&ckpt, &meta_for(cfg), seed);
        let bns = graph.nodes.iter().filter(|n| matches!(n.op, Op::BatchNorm(_))).count();
        for (k, opts) in variants.iter().enumerate() {
            let job_name = format!("{name}/{}", variant_name(opts));
            let onnx = tmp.path().join(format!("{name}.{k}.onnx"));
            let report = export_checkpoint(&ckpt, &onnx, opts).unwrap_or_else(|e| panic!("{job_name}: {e:?}"));
            assert_eq!(report.stats.folded_batch_norms, if opts.fold_bn { bns } else { 0 }, "{job_name}");
            // Every BatchNorm of the zoo follows a Conv or Linear that feeds nothing else.
            jobs.push(Job {
                name: job_name.clone(),
                expected_bn: if opts.fold_bn { 0 } else { bns },
                opts: opts.clone(),
            });
            json_jobs.push(json!({"name": job_name, "checkpoint": ckpt, "onnx": onnx, "tol": MAX_ABS_DIFF}));
        }
    };
    let folded = ExportOptions::default();
    let unfolded = ExportOptions { fold_bn: false, ..Default::default() };
    for (i, &arch) in Arch::ALL.iter().enumerate() {
        add(arch.name().to_string(), ModelConfig::new(arch), &[folded.clone(), unfolded.clone()], 1000 + i as u64);
    }
    // The input prologue: normalisation constants and a gray image repeated to 3 channels.
    let mut rgb = ModelConfig::new(Arch::ResnetDigits);
    rgb.in_channels = 3;
    rgb.normalization = Normalization { scale: 1.0 / 255.0, mean: 0.1307, std: 0.3081 };
    add("resnet_digits_rgb_norm".into(), rgb, &[folded.clone(), unfolded.clone()], 7);
    // Opset bounds and a fixed batch (HardSwish/HardSigmoid exist only from opset 14).
    let fixed = |opset| ExportOptions { opset, dynamic_batch: false, batch_size: BATCH, ..Default::default() };
    add(
        "mobilenet_v3_small_opsets".into(),
        ModelConfig::new(Arch::MobilenetV3Small),
        &[fixed(MIN_OPSET), fixed(MAX_OPSET)],
        8,
    );

    let results = run_reference(&serde_json::Value::Array(json_jobs), tmp.path());
    let mut failures = Vec::new();
    let mut table = BTreeMap::new();
    for (job, r) in jobs.iter().zip(&results) {
        assert_eq!(r["name"], job.name.as_str());
        if !r["error"].is_null() {
            failures.push(format!("{}: {}", job.name, r["error"].as_str().unwrap_or("?")));
            continue;
        }
        let diff = r["max_abs_diff"].as_f64().unwrap();
        table.insert(
            job.name.clone(),
            (diff, r["max_abs_logit"].as_f64().unwrap(), r["argmax_agree"].as_u64().unwrap()),
        );
        let scale = r["max_abs_logit"].as_f64().unwrap();
        if diff.is_nan() || diff > MAX_ABS_DIFF {
            failures.push(format!("{}: max |torch - onnxruntime| = {diff:e} > {MAX_ABS_DIFF:e}", job.name));
        }
        if diff > MAX_REL_DIFF * scale {
            failures.push(format!(
                "{}: max |torch - onnxruntime| = {diff:e} > {MAX_REL_DIFF:e} * max |logit| ({scale:e})",
                job.name
            ));
        }
        if r["argmax_flips_beyond_tol"].as_u64() != Some(0) {
            failures.push(format!("{}: argmax differs on a clear prediction: {r}", job.name));
        }
        let bn = r["ops"]["BatchNormalization"].as_u64().unwrap_or(0) as usize;
        if bn != job.expected_bn {
            failures.push(format!("{}: {bn} BatchNormalization nodes, expected {}", job.name, job.expected_bn));
        }
        let opset = r["opset"].as_i64().unwrap();
        // The IR version released with the opset (onnx.helper's table), not just any that loads.
        if opset != job.opts.opset || r["ir_version"] != r["min_ir_version"] {
            failures.push(format!(
                "{}: opset/ir_version {opset}/{} unexpected (onnx says ir {})",
                job.name, r["ir_version"], r["min_ir_version"]
            ));
        }
        let batch = if job.opts.dynamic_batch { json!("N") } else { json!(BATCH) };
        if r["inputs"] != json!([["input", [batch, 1, 28, 28]]]) || r["outputs"] != json!([["logits", [batch, 10]]]) {
            failures.push(format!("{}: onnxruntime sees inputs {} outputs {}", job.name, r["inputs"], r["outputs"]));
        }
    }
    eprintln!("{:<50} {:>10} {:>10} {:>10} {:>7}", "job", "max|diff|", "max|logit|", "relative", "argmax");
    for (name, (d, l, a)) in &table {
        eprintln!("{name:<50} {d:>10.2e} {l:>10.2e} {:>10.2e} {a:>4}/{BATCH}", d / l);
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

fn variant_name(o: &ExportOptions) -> String {
    let mut s = if o.fold_bn { "folded".to_string() } else { "unfolded".to_string() };
    if o.opset != exporter::DEFAULT_OPSET {
        s += &format!("-opset{}", o.opset);
    }
    if !o.dynamic_batch {
        s += &format!("-batch{}", o.batch_size);
    }
    s
}

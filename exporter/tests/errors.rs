//! Bad checkpoints must give clear errors naming the problem, and leave no output file;
//! good ones must export deterministically with the documented metadata.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use exporter::onnx::ModelProto;
use exporter::{export_checkpoint, ExportError, ExportOptions};
use models::{Arch, ModelConfig, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};
use prost::Message;

fn exporter_bin(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exporter"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run exporter")
}

/// Full error text including causes, as a user sees it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// Runs the binary on `ckpt`, expects failure, no `out` file, and returns stderr.
fn expect_cli_failure(ckpt: &Path, out: &Path) -> String {
    let o = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "exporter should fail; stdout: {}", String::from_utf8_lossy(&o.stdout));
    assert!(!out.exists(), "{} must not be written on error", out.display());
    let leftovers: Vec<_> =
        std::fs::read_dir(out.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    stderr
}

#[test]
fn wrong_shape_and_missing_tensor_are_both_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let graph = write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::ResnetDigits)), 1);
    let mut w = random_weights(&graph, 1);
    assert!(w.remove("layer2.0.bn1.running_var").is_some());
    w.insert("fc.weight".into(), F32Tensor::new(vec![10, 64], &vec![0.0; 640]));
    w.insert("fc2.weight".into(), F32Tensor::new(vec![2], &[0.0, 1.0]));
    // PyTorch's BatchNorm counter is tolerated (torch state_dicts carry it).
    w.insert("bn1.num_batches_tracked".into(), F32Tensor::new(vec![], &[0.0]));
    write_weights(&ckpt, &w);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.onnx");

    let err = export_checkpoint(&ckpt, &out, &ExportOptions::default()).unwrap_err();
    match &err {
        ExportError::WeightsMismatch(m) => {
            let (missing, wrong_shape, unexpected) = (&m.missing, &m.wrong_shape, &m.unexpected);
            assert_eq!(missing, &["layer2.0.bn1.running_var"]);
            assert_eq!(wrong_shape.len(), 1);
            assert_eq!(
                (wrong_shape[0].name.as_str(), &wrong_shape[0].expected[..], &wrong_shape[0].found[..]),
                ("fc.weight", &[10, 128][..], &[10, 64][..])
            );
            assert_eq!(unexpected, &["fc2.weight"]);
        }
        other => panic!("expected WeightsMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    for needle in [
        "layer2.0.bn1.running_var",
        "fc.weight",
        "[10, 128]",
        "[10, 64]",
        "fc2.weight",
        "model.safetensors",
        "resnet_digits",
    ] {
        assert!(msg.contains(needle), "error should mention {needle}: {msg}");
    }
    assert!(!msg.contains("num_batches_tracked"), "{msg}");
    assert!(!out.exists());

    let stderr = expect_cli_failure(&ckpt, &out);
    for needle in ["layer2.0.bn1.running_var", "fc.weight", "fc2.weight"] {
        assert!(stderr.contains(needle), "stderr should mention {needle}: {stderr}");
    }
}

#[test]
fn existing_output_survives_a_failed_export() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let graph = write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::M5)), 2);
    let mut w = random_weights(&graph, 2);
    w.remove("fc_bn.bias");
    write_weights(&ckpt, &w);
    let out = tmp.path().join("model.onnx");
    std::fs::write(&out, b"previous").unwrap();
    let err = export_checkpoint(&ckpt, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("fc_bn.bias"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}

#[test]
fn missing_dir_corrupt_weights_and_unknown_arch_are_clear_cli_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.onnx");

    // Missing directory.
    let missing = tmp.path().join("no-such-checkpoint");
    let stderr = expect_cli_failure(&missing, &out);
    assert!(stderr.contains("no-such-checkpoint") && stderr.contains("does not exist"), "{stderr}");

    // No model.safetensors.
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::M5)), 3);
    let weights = ckpt.join(CHECKPOINT_WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let stderr = expect_cli_failure(&ckpt, &out);
    assert!(stderr.contains(&weights.display().to_string()) && stderr.contains("not found"), "{stderr}");

    // Truncated (corrupt) safetensors.
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let stderr = expect_cli_failure(&ckpt, &out);
    assert!(stderr.contains(&weights.display().to_string()) && stderr.contains("not a valid safetensors"), "{stderr}");
    let err = export_checkpoint(&ckpt, &out, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Safetensors { .. }), "{err:?}");

    // A float64 tensor is named.
    let st = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![1], &[0u8; 8]).unwrap();
    std::fs::write(&weights, safetensors::serialize([("conv1.weight", st)], None).unwrap()).unwrap();
    let stderr = expect_cli_failure(&ckpt, &out);
    assert!(stderr.contains("conv1.weight") && stderr.contains("F64"), "{stderr}");
    std::fs::write(&weights, &good).unwrap();

    // Unknown architecture in config.json.
    let meta_path = ckpt.join(CHECKPOINT_META_FILE);
    let text = std::fs::read_to_string(&meta_path).unwrap().replace("\"m5\"", "\"resnet19\"");
    assert!(text.contains("resnet19"));
    std::fs::write(&meta_path, text).unwrap();
    let stderr = expect_cli_failure(&ckpt, &out);
    assert!(stderr.contains("resnet19") && stderr.contains("config.json") && stderr.contains("resnet18"), "{stderr}");
    let err = export_checkpoint(&ckpt, &out, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Config(_)) && chain(&err).contains("resnet19"), "{}", chain(&err));

    // Not JSON at all.
    std::fs::write(&meta_path, "{").unwrap();
    let stderr = expect_cli_failure(&ckpt, &out);
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn bad_options_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::M5)), 4);
    let out = tmp.path().join("m.onnx");
    for opts in [
        ExportOptions { opset: 13, ..Default::default() },
        ExportOptions { opset: exporter::MAX_OPSET + 1, ..Default::default() },
        ExportOptions { dynamic_batch: false, batch_size: 0, ..Default::default() },
    ] {
        let err = export_checkpoint(&ckpt, &out, &opts).unwrap_err();
        assert!(matches!(err, ExportError::InvalidOptions(_)), "{opts:?}: {err:?}");
    }
    assert!(!out.exists());
    let o = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out, &"--opset", &"13"]);
    assert!(!o.status.success() && !out.exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("13"));
}

#[test]
fn export_is_deterministic_and_carries_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let mut meta = meta_for(ModelConfig::new(Arch::MobilenetV3Small));
    meta.run_id = Some("0123456789abcdef0123456789abcdef".into());
    let graph = write_checkpoint(&ckpt, &meta, 5);
    let (a, b) = (tmp.path().join("a.onnx"), tmp.path().join("b.onnx"));
    let opts = ExportOptions::default();
    let report = export_checkpoint(&ckpt, &a, &opts).unwrap();
    export_checkpoint(&ckpt, &b, &opts).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap(), "same checkpoint, same bytes");
    assert_eq!(report.bytes, bytes.len() as u64);

    let m = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.producer_name.as_deref(), Some("digit-recognizer-exporter"));
    assert_eq!(m.producer_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(m.doc_string.as_deref().unwrap_or("").contains("mobilenet_v3_small"));
    let props: std::collections::BTreeMap<_, _> =
        m.metadata_props.iter().map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap())).collect();
    assert_eq!(props["architecture"], "mobilenet_v3_small");
    assert_eq!(props["class_labels"], "0,1,2,3,4,5,6,7,8,9");
    assert_eq!(props["run_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(props["epoch"], "3");
    assert_eq!(props["val_accuracy"], "0.987");
    let norm: models::Normalization = serde_json::from_str(&props["normalization"]).unwrap();
    assert_eq!(norm, meta.model.normalization);

    // Initializers are the checkpoint's tensors under their state_dict names (BatchNorms folded
    // away), plus the shared Relu6/normalisation constants.
    let g = m.graph.unwrap();
    let inits: std::collections::BTreeSet<String> = g.initializer.iter().map(|t| t.name.clone().unwrap()).collect();
    for p in graph.params() {
        let is_bn = p.name.contains("running_")
            || graph
                .nodes
                .iter()
                .any(|n| matches!(&n.op, models::Op::BatchNorm(b) if p.name.starts_with(&format!("{}.", b.name))));
        assert_eq!(inits.contains(&p.name), !is_bn, "{}", p.name);
    }
    assert!(inits.contains("features.0.0.bias"), "folded conv gets a bias");
    assert_eq!(report.initializers, inits.len());
    assert_eq!(report.nodes, g.node.len());
    let names: std::collections::HashSet<_> = g.node.iter().map(|n| n.name.clone().unwrap()).collect();
    assert_eq!(names.len(), g.node.len(), "node names are unique");
}

#[test]
fn cli_prints_file_size_and_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::Squeezenet1_1)), 6);
    let out = tmp.path().join("sq.onnx");
    let o = exporter_bin(&[&"--checkpoint", &ckpt, &"-o", &out, &"--no-fold-bn", &"--batch-size", &"4"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let nodes = m.graph.as_ref().unwrap().node.len();
    assert!(stdout.contains(&out.display().to_string()) && stdout.contains(&format!("{nodes} nodes")), "{stdout}");
    assert!(stdout.contains("KiB") || stdout.contains("MiB"), "{stdout}");
    let input = &m.graph.as_ref().unwrap().input[0];
    let dims = match &input.r#type.as_ref().unwrap().value {
        Some(exporter::onnx::type_proto::Value::TensorType(t)) => t.shape.as_ref().unwrap().dim.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(dims[0].value, Some(exporter::onnx::tensor_shape_proto::dimension::Value::DimValue(4)));
}

/// Faults survived (issue #21): a model.safetensors cut short anywhere and a config.json of
/// another architecture fail on one line naming the file, exit non-zero and write nothing.
#[test]
fn truncated_weights_and_a_foreign_config_fail_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.onnx");
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::CnnDigits)), 7);
    let weights = ckpt.join(CHECKPOINT_WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();
    let one_line = |stderr: &str, file: &Path, says: &str| {
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line:\n{stderr}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(&file.display().to_string()), "{stderr}");
        assert!(lines[0].contains(says), "{stderr}");
        println!("{}", lines[0]);
    };
    // In the length prefix, in the JSON header, in the tensor data, one byte short.
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for cut in [4, header / 2, (header + good.len()) / 2, good.len() - 1] {
        std::fs::write(&weights, &good[..cut]).unwrap();
        one_line(&expect_cli_failure(&ckpt, &out), &weights, "not a valid safetensors file");
    }
    std::fs::write(&weights, &good).unwrap();
    // cnn_digits weights under a config.json saying m5.
    write_meta(&ckpt, &meta_for(ModelConfig::new(Arch::M5)));
    one_line(&expect_cli_failure(&ckpt, &out), &weights, "m5");
}

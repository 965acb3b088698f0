//! `--pretrained`: synthetic torchvision-shaped files (3-channel stem, 1000 classes) loaded into
//! 1-channel 10-class models, a real torchvision state_dict through scripts/convert_pth.py, and
//! the CLI end to end with the run read back by mlflow.

mod common;

use std::path::Path;
use std::process::Command;

use models::{Arch, ModelConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};
use trainer::{load_pretrained, Model, TrainerError};

/// One named tensor for a synthetic file.
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
}

/// A tiny deterministic generator, so files differ from any model init.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) + 0.25 // in [0.25, 1.25): positive for running_var
        })
        .collect()
}

/// Every tensor torchvision's `arch` state_dict holds with 3 input channels and 1000 classes
/// (our zoo names and shapes them the same), random values, plus num_batches_tracked (int64)
/// after each BatchNorm as torch writes them.
fn torchvision_like(arch: Arch) -> Vec<Entry> {
    let config = ModelConfig { in_channels: 3, num_classes: 1000, ..ModelConfig::new(arch) };
    let graph = models::build(&config).unwrap();
    let mut out = Vec::new();
    for (i, spec) in graph.params().into_iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let bytes = values(n, i as u64 + 1).iter().flat_map(|v| v.to_le_bytes()).collect();
        let bn_prefix = spec.name.strip_suffix(".running_var").map(String::from);
        out.push(Entry { name: spec.name, shape: spec.shape, dtype: Dtype::F32, bytes });
        if let Some(prefix) = bn_prefix {
            out.push(Entry {
                name: format!("{prefix}.num_batches_tracked"),
                shape: vec![],
                dtype: Dtype::I64,
                bytes: 7i64.to_le_bytes().to_vec(),
            });
        }
    }
    out
}

fn write(path: &Path, entries: &[Entry]) {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|e| (e.name.clone(), TensorView::new(e.dtype, e.shape.clone(), &e.bytes).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn f32s(e: &Entry) -> Vec<f32> {
    e.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn entry<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name} in the file"))
}

fn model_tensor(model: &Model, name: &str) -> Tensor {
    let (_, t) = model.net.params().iter().find(|(s, _)| s.name == name).unwrap_or_else(|| panic!("no {name}"));
    t.detach().copy()
}

fn file_tensor(e: &Entry) -> Tensor {
    let dims: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&f32s(e)).reshape(dims.as_slice())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

fn gray_resnet18() -> Model {
    tch::manual_seed(0);
    Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap()
}

#[test]
fn resnet18_imagenet_shaped_file_loads_into_gray_10_class_model() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("resnet18.safetensors");
    let entries = torchvision_like(Arch::Resnet18);
    write(&file, &entries);

    let model = gray_resnet18();
    let fresh_fc = model_tensor(&model, "fc.weight");
    let report = load_pretrained(&file, &model.net).unwrap();
    println!("{}", report.summary());

    // conv1: the file's [64,3,7,7] summed over RGB (keepdim) -> [64,1,7,7].
    let conv1 = model_tensor(&model, "conv1.weight");
    let expected = file_tensor(entry(&entries, "conv1.weight")).sum_dim_intlist(1, true, Kind::Float);
    assert!(max_abs_diff(&conv1, &expected) < 1e-6);
    assert_eq!(report.rgb_summed, vec!["conv1.weight".to_string()]);

    // Body weights and BatchNorm running statistics copied exactly.
    for name in
        ["layer1.0.conv1.weight", "layer4.1.bn2.weight", "bn1.running_mean", "layer3.0.downsample.1.running_var"]
    {
        let got = model_tensor(&model, name);
        assert_eq!(max_abs_diff(&got, &file_tensor(entry(&entries, name))), 0.0, "{name}");
    }

    // The classifier keeps the fresh init: 1000 classes in the file, 10 in the model.
    assert_eq!(report.skipped_classifier, vec!["fc.weight".to_string(), "fc.bias".to_string()]);
    assert_eq!(max_abs_diff(&model_tensor(&model, "fc.weight"), &fresh_fc), 0.0);
    assert_eq!(model_tensor(&model, "fc.weight").size(), vec![10, 512]);

    let total = model.net.params().len();
    assert_eq!(report.loaded(), total - 2);
    assert!(report.missing.is_empty() && report.unused.is_empty(), "{report:?}");
    // Still a working network.
    let (x, _) = common::sample_batch(4);
    assert_eq!(model.net.forward_t(&x, false).size(), vec![4, 10]);
}

#[test]
fn three_channel_model_copies_the_stem_and_squeezenet_conv_head_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("squeezenet.safetensors");
    let entries = torchvision_like(Arch::Squeezenet1_1);
    write(&file, &entries);
    tch::manual_seed(0);
    let config = ModelConfig { in_channels: 3, ..ModelConfig::new(Arch::Squeezenet1_1) };
    let model = Model::new(&config, Device::Cpu).unwrap();
    let report = load_pretrained(&file, &model.net).unwrap();
    // 3 channels in both: the first conv is copied unchanged.
    assert!(report.rgb_summed.is_empty());
    let stem = model_tensor(&model, "features.0.weight");
    assert_eq!(max_abs_diff(&stem, &file_tensor(entry(&entries, "features.0.weight"))), 0.0);
    // SqueezeNet's classifier is a 1x1 convolution: found from the graph, not by name.
    assert_eq!(report.skipped_classifier, vec!["classifier.1.weight".to_string(), "classifier.1.bias".to_string()]);

    // M5 normalises its logits with a BatchNorm after fc: part of the classifier too.
    let file = tmp.path().join("m5.safetensors");
    write(&file, &torchvision_like(Arch::M5));
    let model = Model::new(&ModelConfig::new(Arch::M5), Device::Cpu).unwrap();
    let report = load_pretrained(&file, &model.net).unwrap();
    let skipped: Vec<&str> = report.skipped_classifier.iter().map(String::as_str).collect();
    assert_eq!(skipped, ["fc.weight", "fc_bn.weight", "fc_bn.bias", "fc_bn.running_mean", "fc_bn.running_var"]);
    assert_eq!(report.rgb_summed, vec!["conv1.weight".to_string()]);
}

#[test]
fn another_architecture_or_a_shape_clash_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = gray_resnet18();
    let before = model_tensor(&model, "layer1.0.conv1.weight");

    let mobilenet = tmp.path().join("mobilenet_v2.safetensors");
    write(&mobilenet, &torchvision_like(Arch::MobilenetV2));
    let err = load_pretrained(&mobilenet, &model.net).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, TrainerError::Pretrained { .. }), "{err:?}");
    assert!(msg.contains("mobilenet_v2.safetensors") && msg.contains("another architecture"), "{msg}");

    // A same-named tensor of another shape (as a bottleneck ResNet's 1x1 layer1.0.conv1 would be).
    let mut entries = torchvision_like(Arch::Resnet18);
    let e = entries.iter_mut().find(|e| e.name == "layer1.0.conv1.weight").unwrap();
    e.shape = vec![64, 64, 1, 1];
    e.bytes.truncate(64 * 64 * 4);
    let clash = tmp.path().join("clash.safetensors");
    write(&clash, &entries);
    let msg = load_pretrained(&clash, &model.net).unwrap_err().to_string();
    println!("{msg}");
    assert!(
        msg.contains("clash.safetensors") && msg.contains("layer1.0.conv1.weight has shape [64, 64, 1, 1]"),
        "{msg}"
    );

    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not safetensors").unwrap();
    let msg = load_pretrained(&garbage, &model.net).unwrap_err().to_string();
    assert!(msg.contains("garbage.safetensors") && msg.contains("not a valid safetensors"), "{msg}");

    // Nothing was written into the model by the failed loads.
    assert_eq!(max_abs_diff(&model_tensor(&model, "layer1.0.conv1.weight"), &before), 0.0);
}

const MAKE_PTH: &str = r#"
import sys, torch, torchvision
from safetensors.torch import save_file
torch.manual_seed(3)
m = torchvision.models.resnet18(weights=None)
# Make BN statistics non-trivial so copying them is visible.
with torch.no_grad():
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
sd = {"module." + k: v for k, v in m.state_dict().items()}
torch.save({"state_dict": sd, "epoch": 3}, sys.argv[1])
# What the trainer must end up with, computed by torch.
save_file({
    "conv1": m.conv1.weight.detach().sum(dim=1, keepdim=True).contiguous(),
    "bn_var": m.layer2[0].bn1.running_var.clone(),
    "w": m.layer3[1].conv2.weight.detach().clone(),
}, sys.argv[2])
"#;

#[test]
fn convert_script_turns_a_torchvision_pth_into_loadable_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (pth, expected, out) = (
        tmp.path().join("resnet18.pth"),
        tmp.path().join("expected.safetensors"),
        tmp.path().join("resnet18.safetensors"),
    );
    let py = common::venv_python();
    let made = Command::new(&py).args(["-c", MAKE_PTH]).arg(&pth).arg(&expected).output().unwrap();
    assert!(made.status.success(), "{}", common::text(&made.stderr));

    let script = common::workspace_root().join("scripts/convert_pth.py");
    let conv = Command::new(&py).arg(&script).arg(&pth).arg(&out).output().unwrap();
    assert!(conv.status.success(), "convert_pth.py failed: {}", common::text(&conv.stderr));

    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().iter().all(|n| !n.starts_with("module.") && !n.ends_with("num_batches_tracked")));

    let model = gray_resnet18();
    let report = load_pretrained(&out, &model.net).unwrap();
    // torchvision's own names: everything but fc found, nothing left over.
    assert!(report.missing.is_empty() && report.unused.is_empty(), "{report:?}");
    assert_eq!(report.loaded(), model.net.params().len() - 2);

    let want_bytes = std::fs::read(&expected).unwrap();
    let want = SafeTensors::deserialize(&want_bytes).unwrap();
    let get = |k: &str| {
        let v = want.tensor(k).unwrap();
        let dims: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
        Tensor::from_data_size(v.data(), &dims, Kind::Float)
    };
    assert!(max_abs_diff(&model_tensor(&model, "conv1.weight"), &get("conv1")) < 1e-6);
    assert_eq!(max_abs_diff(&model_tensor(&model, "layer2.0.bn1.running_var"), &get("bn_var")), 0.0);
    assert_eq!(max_abs_diff(&model_tensor(&model, "layer3.1.conv2.weight"), &get("w")), 0.0);

    // A file that is not a checkpoint: a clear error naming it, no output written.
    let bad = tmp.path().join("bad.pth");
    std::fs::write(&bad, b"junk").unwrap();
    let bad_out = tmp.path().join("bad.safetensors");
    let res = Command::new(&py).arg(&script).arg(&bad).arg(&bad_out).output().unwrap();
    assert!(!res.status.success());
    assert!(common::text(&res.stderr).contains("bad.pth"), "{}", common::text(&res.stderr));
    assert!(!bad_out.exists());
}

#[test]
fn cli_trains_from_pretrained_weights_and_logs_the_param() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("resnet18.safetensors");
    write(&file, &torchvision_like(Arch::Resnet18));
    let mlruns = tmp.path().join("mlruns");
    let args = |weights: &Path, dir: &Path| {
        let extra =
            ["--model", "resnet18", "--epochs", "1", "--limit", "300", "--pretrained", weights.to_str().unwrap()];
        common::trainer_args(&extra, &common::sample_zip(), dir)
    };
    let out = common::run_trainer(&args(&file, tmp.path()));
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "trainer failed:\n{stdout}\n{}", common::text(&out.stderr));
    println!("{stdout}");
    let n = models::build(&ModelConfig::new(Arch::Resnet18)).unwrap().params().len();
    assert!(stdout.contains(&format!("pretrained: loaded {} tensors (1 first-conv", n - 2)), "{stdout}");
    let run_id = stdout.lines().find_map(|l| l.strip_prefix("MLflow run id: ")).expect("run id printed").trim();

    let read = "import sys\nfrom mlflow.tracking import MlflowClient\n\
                print(MlflowClient(tracking_uri=sys.argv[1]).get_run(sys.argv[2]).data.params['pretrained'])";
    let res = Command::new(common::venv_python())
        .args(["-c", read])
        .arg(&mlruns)
        .arg(run_id)
        .env("MLFLOW_ALLOW_FILE_STORE", "true")
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", common::text(&res.stderr));
    let logged = common::text(&res.stdout);
    assert_eq!(Path::new(logged.trim()), std::path::absolute(&file).unwrap());

    // A wrong file fails before any run or checkpoint is written.
    let wrong = tmp.path().join("mobilenet.safetensors");
    write(&wrong, &torchvision_like(Arch::MobilenetV2));
    let dir2 = tmp.path().join("wrong");
    let out = common::run_trainer(&args(&wrong, &dir2));
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(stderr.contains("mobilenet.safetensors"), "{stderr}");
    assert!(!dir2.join("ckpts").exists() && !dir2.join("mlruns").exists());
}

//! The lowering creates exactly the graph's tensors, named as torchvision's state_dict and
//! initialised as the graph says; checkpoints round-trip and reject mismatches.

mod common;

use models::{Arch, Init, ModelConfig, ParamKind};
use tch::{Device, Kind, Tensor};
use trainer::{load_checkpoint, save_checkpoint, Model, PRODUCER};

#[test]
fn var_store_names_and_shapes_equal_graph_params_for_every_arch() {
    for &arch in Arch::ALL {
        let config = ModelConfig::new(arch);
        let model = Model::new(&config, Device::Cpu).unwrap();
        let specs = models::build(&config).unwrap().params();
        let vars = model.vs.variables();
        assert_eq!(vars.len(), specs.len(), "{arch}: var store has {} tensors, graph {}", vars.len(), specs.len());
        for spec in &specs {
            let t = vars.get(&spec.name).unwrap_or_else(|| panic!("{arch}: no variable named {}", spec.name));
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            assert_eq!(shape, spec.shape, "{arch}: {}", spec.name);
            assert_eq!(t.kind(), Kind::Float, "{arch}: {}", spec.name);
            assert_eq!(t.requires_grad(), spec.kind == ParamKind::Trainable, "{arch}: {} trainable", spec.name);
        }
        // The optimiser sees exactly the trainable tensors.
        let trainable: usize = model.vs.trainable_variables().iter().map(|t| t.numel()).sum();
        assert_eq!(trainable, model.net.graph().num_trainable(), "{arch}");
    }
}

#[test]
fn three_channel_models_have_three_channel_first_conv() {
    let config = ModelConfig { in_channels: 3, ..ModelConfig::new(Arch::Resnet18) };
    let model = Model::new(&config, Device::Cpu).unwrap();
    assert_eq!(model.vs.variables()["conv1.weight"].size(), [64, 3, 7, 7]);
    // The input stays one gray channel: the network repeats it.
    let (x, _) = common::sample_batch(2);
    assert_eq!(model.net.forward_t(&x, false).size(), [2, 10]);
}

fn stats(t: &Tensor) -> (f64, f64, f64, f64) {
    let t = t.detach().to_kind(Kind::Double);
    (
        t.mean(Kind::Double).double_value(&[]),
        t.std(true).double_value(&[]),
        t.min().double_value(&[]),
        t.max().double_value(&[]),
    )
}

#[test]
fn initialisation_follows_param_specs() {
    tch::manual_seed(0);
    for arch in [Arch::Resnet18, Arch::MobilenetV3Small, Arch::EfficientnetB0, Arch::M5, Arch::Squeezenet1_0] {
        let model = Model::new(&ModelConfig::new(arch), Device::Cpu).unwrap();
        let mut checked_normal = false;
        for (spec, t) in model.net.params() {
            let (mean, std, min, max) = stats(t);
            let what = format!("{arch} {} {:?}", spec.name, spec.init);
            if spec.name.ends_with("running_mean") || spec.name.ends_with("running_var") {
                assert_eq!(spec.kind, ParamKind::Buffer, "{what}");
            }
            match spec.init {
                Init::Const(v) => {
                    assert!(min == v && max == v, "{what}: values in [{min}, {max}], want exactly {v}");
                }
                Init::Uniform { bound } => {
                    let bound32 = bound as f32 as f64;
                    assert!(min >= -bound32 && max <= bound32, "{what}: [{min}, {max}] outside ±{bound}");
                    if t.numel() >= 1000 {
                        // U(-b, b) has std b/sqrt(3) and fills its range.
                        let want = bound / 3f64.sqrt();
                        assert!((std - want).abs() < 0.1 * want, "{what}: std {std}, want {want}");
                        assert!(max > 0.9 * bound && min < -0.9 * bound, "{what}: [{min}, {max}]");
                    }
                }
                Init::Normal { std: want } => {
                    if t.numel() >= 10_000 {
                        assert!((std - want).abs() < 0.1 * want, "{what}: std {std}, want {want}");
                        assert!(mean.abs() < 0.1 * want, "{what}: mean {mean}");
                        checked_normal = true;
                    }
                }
            }
        }
        // Every BatchNorm: weight 1, bias 0, running stats 0 and 1 (tch's own default
        // initialises BN weights uniformly, which torchvision does not).
        let vars = model.vs.variables();
        let mut bns = 0;
        for node in &model.net.graph().nodes {
            if let models::Op::BatchNorm(bn) = &node.op {
                bns += 1;
                for (suffix, v) in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)] {
                    let (_, _, min, max) = stats(&vars[&format!("{}.{suffix}", bn.name)]);
                    assert!(min == v && max == v, "{arch} {}.{suffix}: [{min}, {max}], want {v}", bn.name);
                }
            }
        }
        assert_eq!(bns > 0, arch != Arch::Squeezenet1_0, "{arch}: SqueezeNet alone has no BatchNorm");
        if arch != Arch::Squeezenet1_0 {
            assert!(checked_normal, "{arch}: no large normal-initialised tensor checked");
        }
    }
    // A large conv: resnet34 layer4 3x3 512->512, kaiming normal fan-out std sqrt(2/(512*9)).
    let model = Model::new(&ModelConfig::new(Arch::Resnet34), Device::Cpu).unwrap();
    let w = &model.vs.variables()["layer4.1.conv2.weight"];
    let (_, std, _, _) = stats(w);
    let want = (2.0f64 / (512.0 * 9.0)).sqrt();
    assert!((std - want).abs() < 0.1 * want, "layer4.1.conv2.weight std {std}, want {want}");
}

#[test]
fn checkpoint_round_trips_and_rejects_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let config = ModelConfig::new(Arch::M5);
    let model = Model::new(&config, Device::Cpu).unwrap();
    // Make the running statistics non-default so they must round-trip too.
    let (x, _) = common::sample_batch(16);
    let _ = tch::no_grad(|| model.net.forward_t(&x, true));
    let meta = models::CheckpointMeta {
        model: config.clone(),
        epoch: 3,
        val_accuracy: Some(0.5),
        val_loss: Some(1.5),
        run_id: Some("abc".into()),
        tracking_uri: Some("/tmp/mlruns".into()),
        producer: PRODUCER.into(),
    };
    let ckpt = dir.path().join("ckpt");
    save_checkpoint(&ckpt, &model.net, &meta).unwrap();
    let (meta2, loaded) = load_checkpoint(&ckpt, Device::Cpu).unwrap();
    assert_eq!(meta2, meta);
    for ((spec, a), (_, b)) in model.net.params().iter().zip(loaded.net.params()) {
        assert!(a.equal(b), "{} differs after reload", spec.name);
    }
    let (xe, _) = common::sample_batch(4);
    assert!(model.net.forward_t(&xe, false).equal(&loaded.net.forward_t(&xe, false)));

    // Weights of another architecture: a clear error naming the file and the problems.
    let other = dir.path().join("other");
    let squeeze = Model::new(&ModelConfig::new(Arch::Squeezenet1_1), Device::Cpu).unwrap();
    trainer::save_weights(&other.join(models::CHECKPOINT_WEIGHTS_FILE), &squeeze.net).unwrap();
    std::fs::write(other.join(models::CHECKPOINT_META_FILE), meta.to_json()).unwrap();
    let err = load_checkpoint(&other, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("missing conv1.weight"), "{err}");
    assert!(err.contains("unexpected classifier.1.bias") && err.contains("(52 in all)"), "{err}");

    // Same names, one wrong shape (a 3-channel first conv in a 1-channel checkpoint).
    let rgb = Model::new(&ModelConfig { in_channels: 3, ..config.clone() }, Device::Cpu).unwrap();
    trainer::save_weights(&other.join(models::CHECKPOINT_WEIGHTS_FILE), &rgb.net).unwrap();
    let err = load_checkpoint(&other, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("conv1.weight has shape [32, 3, 5, 5], expected [32, 1, 5, 5]"), "{err}");
    assert!(!err.contains("missing") && !err.contains("unexpected"), "{err}");

    // Not safetensors at all.
    std::fs::write(other.join(models::CHECKPOINT_WEIGHTS_FILE), b"not a tensor file").unwrap();
    let err = load_checkpoint(&other, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors"), "{err}");

    // Metadata of one model with another's network is refused before writing.
    let bad_meta = models::CheckpointMeta { model: ModelConfig::new(Arch::Resnet18), ..meta };
    assert!(save_checkpoint(&dir.path().join("refused"), &model.net, &bad_meta).is_err());
    assert!(!dir.path().join("refused").join(models::CHECKPOINT_WEIGHTS_FILE).exists());
}

#[test]
fn forward_rejects_wrong_input_shape() {
    let model = Model::new(&ModelConfig::new(Arch::M5), Device::Cpu).unwrap();
    let err = model.net.f_forward_t(&Tensor::zeros([2, 3, 28, 28], (Kind::Float, Device::Cpu)), false).unwrap_err();
    assert!(err.to_string().contains("[N, 1, 28, 28]"), "{err}");
}

/// input -> `op` -> flatten, as a 784-wide network around one regularising op.
fn single_op_net(op: fn(&mut models::graph::GraphBuilder, usize) -> usize) -> Model {
    let config = ModelConfig::new(Arch::M5);
    let (mut g, x) = models::graph::GraphBuilder::new(config.input_shape());
    let y = op(&mut g, x);
    let out = g.flatten(y);
    Model::from_graph(g.finish(out), &config, Device::Cpu).unwrap()
}

/// Rows of `y` (flattened outputs) compared with the input rows `x`: (zeroed rows, kept rows
/// equal to x / (1 - p), other rows).
fn classify_rows(x: &Tensor, y: &Tensor, p: f64) -> (i64, i64, i64) {
    let x = x.flatten(1, -1);
    let (mut zero, mut kept, mut other) = (0, 0, 0);
    for i in 0..x.size()[0] {
        let (xr, yr) = (x.get(i), y.get(i));
        if yr.abs().max().double_value(&[]) == 0.0 {
            zero += 1;
        } else if yr.allclose(&(&xr / (1.0 - p)), 1e-6, 1e-7, false) {
            kept += 1;
        } else {
            other += 1;
        }
    }
    (zero, kept, other)
}

#[test]
fn stochastic_depth_drops_whole_samples_in_training_only() {
    tch::manual_seed(3);
    let net = single_op_net(|g, x| g.stochastic_depth(x, 0.3)).net;
    // Strictly positive input so a dropped sample is the only way to get an all-zero row.
    let x = Tensor::rand([2000, 1, 28, 28], (Kind::Float, Device::Cpu)) + 0.1;
    let (zero, kept, other) = classify_rows(&x, &net.forward_t(&x, true), 0.3);
    assert_eq!(other, 0, "rows neither dropped nor kept-and-scaled by 1/(1-p)");
    // Binomial(2000, 0.3): sd ~20; 5 sd.
    assert!((zero - 600).abs() < 100, "{zero} of 2000 samples dropped with p=0.3 ({kept} kept)");
    assert!(net.forward_t(&x, false).equal(&x.flatten(1, -1)), "eval mode must be the identity");

    let never = single_op_net(|g, x| g.stochastic_depth(x, 0.0)).net;
    assert!(never.forward_t(&x, true).equal(&x.flatten(1, -1)), "p = 0 must be the identity");
}

#[test]
fn dropout_zeroes_elements_in_training_only() {
    tch::manual_seed(4);
    let net = single_op_net(|g, x| g.dropout(x, 0.25)).net;
    let x = Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu)) + 0.1;
    let y = net.forward_t(&x, true);
    let xf = x.flatten(1, -1);
    let zero_frac = y.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((zero_frac - 0.25).abs() < 0.01, "zeroed fraction {zero_frac} with p=0.25");
    // Survivors are scaled by 1/(1-p).
    let kept = y.ne(0.0);
    assert!(y.masked_select(&kept).allclose(&(xf.masked_select(&kept) / 0.75), 1e-6, 1e-7, false));
    // Rows are not dropped as a whole (that would be stochastic depth).
    let (zero_rows, _, _) = classify_rows(&x, &y, 0.25);
    assert_eq!(zero_rows, 0);
    assert!(net.forward_t(&x, false).equal(&xf), "eval mode must be the identity");
}

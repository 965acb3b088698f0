//! Our descriptions against torchvision's state_dict (names, shapes, parameter counts), from
//! the golden files written by `scripts/golden_state_dicts.py`.

use models::{build, Arch, ModelConfig, ParamKind};

struct Golden {
    trainable: usize,
    macs: u64,
    params: Vec<(String, Vec<usize>)>,
}

fn golden(arch: Arch) -> Golden {
    let path = format!("{}/tests/golden/{}.txt", env!("CARGO_MANIFEST_DIR"), arch.name());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut trainable, mut macs) = (0, 0);
    let mut params = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.split_once(' ').expect("key value");
        match key {
            "trainable" => trainable = value.parse().unwrap(),
            "macs" => macs = value.parse().unwrap(),
            "output" => {}
            _ => params.push((key.to_string(), value.split('x').map(|d| d.parse().unwrap()).collect())),
        }
    }
    Golden { trainable, macs, params }
}

#[test]
fn every_torchvision_arch_matches_its_state_dict() {
    let mut failures = Vec::new();
    for &arch in Arch::ALL.iter().filter(|a| a.in_torchvision()) {
        let graph = build(&ModelConfig::new(arch)).unwrap();
        let ours: Vec<(String, Vec<usize>)> = graph.params().into_iter().map(|p| (p.name, p.shape)).collect();
        let Golden { trainable, macs, params: theirs } = golden(arch);
        if ours != theirs {
            let first = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
            failures.push(format!(
                "{arch}: {} tensors vs torchvision {}; first difference at #{first}: ours {:?} theirs {:?}",
                ours.len(),
                theirs.len(),
                ours.get(first),
                theirs.get(first)
            ));
        }
        if graph.num_trainable() != trainable {
            failures.push(format!("{arch}: {} trainable vs torchvision {trainable}", graph.num_trainable()));
        }
        if graph.macs() != macs {
            failures.push(format!("{arch}: {} MACs vs {macs} counted by torch hooks", graph.macs()));
        }
        assert_eq!(graph.output_shape(), &[10], "{arch}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn digit_archs_have_expected_shapes() {
    let m5 = build(&ModelConfig::new(Arch::M5)).unwrap();
    // 5x5 valid convs: 28 -> 24 -> 20 -> 16 -> 12 -> 8, 160 channels.
    let last_conv = m5.nodes.iter().rev().find(|n| matches!(n.op, models::Op::Conv2d(_))).unwrap();
    assert_eq!(last_conv.shape, vec![160, 8, 8]);
    assert_eq!(m5.output_shape(), &[10]);
    let r = build(&ModelConfig::new(Arch::ResnetDigits)).unwrap();
    assert_eq!(r.output_shape(), &[10]);
    assert!(r.params().iter().any(|p| p.name == "layer3.0.downsample.0.weight" && p.kind == ParamKind::Trainable));
    // 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 -> 1 (Deotte's Keras model, same maps).
    let c = build(&ModelConfig::new(Arch::CnnDigits)).unwrap();
    let maps: Vec<usize> =
        c.nodes.iter().filter(|n| matches!(n.op, models::Op::Conv2d(_))).map(|n| n.shape[1]).collect();
    assert_eq!(maps, vec![26, 24, 12, 10, 8, 4, 1]);
    // Keras' summary of that model: 327,242 parameters with conv biases and 4 values per BN
    // channel; ours has no conv biases (BN follows) and 2 trainable values per BN channel.
    let keras_total = 327_242;
    let conv_biases = 32 * 3 + 64 * 3 + 128;
    let bn_running = 2 * (32 * 3 + 64 * 3 + 128);
    assert_eq!(c.num_trainable(), keras_total - conv_biases - bn_running);
}

#[test]
fn three_input_channels_widen_only_the_first_conv() {
    for &arch in Arch::ALL {
        let one = build(&ModelConfig::new(arch)).unwrap().params();
        let three = build(&ModelConfig { in_channels: 3, ..ModelConfig::new(arch) }).unwrap().params();
        let diffs: Vec<_> = one.iter().zip(&three).filter(|(a, b)| a.shape != b.shape).collect();
        assert_eq!(diffs.len(), 1, "{arch}");
        assert_eq!(diffs[0].1.shape[1], 3, "{arch}");
    }
}

#[test]
fn bad_configs_are_errors_not_panics() {
    assert!(build(&ModelConfig { image_size: 8, ..ModelConfig::new(Arch::Squeezenet1_0) }).is_err());
    assert!(build(&ModelConfig { in_channels: 0, ..ModelConfig::new(Arch::Resnet18) }).is_err());
    assert!(build(&ModelConfig { num_classes: 1, ..ModelConfig::new(Arch::Resnet18) }).is_err());
}

#[test]
fn adapted_first_conv_gets_a_fresh_conv_init() {
    let conv1 = |in_channels| {
        let g = build(&ModelConfig { in_channels, ..ModelConfig::new(Arch::Resnet18) }).unwrap();
        g.params().into_iter().find(|p| p.name == "conv1.weight").unwrap().init
    };
    // Gray input replaces torchvision's RGB conv1: nn.Conv2d's default U(±1/sqrt(1*7*7)).
    assert_eq!(conv1(1), models::Init::Uniform { bound: 1.0 / 7.0 });
    // RGB keeps torchvision's kaiming-normal fan-out: std sqrt(2 / (64*7*7)).
    assert_eq!(conv1(3), models::Init::Normal { std: (2.0f64 / (64.0 * 49.0)).sqrt() });
    // Our own digit nets keep their description's init whatever the channels.
    let m5 = build(&ModelConfig::new(Arch::M5)).unwrap();
    assert!(matches!(m5.params()[0].init, models::Init::Normal { .. }));
}

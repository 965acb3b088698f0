//! Channels-last training (`--memory-format`, default channels-last on the CPU for cnn_digits):
//! the layout changes, the maths and what is saved do not. Step-by-step agreement with PyTorch
//! running channels-last is in torch_training.rs.

mod common;

use models::approx::{check, Tolerance};
use models::{Arch, ModelConfig};
use tch::Device;
use trainer::optim::Ema;
use trainer::{checkpoint::net_weights, MemoryFormat, Model};

use common::floats;

#[test]
fn auto_is_channels_last_for_cnn_digits_on_the_cpu_only() {
    assert_eq!(MemoryFormat::Auto.resolve(Arch::CnnDigits, Device::Cpu), MemoryFormat::ChannelsLast);
    assert_eq!(MemoryFormat::Auto.resolve(Arch::Resnet18, Device::Cpu), MemoryFormat::Contiguous);
    assert_eq!(MemoryFormat::Contiguous.resolve(Arch::CnnDigits, Device::Cpu), MemoryFormat::Contiguous);
    assert!(MemoryFormat::Auto.channels_last(Arch::CnnDigits, Device::Cpu));
    assert!(!MemoryFormat::Auto.channels_last(Arch::CnnDigits, Device::Cuda(0)));
    assert!(!MemoryFormat::Auto.channels_last(Arch::Resnet18, Device::Cpu));
    assert!(MemoryFormat::ChannelsLast.channels_last(Arch::Resnet18, Device::Cuda(0)));
    assert!(!MemoryFormat::Contiguous.channels_last(Arch::CnnDigits, Device::Cpu));
}

#[test]
fn channels_last_changes_the_layout_not_the_outputs_or_the_saved_weights() {
    tch::set_num_threads(1);
    let mut model = Model::new(&ModelConfig::new(Arch::CnnDigits), Device::Cpu).unwrap();
    let before = net_weights(&model.net).unwrap();
    let (x, _) = common::sample_batch(32);
    let nchw = tch::no_grad(|| model.net.forward_t(&x, false));
    assert!(!model.net.channels_last());

    model.net.set_channels_last(true).unwrap();
    assert!(model.net.channels_last());
    for (spec, t) in model.net.params().iter().filter(|(_, t)| t.dim() == 4) {
        let (size, stride) = (t.size(), t.stride());
        let want = [size[2] * size[3] * size[1], 1, size[3] * size[1], size[1]];
        assert_eq!(stride, want, "{} is not channels-last", spec.name);
    }
    let nhwc = tch::no_grad(|| model.net.forward_t(&x, false));
    // The same network, other kernels: two float32 runs of one network.
    check(&floats(&nhwc), &floats(&nchw), Tolerance::RUNTIMES).unwrap();
    assert!(nhwc.stride() == nchw.stride(), "logits keep their layout");
    // Saved weights are the same tensors, in the same (NCHW) order.
    assert_eq!(net_weights(&model.net).unwrap(), before);

    model.net.set_channels_last(false).unwrap();
    assert!(!model.net.channels_last());
    assert!(model.net.params().iter().all(|(_, t)| t.is_contiguous()));
}

#[test]
fn the_ema_copy_keeps_the_layout_and_the_values() {
    let mut model = Model::new(&ModelConfig::new(Arch::CnnDigits), Device::Cpu).unwrap();
    model.net.set_channels_last(true).unwrap();
    let ema = Ema::new(&model.net, 0.999, Device::Cpu).unwrap();
    assert!(ema.net().channels_last());
    for ((spec, a), (_, b)) in model.net.params().iter().zip(ema.net().params()) {
        assert_eq!(a.stride(), b.stride(), "{}", spec.name);
        assert_eq!(floats(a), floats(b), "{}", spec.name);
    }
}

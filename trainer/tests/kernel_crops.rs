//! Cropped kernels (models::Graph::kernel_crop) in training: resnet18 at 28x28 runs its last
//! stage's 3x3 convolutions on the taps that touch real input, and Adam skips the taps that
//! never do. The skip must change no bit; the crop only the summation order.

mod common;

use std::sync::Mutex;

use models::approx::{check, Tolerance};
use models::{Arch, ModelConfig};
use tch::Device;
use trainer::optim::Optimizer;
use trainer::train::{adam, train_step};
use trainer::Model;

use common::floats;

const STEPS: usize = 6;
const BATCH: usize = 32;

/// resnet18 from seed 3, trained `STEPS` Adam steps on the sample; `crop` and `skip` as
/// [`trainer::Net::set_kernel_crops`] and [`Optimizer::skip_dead_taps`]. Returns the model, the
/// optimiser and the losses.
fn trained(crop: bool, skip: bool) -> (Model, Optimizer, Vec<f64>) {
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let mut model = Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap();
    model.net.set_kernel_crops(crop);
    let mut opt = adam(&model.net, 1e-3).unwrap();
    opt.skip_dead_taps(&model.net, skip);
    let (x, y) = common::sample_batch(BATCH * STEPS);
    let losses = (0..STEPS)
        .map(|i| {
            let (s, n) = ((i * BATCH) as i64, BATCH as i64);
            train_step(&model.net, &mut opt, &x.narrow(0, s, n), &y.narrow(0, s, n)).unwrap()
        })
        .collect();
    (model, opt, losses)
}

/// libtorch's seed is global: tests that seed it and draw from it take turns.
static SEEDED: Mutex<()> = Mutex::new(());

#[test]
fn resnet18_at_28_crops_its_last_stage() {
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let model = Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap();
    assert_eq!(model.net.live_taps().len(), 4);
    let mut live: Vec<_> = model.net.live_taps().into_keys().collect();
    live.sort();
    assert_eq!(
        live,
        ["layer4.0.conv1.weight", "layer4.0.conv2.weight", "layer4.1.conv1.weight", "layer4.1.conv2.weight"]
    );
    let big = Model::new(&ModelConfig { image_size: 224, ..ModelConfig::new(Arch::Resnet18) }, Device::Cpu).unwrap();
    assert_eq!(big.net.live_taps().len(), 0);
}

#[test]
fn skipping_dead_taps_changes_no_bit() {
    let (a, opt_a, losses_a) = trained(true, true);
    let (b, opt_b, losses_b) = trained(true, false);
    assert_eq!(losses_a, losses_b);
    for ((spec, ta), (_, tb)) in a.net.params().iter().zip(b.net.params()) {
        assert!(floats(ta) == floats(tb), "{} differs", spec.name);
    }
    for ((name, ta), (_, tb)) in opt_a.state_tensors().iter().zip(opt_b.state_tensors()) {
        assert!(floats(ta) == floats(&tb), "optimiser state {name} differs");
    }
}

/// The loss and every trainable tensor's gradient of one training-mode pass of resnet18 (seed 3)
/// on the first `BATCH` sample images.
fn gradients(crop: bool) -> (f32, Vec<(String, Vec<f32>)>) {
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let mut model = Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap();
    model.net.set_kernel_crops(crop);
    let (x, y) = common::sample_batch(BATCH);
    let loss = model.net.forward_t(&x, true).cross_entropy_for_logits(&y);
    loss.backward();
    let grads = model
        .net
        .params()
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(s, t)| (s.name.clone(), floats(&t.grad())))
        .collect();
    (f32::try_from(&loss).unwrap(), grads)
}

#[test]
fn cropped_kernels_give_the_full_kernels_loss_and_gradients() {
    let (loss_a, grads_a) = gradients(true);
    let (loss_b, grads_b) = gradients(false);
    // The same maths in another summation order: two float32 runs of one network. (Whole
    // training runs then drift apart as any two summation orders do; tests/torch_training.rs
    // compares the cropped trainer step by step with PyTorch running the same crops.)
    check(&[loss_a], &[loss_b], Tolerance::RUNTIMES).unwrap_or_else(|e| panic!("loss: {e}"));
    let live = models::build(&ModelConfig::new(Arch::Resnet18)).unwrap();
    let live: std::collections::HashMap<String, _> = (0..live.nodes.len())
        .filter_map(|i| match (&live.nodes[i].op, live.kernel_crop(i)) {
            (models::Op::Conv2d(c), Some(k)) => Some((format!("{}.weight", c.name), (k, c.kernel))),
            _ => None,
        })
        .collect();
    for ((name, ga), (_, gb)) in grads_a.iter().zip(&grads_b) {
        check(ga, gb, Tolerance::RUNTIMES).unwrap_or_else(|e| panic!("gradient of {name}: {e}"));
        let Some((crop, [kh, kw])) = live.get(name) else { continue };
        // Taps that never read input get exactly 0 from both.
        let dead: Vec<usize> = (0..ga.len()).filter(|i| !crop.keeps(i / kw % kh, i % kw)).collect();
        assert!(!dead.is_empty(), "{name}");
        assert!(dead.iter().all(|&i| ga[i] == 0.0 && gb[i] == 0.0), "{name}: a dead tap has a gradient");
    }
}

#[test]
fn dead_taps_keep_their_initial_weights() {
    let init = {
        let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        Model::new(&ModelConfig::new(Arch::Resnet18), Device::Cpu).unwrap()
    };
    let (a, _, losses) = trained(true, true);
    assert!(losses[STEPS - 1] < losses[0] - 0.3, "the model learns: {losses:?}");
    let live = a.net.live_taps();
    let mut checked = 0;
    for ((spec, ta), (_, t0)) in a.net.params().iter().zip(init.net.params()) {
        let Some(crop) = live.get(&spec.name) else { continue };
        let (kh, kw) = (spec.shape[2], spec.shape[3]);
        let (va, v0) = (floats(ta), floats(t0));
        for i in 0..va.len() {
            let (y, x) = (i / kw % kh, i % kw);
            let kept = crop.keeps(y, x);
            assert_eq!(va[i] == v0[i], !kept, "{} tap ({y}, {x}): moved {}", spec.name, va[i] != v0[i]);
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}

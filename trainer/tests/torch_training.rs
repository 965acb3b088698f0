//! Training itself against PyTorch: from the same initial weights and the same batches, the
//! seed recipe's steps (train-mode forward, cross-entropy, backward, Adam) give the same losses
//! step by step, the same BatchNorm statistics and the same eval logits as torchvision's
//! resnet18 under torch.optim.Adam (torch_training.py, run with the project venv's python).
//! Forward parity alone (torch_reference.rs) would not catch a wrong optimizer, loss or
//! parameter set.

mod common;

#[test]
fn seed_recipe_steps_match_pytorch() {
    // One thread on each side: the two runs call the same kernels in the same order. Our
    // default crops resnet18's last stage to the taps that touch real input; PyTorch runs the
    // same crops (tests/kernel_crops.rs compares cropped and full kernels).
    tch::set_num_threads(1);
    common::assert_steps_match_pytorch(tch::Device::Cpu, 12, common::StepsCase::RESNET18, &[]);
}

#[test]
fn uncropped_steps_match_pytorch_eager() {
    // Every tap computed, on both sides: torchvision's model exactly as its users run it.
    tch::set_num_threads(1);
    common::assert_steps_match_pytorch(
        tch::Device::Cpu,
        12,
        common::StepsCase { crop: false, ..common::StepsCase::RESNET18 },
        &[],
    );
}

#[test]
fn channels_last_cnn_digits_steps_match_pytorch_channels_last() {
    // cnn_digits trains channels-last on the CPU by default (--memory-format auto); PyTorch with
    // the model in torch.channels_last runs the same oneDNN kernels, and dropout draws its masks
    // from the same seed in the same memory order.
    tch::set_num_threads(1);
    let case = common::StepsCase { arch: models::Arch::CnnDigits, crop: true, channels_last: true };
    common::assert_steps_match_pytorch(tch::Device::Cpu, 12, case, &[]);
}

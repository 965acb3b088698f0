//! Training itself against PyTorch: from the same initial weights and the same batches, the
//! seed recipe's steps (train-mode forward, cross-entropy, backward, Adam) give the same losses
//! step by step, the same BatchNorm statistics and the same eval logits as torchvision's
//! resnet18 under torch.optim.Adam (torch_training.py, run with the project venv's python).
//! Forward parity alone (torch_reference.rs) would not catch a wrong optimizer, loss or
//! parameter set.

mod common;

#[test]
fn seed_recipe_steps_match_pytorch() {
    // One thread on each side: the two runs call the same kernels in the same order.
    tch::set_num_threads(1);
    common::assert_steps_match_pytorch(tch::Device::Cpu, 12, &[]);
}

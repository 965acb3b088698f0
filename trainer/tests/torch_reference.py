"""Checks the trainer's lowering against PyTorch/torchvision.

For every case the Rust test (torch_reference.rs) wrote:
  <case>/before/model.safetensors  state saved from our Net (BN running stats warmed up)
  <case>/io.safetensors            input [16,1,28,28] pixel/255, our eval and train logits
  <case>/after.safetensors         our full state after one train-mode forward on the input
This script loads `before` into the torch model (torchvision's, with the first conv taking
`in_channels`; resnet_digits and m5 written here in torch.nn), strict=False, checks that only
num_batches_tracked is missing, and compares eval logits, train-mode logits and the BN
running statistics after one train-mode forward. Dropout and stochastic depth are disabled on
both sides (the Rust side zeroes their p) so train mode is deterministic.

Usage: python torch_reference.py <cases.json>   (exit 1 on any mismatch)
"""
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "tests"))
import torch_nets  # noqa: E402  (the PyTorch mirrors of the zoo, shared with the exporter's tests)

LOGIT_TOL = 1e-4
STAT_TOL = 1e-4


def build(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    return torch_nets.build(arch, in_channels, num_classes)


def no_randomness(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Dropout, torchvision.ops.StochasticDepth)):
            m.p = 0.0


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check(case: dict) -> list:
    errors = []
    name, arch = case["name"], case["arch"]
    model = build(arch, case["in_channels"], case["num_classes"])
    before = OrderedDict(load_file(f"{case['dir']}/before/model.safetensors"))
    # torchvision's MNASNet refuses a state_dict without its version metadata (it converts
    # version-1 checkpoints); ours has the current (version 2) layout.
    before._metadata = OrderedDict({"": {"version": 2}})
    missing, unexpected = model.load_state_dict(before, strict=False)
    bad_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad_missing or unexpected:
        return [f"{name}: state_dict mismatch: missing {bad_missing[:5]} unexpected {unexpected[:5]}"]
    no_randomness(model)

    io = load_file(f"{case['dir']}/io.safetensors")
    x = io["input"]
    norm = case["normalization"]
    a = 255.0 * norm["scale"] / norm["std"]
    b = -norm["mean"] / norm["std"]
    if abs(a - 1.0) > 1e-6 or b != 0.0:
        x = x * a + b
    if case["in_channels"] > 1:
        x = x.repeat(1, case["in_channels"], 1, 1)

    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    d_eval = max_diff(eval_logits, io["eval_logits"])
    model.train()
    with torch.no_grad():
        train_logits = model(x)
    d_train = max_diff(train_logits, io["train_logits"])

    after = load_file(f"{case['dir']}/after.safetensors")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    d_stats, worst, n_stats = 0.0, "", 0
    for key, theirs in state.items():
        if not (key.endswith("running_mean") or key.endswith("running_var")):
            continue
        n_stats += 1
        ours = after[key]
        rel = ((ours.double() - theirs.double()).abs() / theirs.double().abs().clamp(min=1.0)).max().item()
        if rel > d_stats:
            d_stats, worst = rel, key
    # The update must have happened at all (a stale copy of `before` would also "match").
    changed = sum(1 for k in state if k.endswith("running_mean") and not torch.equal(after[k], before[k]))
    scale = io["eval_logits"].abs().max().item()
    print(f"{name}: eval logits max|diff| {d_eval:.2e} (|logits| <= {scale:.2f}), train-mode logits {d_train:.2e}, "
          f"running stats max rel diff {d_stats:.2e} over {n_stats} buffers ({changed} running_mean changed)")
    # Absolute, and relative to the logits' size (MobileNetV3's logits are ~0.01 at init).
    tol = min(LOGIT_TOL, 1e-3 * scale)
    if not d_eval <= tol:
        errors.append(f"{name}: eval logits differ by {d_eval} (tolerance {tol:.1e})")
    if not d_train <= tol:
        errors.append(f"{name}: train-mode logits differ by {d_train} (tolerance {tol:.1e})")
    if not d_stats <= STAT_TOL:
        errors.append(f"{name}: running stats differ by {d_stats} (worst {worst})")
    if n_stats and changed == 0:
        errors.append(f"{name}: no running_mean changed after a train-mode forward")
    if not torch.isfinite(eval_logits).all():
        errors.append(f"{name}: non-finite logits")
    return errors


def main() -> int:
    torch.set_num_threads(1)  # as the Rust side: fast and steady on a loaded machine
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    errors = []
    for case in cases:
        errors += check(case)
    for e in errors:
        print("MISMATCH", e, file=sys.stderr)
    print(f"torch {torch.__version__} torchvision {torchvision.__version__}: {len(cases)} cases, {len(errors)} mismatches")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

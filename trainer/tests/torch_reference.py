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

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock

LOGIT_TOL = 1e-4
STAT_TOL = 1e-4


class ResNetDigits(nn.Module):
    """models/src/zoo/resnet.rs RESNET_DIGITS: 3x3 stride-1 stem, no max-pool, widths 32/64/128."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 32
        for i, (width, blocks, stride) in enumerate([(32, 2, 1), (64, 2, 2), (128, 2, 2)]):
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or inplanes != width:
                    down = nn.Sequential(nn.Conv2d(inplanes, width, 1, s, bias=False), nn.BatchNorm2d(width))
                layers.append(BasicBlock(inplanes, width, s, down))
                inplanes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class M5(nn.Module):
    """An et al. 2020 M5 as in models/src/zoo/digits.rs."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        c = in_channels
        for i, w in enumerate([32, 64, 96, 128, 160]):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c, w, 5, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            c = w
        self.fc = nn.Linear(160 * 8 * 8, num_classes, bias=False)
        self.fc_bn = nn.BatchNorm1d(num_classes)

    def forward(self, x):
        for i in range(1, 6):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc_bn(self.fc(torch.flatten(x, 1)))


class CnnDigits(nn.Module):
    """models/src/zoo/digits.rs CNN_DIGITS (Deotte's Kaggle MNIST CNN, conv -> BN -> ReLU)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        specs = [(32, 3, 1, 0), (32, 3, 1, 0), (32, 5, 2, 2), (64, 3, 1, 0), (64, 3, 1, 0), (64, 5, 2, 2), (128, 4, 1, 0)]
        c = in_channels
        for i, (w, k, s, p) in enumerate(specs):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c, w, k, s, p, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            c = w
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        for i in range(1, 8):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (3, 6):
                x = self.drop(x)
        return self.fc(self.drop(torch.flatten(x, 1)))


def first_conv_with(model: nn.Module, in_channels: int) -> nn.Module:
    """Replaces the first convolution by the same one taking `in_channels` (as
    scripts/golden_state_dicts.py does for 1 channel)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return model
    raise ValueError("no conv")


def build(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    if arch == "resnet_digits":
        return ResNetDigits(in_channels, num_classes)
    if arch == "m5":
        return M5(in_channels, num_classes)
    if arch == "cnn_digits":
        return CnnDigits(in_channels, num_classes)
    return first_conv_with(getattr(torchvision.models, arch)(weights=None, num_classes=num_classes), in_channels)


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

"""PyTorch side of torch_training.rs: replays the seed recipe's steps on torchvision's resnet18
(first conv taking 1 channel; TORCH_TRAINING_ARCH names a digit net of torch_nets.py instead) from
our initial weights and batches, and compares. TORCH_TRAINING_CHANNELS_LAST=1 stores the weights
channels-last, as our trainer's --memory-format channels-last. The
convolutions named in <dir>/crops.json run on the kernel taps it gives (a view of the weight,
as our trainer's cropped kernels), the others as torchvision defines them.

Usage: python torch_training.py <dir> <batch> <steps> <lr>   (exit 1 on any mismatch)
Environment (tests/common/mod.rs sets them): TORCH_TRAINING_STEP_SEED (required: the seed of the
steps' dropout draws, as on our side); TORCH_TRAINING_DEVICE (default cpu; cuda.rs);
TORCH_TRAINING_LOSS_RTOL makes the loss check relative; TORCH_TRAINING_TOL replaces the logit
and statistics tolerance.

Tolerances: with one thread on each side the two runs are bit-identical (both call the same
libtorch kernels in the same order); 1e-4 leaves room for other thread counts while a real
difference (another eps or beta, weight decay, a parameter left out of the optimizer, a
BatchNorm momentum) moves losses and logits by 1e-2 or more within 12 steps.
"""
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torchvision
from safetensors.torch import load_file

DEVICE = os.environ.get("TORCH_TRAINING_DEVICE", "cpu")
LOSS_TOL = 1e-4
LOSS_RTOL = float(os.environ.get("TORCH_TRAINING_LOSS_RTOL", "0"))
LOGIT_TOL = STAT_TOL = float(os.environ.get("TORCH_TRAINING_TOL", "1e-4"))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|, or inf when either side holds a NaN or an infinity (printed as a
    difference of inf): NaN compares False with every tolerance (`nan > tol`), so it must never
    reach a `> tol` test, and torch's max propagates it while Python's max() may drop it."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    d = (a - b).abs().max().item() if a.numel() else 0.0
    return d


d, batch, steps, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(1)
ARCH = os.environ.get("TORCH_TRAINING_ARCH", "resnet18")
if ARCH == "resnet18":
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference  # noqa: E402  (the digit nets in torch.nn)

    m = torch_reference.build(ARCH, 1, 10)
missing, unexpected = m.load_state_dict(OrderedDict(load_file(f"{d}/init.safetensors")), strict=False)
assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


class Cropped(torch.nn.Module):
    """`conv` computed on the kernel taps [first, first + len) of each axis, with the padding
    they need: what our trainer does where the other taps only ever read padding."""

    def __init__(self, conv, axes):
        super().__init__()
        self.conv, self.axes = conv, axes

    def forward(self, x):
        (h0, hl, hb, ha), (w0, wl, wb, wa) = self.axes
        c = self.conv
        w = c.weight[:, :, h0:h0 + hl, w0:w0 + wl]
        if (hb, wb) == (ha, wa):
            return torch.nn.functional.conv2d(x, w, c.bias, c.stride, (hb, wb), c.dilation, c.groups)
        x = torch.nn.functional.pad(x, (wb, wa, hb, ha))
        return torch.nn.functional.conv2d(x, w, c.bias, c.stride, 0, c.dilation, c.groups)


with open(f"{d}/crops.json") as f:
    for name, axes in json.load(f).items():
        parent, _, leaf = name.rpartition(".")
        owner = m.get_submodule(parent)
        setattr(owner, leaf, Cropped(getattr(owner, leaf), axes))
m.to(DEVICE)
if os.environ.get("TORCH_TRAINING_CHANNELS_LAST") == "1":
    m = m.to(memory_format=torch.channels_last)
io = load_file(f"{d}/io.safetensors")
x, y, ours = io["x"].to(DEVICE), io["y"].to(DEVICE), io["losses"]
opt = torch.optim.Adam(m.parameters(), lr)
m.train()
torch.manual_seed(int(os.environ["TORCH_TRAINING_STEP_SEED"]))
errors = []
for i in range(steps):
    xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(m(xb), yb)
    loss.backward()
    opt.step()
    diff = max_abs_diff(loss.detach(), ours[i])
    print(f"step {i}: torch loss {loss.item():.5f} ours {ours[i].item():.5f} |diff| {diff:.2e}")
    if diff > (LOSS_RTOL * abs(ours[i].item()) if LOSS_RTOL else LOSS_TOL):
        errors.append(f"step {i}: loss differs by {diff:.2e}")
print(f"steps compared: {steps}")
m.eval()
with torch.no_grad():
    logits = m(x[steps * batch:(steps + 1) * batch])
d_logits = max_abs_diff(logits, io["eval_logits"])
after = load_file(f"{d}/after.safetensors")
d_stats = max(max_abs_diff(m.state_dict()[k], v) for k, v in after.items() if "running" in k)
print(f"eval logits max|diff| {d_logits:.2e}, BN running stats max|diff| {d_stats:.2e}")
if d_logits > LOGIT_TOL:
    errors.append(f"eval logits differ by {d_logits:.2e}")
if d_stats > STAT_TOL:
    errors.append(f"running statistics differ by {d_stats:.2e}")
print("\n".join(errors) or "ok")
sys.exit(1 if errors else 0)

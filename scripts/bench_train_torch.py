#!/usr/bin/env python3
"""PyTorch eager reference for scripts/bench_train.sh: the same measurement as
trainer/examples/bench_train.rs (Adam steps on one fixed random [BATCH,1,28,28] batch, after
WARMUP steps, loss read back each step) with torchvision's model, 1-channel first conv, 10 classes.

Usage: .venv/bin/python scripts/bench_train_torch.py ARCH [BATCH=64] [THREADS=2] [STEPS=30] [WARMUP=3] [AUGMENT=0]
Prints `img/s <value>`. AUGMENT=1 applies the same batched random affine augmentation as the
trainer's strong recipe (affine_grid + grid_sample, rotation 12 deg, shift 2.5 px, scale 0.1).
Environment, as for bench_train.rs: DEVICE=cuda (default cpu), AMP=1 for bf16 autocast of the
forward pass and loss (torch.autocast, as the trainer's --amp).
"""
import math
import os
import pathlib
import sys
import time

import torch
import torch.nn.functional as F


def build(arch):
    # The same torch.nn definitions the trainer's parity test compares against (torchvision's
    # model with a 1-channel first conv; m5 and resnet_digits written in torch.nn there).
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "trainer" / "tests"))
    import torch_reference  # noqa: E402

    return torch_reference.build(arch, 1, 10)


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    arch = a[0]
    batch, threads, steps, warmup, augment = (
        int(a[i]) if len(a) > i else d for i, d in ((1, 64), (2, 2), (3, 30), (4, 3), (5, 0))
    )
    device = os.environ.get("DEVICE", "cpu")
    amp = os.environ.get("AMP") == "1"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(arch).train().to(device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def affine(x):
        n = x.shape[0]
        u = torch.rand(4, n, device=x.device) * 2 - 1
        angle, inv_scale = u[0] * math.radians(12.0), 1 / (1 + u[1] * 0.1)
        tx, ty = u[2] * 2.5 * 2 / 28, u[3] * 2.5 * 2 / 28
        cos, sin = angle.cos() * inv_scale, angle.sin() * inv_scale
        theta = torch.stack([cos, -sin, tx, sin, cos, ty], 1).view(n, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def step():
        xb = affine(x) if augment else x
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"img/s {steps * batch / (time.perf_counter() - t):.1f}")


if __name__ == "__main__":
    main()

"""Which test-time views help an ensemble? Scores exported members on a labelled validation CSV
under sets of views (shifts, rotations, zooms), with Python onnxruntime and torch's grid_sample
as the reference tools (our `infer --tta` has the one-pixel shifts only).

    .venv/bin/python scripts/tta_views.py VAL_CSV MEMBER.onnx [MEMBER.onnx ...]

Prints, per view set, each member's errors, the soft vote of all and their majority vote (ties
to the summed probability, as `infer --vote majority`); with four or more members also the
majority vote of every three of them (plain images), to see how much the choice of members
moves an ensemble. Analysis only: nothing here chooses what `accuracy.sh` ships.
"""
import itertools
import math
import sys

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F


def view(x, rot=0.0, zoom=1.0, dx=0, dy=0):
    """x [N,1,28,28] rotated (degrees), zoomed and shifted (pixels), zeros outside."""
    a = math.radians(rot)
    c, s = math.cos(a) / zoom, math.sin(a) / zoom
    theta = torch.tensor([[c, -s, -dx * 2 / 28], [s, c, -dy * 2 / 28]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


VIEWS = {
    "id": {}, "right": dict(dx=1), "left": dict(dx=-1), "down": dict(dy=1), "up": dict(dy=-1),
    "rot+6": dict(rot=6), "rot-6": dict(rot=-6), "rot+10": dict(rot=10), "rot-10": dict(rot=-10),
    "zoom0.92": dict(zoom=0.92), "zoom1.08": dict(zoom=1.08),
    "right-down": dict(dx=1, dy=1), "left-up": dict(dx=-1, dy=-1),
    "right-up": dict(dx=1, dy=-1), "left-down": dict(dx=-1, dy=1),
}
SETS = {
    "none": ["id"],
    "shift (infer --tta)": ["id", "right", "left", "down", "up"],
    "rotate 6": ["id", "rot+6", "rot-6"],
    "rotate 10": ["id", "rot+10", "rot-10"],
    "zoom 8%": ["id", "zoom0.92", "zoom1.08"],
    "shift + rotate 6": ["id", "right", "left", "down", "up", "rot+6", "rot-6"],
    "8 shifts": ["id", "right", "left", "down", "up", "right-down", "left-up", "right-up", "left-down"],
    "all 15": list(VIEWS),
}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1, dtype=np.float32)
    y = data[:, 0].astype(int)
    x = torch.from_numpy(data[:, 1:].reshape(-1, 1, 28, 28) / 255.0)
    views = {k: view(x, **v).numpy() for k, v in VIEWS.items()}
    probs = {}
    for path in sys.argv[2:]:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for k, v in views.items():
            logits = session.run(None, {"input": v})[0]
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs[path, k] = e / e.sum(1, keepdims=True)
    errors = lambda p: int((p.argmax(1) != y).sum())

    def majority(member):
        votes = np.zeros((len(y), 10))
        for p in member:
            votes[np.arange(len(y)), p.argmax(1)] += 1
        return errors(votes * len(member) + sum(member) / len(member))

    print(f"{len(y)} images, {len(sys.argv) - 2} members")
    for name, keys in SETS.items():
        member = [sum(probs[m, k] for k in keys) / len(keys) for m in sys.argv[2:]]
        print(f"{name:20s} members {[errors(p) for p in member]}  soft {errors(sum(member))}  majority {majority(member)}")
    if len(sys.argv) - 2 >= 4:
        trios = sorted(majority([probs[m, "id"] for m in trio]) for trio in itertools.combinations(sys.argv[2:], 3))
        print(f"every 3 members, majority: {trios} (min {trios[0]}, mean {np.mean(trios):.1f}, max {trios[-1]})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Convert a PyTorch .pth state_dict (e.g. torchvision's model-hub ImageNet weights) to the
safetensors file `trainer --pretrained` reads.

Usage: .venv/bin/python scripts/convert_pth.py IN.pth OUT.safetensors

Loads with torch.load(weights_only=True) (no pickled code runs), unwraps a {"state_dict": ...}
or {"model": ...} checkpoint, strips the "module." prefix DataParallel adds, drops
num_batches_tracked, and writes atomically (temp file + rename).
"""
import argparse
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file


def state_dict_of(obj, path):
    # Training checkpoints often wrap the weights; unwrap until tensors appear.
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
        else:
            break
    if not isinstance(obj, dict) or not obj:
        sys.exit(f"error: {path}: no state_dict found (got {type(obj).__name__})")
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help=".pth/.pt file holding a state_dict")
    ap.add_argument("output", help="safetensors file to write")
    args = ap.parse_args()

    try:
        obj = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any load failure with the file name
        sys.exit(f"error: cannot load {args.input}: {e}")
    sd = state_dict_of(obj, args.input)

    out = {}
    for name, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        if name.startswith("module."):
            name = name[len("module."):]
        if name.endswith("num_batches_tracked"):
            continue
        if name in out:
            sys.exit(f"error: {args.input}: tensor {name} appears twice (with and without 'module.')")
        # safetensors refuses shared or strided storage; a contiguous copy is always safe.
        out[name] = value.detach().contiguous().clone()
    if not out:
        sys.exit(f"error: {args.input}: the state_dict holds no tensors")

    directory = os.path.dirname(os.path.abspath(args.output))
    fd, tmp = tempfile.mkstemp(prefix=".convert_pth.", dir=directory)
    os.close(fd)
    try:
        save_file(out, tmp)
        os.replace(tmp, args.output)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {len(out)} tensors to {args.output}")


if __name__ == "__main__":
    main()

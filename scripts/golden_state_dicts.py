"""Writes models/tests/golden/<arch>.txt: torchvision's state_dict keys and shapes for each zoo
architecture with 1 input channel and 10 classes, plus its trainable parameter count and the
multiply-accumulates of one 1x28x28 image, measured with forward hooks. The Rust tests compare our descriptions to it.

The architectures are the zoo's torchvision ones as the trainer lists them (models::Arch::ALL is
the one list), so build it first.

Run: cargo build --release --bin trainer && .venv/bin/python scripts/golden_state_dicts.py
"""
import pathlib
import subprocess
import sys

import torch
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "models" / "tests"))
import torch_nets  # noqa: E402  (torchvision's model with the gray first conv our zoo has)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def torchvision_archs() -> list[str]:
    trainer = ROOT / "target" / "release" / "trainer"
    if not trainer.is_file():
        sys.exit(f"{trainer} is missing: run `cargo build --release --bin trainer` first")
    out = subprocess.run([str(trainer), "--list-archs", "torchvision"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def main() -> None:
    out_dir = ROOT / "models" / "tests" / "golden"
    out_dir.mkdir(parents=True, exist_ok=True)
    for arch in torchvision_archs():
        model = torch_nets.build(arch, in_channels=1, num_classes=10).eval()
        trainable = sum(p.numel() for p in model.parameters())
        macs = []

        def count(module, inputs, output):
            # Multiply-accumulates from the shapes torch really produced at 28x28.
            if isinstance(module, torch.nn.Conv2d):
                kh, kw = module.kernel_size
                macs.append(output.numel() * module.in_channels // module.groups * kh * kw)
            elif isinstance(module, torch.nn.Linear):
                macs.append(module.in_features * module.out_features)

        hooks = [m.register_forward_hook(count) for m in model.modules()]
        with torch.no_grad():
            logits = model(torch.zeros(1, 1, 28, 28))
        for h in hooks:
            h.remove()
        lines = [f"# torchvision {torchvision.__version__} {arch} in_channels=1 num_classes=10",
                 f"trainable {trainable}", f"output {list(logits.shape)}", f"macs {sum(macs)}"]
        for key, tensor in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            lines.append(f"{key} {'x'.join(str(d) for d in tensor.shape)}")
        (out_dir / f"{arch}.txt").write_text("\n".join(lines) + "\n")
        print(f"{arch}: {trainable} trainable parameters")


if __name__ == "__main__":
    main()

"""Writes models/tests/golden/<arch>.txt: torchvision's state_dict keys and shapes for each zoo
architecture with 1 input channel and 10 classes, plus its trainable parameter count and the
per-image output of every spatial stage at 28x28. The Rust tests compare our descriptions to it.

Run: .venv/bin/python scripts/golden_state_dicts.py
"""
import pathlib

import torch
import torchvision

ARCHS = [
    "resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "squeezenet1_0", "squeezenet1_1", "efficientnet_b0", "efficientnet_b3",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
]


def gray_first_conv(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces the first convolution by the same one taking 1 input channel (our default)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            new = torch.nn.Conv2d(1, module.out_channels, module.kernel_size, module.stride,
                                  module.padding, module.dilation, module.groups, module.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return model
    raise ValueError("no conv")


def main() -> None:
    out_dir = pathlib.Path(__file__).resolve().parent.parent / "models" / "tests" / "golden"
    out_dir.mkdir(parents=True, exist_ok=True)
    for arch in ARCHS:
        model = gray_first_conv(getattr(torchvision.models, arch)(weights=None, num_classes=10)).eval()
        trainable = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            logits = model(torch.zeros(1, 1, 28, 28))
        lines = [f"# torchvision {torchvision.__version__} {arch} in_channels=1 num_classes=10",
                 f"trainable {trainable}", f"output {list(logits.shape)}"]
        for key, tensor in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            lines.append(f"{key} {'x'.join(str(d) for d in tensor.shape)}")
        (out_dir / f"{arch}.txt").write_text("\n".join(lines) + "\n")
        print(f"{arch}: {trainable} trainable parameters")


if __name__ == "__main__":
    main()

"""PyTorch mirrors of the zoo, for the tests that compare our lowerings with PyTorch
(trainer/tests/torch_reference.py, exporter/tests/reference.py): torchvision's model of that
name with a gray first conv, or the digit nets of models/src/zoo/ written out in torch.nn."""
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock


def replace_first_conv(model, in_channels):
    """The first convolution rebuilt for `in_channels` inputs (scripts/golden_state_dicts.py)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return model
    raise ValueError("no conv")


class ResnetDigits(nn.Module):
    """models/src/zoo/resnet.rs RESNET_DIGITS: torchvision's ResNet with basic blocks, a 3x3
    stride-1 stem, no max-pool, widths 32/64/128."""

    def __init__(self, in_channels, num_classes, widths=(32, 64, 128), blocks=(2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                down = None
                if stride != 1 or inplanes != w:
                    down = nn.Sequential(nn.Conv2d(inplanes, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                layers.append(BasicBlock(inplanes, w, stride, down))
                inplanes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.n_layers = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class M5(nn.Module):
    """models/src/zoo/digits.rs M5 (An et al. 2020): five 5x5 valid conv+BN+ReLU, then a
    bias-free linear and BatchNorm1d."""

    def __init__(self, in_channels, num_classes, widths=(32, 64, 96, 128, 160), image=28):
        super().__init__()
        c = in_channels
        for i, w in enumerate(widths):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c, w, 5, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            c = w
            image -= 4
        self.n = len(widths)
        self.fc = nn.Linear(c * image * image, num_classes, bias=False)
        self.fc_bn = nn.BatchNorm1d(num_classes)

    def forward(self, x):
        for i in range(self.n):
            x = torch.relu(getattr(self, f"bn{i + 1}")(getattr(self, f"conv{i + 1}")(x)))
        return self.fc_bn(self.fc(torch.flatten(x, 1)))


class CnnDigits(nn.Module):
    """models/src/zoo/digits.rs CNN_DIGITS (Deotte's Kaggle MNIST CNN, conv -> BN -> ReLU)."""

    SPECS = [(32, 3, 1, 0), (32, 3, 1, 0), (32, 5, 2, 2), (64, 3, 1, 0), (64, 3, 1, 0), (64, 5, 2, 2), (128, 4, 1, 0)]

    def __init__(self, in_channels, num_classes):
        super().__init__()
        c = in_channels
        for i, (w, k, s, p) in enumerate(self.SPECS):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c, w, k, s, p, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            c = w
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        for i in range(1, len(self.SPECS) + 1):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (3, 6):
                x = self.drop(x)
        return self.fc(self.drop(torch.flatten(x, 1)))


def build(arch, in_channels=1, num_classes=10, image=28):
    if arch == "resnet_digits":
        return ResnetDigits(in_channels, num_classes)
    if arch == "m5":
        return M5(in_channels, num_classes, image=image)
    if arch == "cnn_digits":
        return CnnDigits(in_channels, num_classes)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    return replace_first_conv(model, in_channels) if in_channels != 3 else model

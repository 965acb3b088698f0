"""Builds the ONNX test models for the `inference` tests and their reference outputs.

Run by the Rust tests with the project's venv python (never committed: *.onnx is ignored):

    .venv/bin/python inference/tests/make_models.py --sample sample/digit-recognizer.zip --out DIR

Writes to DIR:
  cnn_a.onnx, cnn_b.onnx, cnn_c.onnx  small CNNs (Conv/BatchNorm/ReLU/MaxPool/Linear) exported
                                      with the pipeline's ONNX contract: input `input`
                                      [N,1,28,28] = pixel/255, output `logits` [N,10],
                                      dynamic batch `N`. Each is briefly trained on the
                                      sample's train.csv (b and c fine-tune a with other
                                      seeds) so argmax is meaningful, not near-ties.
  tiny_maps.onnx                      an untrained CNN whose feature maps shrink to 2x2 and 1x1
                                      under 3x3 (strided, dilated, grouped, non-square)
                                      convolutions with padding: the kernels tract's backend
                                      crops to the taps that touch real input.
  bad_shape.onnx                      a model whose input is [N,3,32,32] (violates the contract).
  expected.json                       {"n": 64, "classes": 10, "logits": {"cnn_a": [...], ..., "tiny_maps": [...]},
                                       "train_total": 4000, "train_correct": {"cnn_a": k, ...}}:
                                      logits from Python onnxruntime (CPU) on the first 64
                                      images of the sample's test.csv, row-major [n, classes],
                                      and how many train.csv images each model gets right.
"""

import argparse
import io
import json
import os
import zipfile

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

N_REF = 64
MEMBERS = {"cnn_a": 1, "cnn_b": 2, "cnn_c": 3}  # name -> training seed


def read_csv(zip_path, name):
    with zipfile.ZipFile(zip_path) as z:
        raw = z.read(name)
    return np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.float32)


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.classifier = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TinyMaps(nn.Module):
    """Feature maps 28 -> 14 -> 7 -> 4 -> 2 -> 1, then convolutions whose kernels overhang
    the 1x1 map on every side (only some taps ever read real input)."""

    def __init__(self):
        super().__init__()
        act = nn.ReLU
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), act(),  # 14x14
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), act(),  # 7x7
            nn.Conv2d(16, 16, 3, 2, 1), act(),  # 4x4
            nn.Conv2d(16, 32, 3, 2, 1), act(),  # 2x2
            nn.Conv2d(32, 32, 3, 1, 1), act(),  # 2x2, every tap used
            nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), act(),  # 1x1 from 2x2
            nn.Conv2d(64, 64, 3, 1, 1), act(),  # 1x1, centre tap only
            nn.Conv2d(64, 64, (3, 5), 1, (1, 2)), act(),  # non-square kernel
            nn.Conv2d(64, 64, 3, 1, 2, dilation=2), act(),  # dilated
            nn.Conv2d(64, 64, 3, 1, 1, groups=8), act(),  # grouped
            nn.Conv2d(64, 64, 3, 1, 1, groups=64),  # depthwise
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.body(x), 1))


def train(seed, x, y, steps, start=None):
    torch.manual_seed(seed)
    model = SmallCnn()
    if start is not None:
        model.load_state_dict(start.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export(model, path, shape=(1, 28, 28)):
    torch.onnx.export(
        model,
        torch.zeros(2, *shape),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="Kaggle-shaped zip with train.csv and test.csv")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--steps", type=int, default=80, help="training steps of the first model (batch 64)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # One thread: the tests run on a small shared machine where more threads only contend.
    torch.set_num_threads(1)

    train_rows = read_csv(args.sample, "train.csv")
    x = torch.from_numpy(train_rows[:, 1:] / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(train_rows[:, 0].astype(np.int64))
    test = read_csv(args.sample, "test.csv")[:N_REF] / np.float32(255.0)
    test = test.reshape(-1, 1, 28, 28).astype(np.float32)

    expected = {"n": N_REF, "classes": 10, "logits": {}, "train_total": int(x.shape[0]), "train_correct": {}}
    first = None
    for name, seed in MEMBERS.items():
        path = os.path.join(args.out, f"{name}.onnx")
        # The later members fine-tune the first with other seeds: cheap, and they still
        # disagree on some images, which the ensemble tests need.
        if first is None:
            model = first = train(seed, x, y, args.steps)
        else:
            model = train(seed, x, y, args.steps // 3, start=first)
        export(model, path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (logits,) = sess.run(["logits"], {"input": test})
        assert logits.shape == (N_REF, 10), logits.shape
        expected["logits"][name] = [float(v) for v in logits.reshape(-1)]
        (train_logits,) = sess.run(["logits"], {"input": x.numpy()})
        expected["train_correct"][name] = int((train_logits.argmax(1) == y.numpy()).sum())

    torch.manual_seed(7)
    tiny = TinyMaps()
    with torch.no_grad():
        for m in tiny.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so folding matters
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = os.path.join(args.out, "tiny_maps.onnx")
    export(tiny.eval(), path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": test})
    expected["logits"]["tiny_maps"] = [float(v) for v in logits.reshape(-1)]

    torch.manual_seed(0)
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    export(bad, os.path.join(args.out, "bad_shape.onnx"), shape=(3, 32, 32))

    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()

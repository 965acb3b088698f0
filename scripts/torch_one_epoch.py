"""Reference for the README: the seed recipe's first resnet18 epoch in PyTorch eager on the full
train.csv (stratified 80/20, Adam 1e-3, batch 64, 2 threads). Run: .venv/bin/python scripts/torch_one_epoch.py
[ZIP] [SEED]; SPLIT_DIR=DIR trains on DIR/train.csv and validates on DIR/val.csv instead of
numpy's split. conv1 is replaced for gray input, so it gets nn.Conv2d's default init, as in our
trainer; CONV1_INIT=fan_out keeps torchvision's kaiming fan-out instead."""
import os, sys, time, zipfile, numpy as np, torch, torchvision
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 42
torch.manual_seed(SEED); np.random.seed(SEED); torch.set_num_threads(2)
split_dir = os.environ.get("SPLIT_DIR")
if split_dir:
    # Our trainer's split, as written by `cargo run --release -p data --example split`.
    parts = [np.loadtxt(f"{split_dir}/{n}.csv", delimiter=',', skiprows=1, dtype=np.int64) for n in ("train", "val")]
    a = np.concatenate(parts)
    tr, val = np.arange(len(parts[0])), np.arange(len(parts[0]), len(a))
else:
    with zipfile.ZipFile(sys.argv[1] if len(sys.argv) > 1 else '../shared/data/digit-recognizer.zip') as z:
        a = np.loadtxt(z.open('train.csv'), delimiter=',', skiprows=1, dtype=np.int64)
    val = np.concatenate([np.random.permutation(np.where(a[:, 0] == c)[0])[: round((a[:, 0] == c).sum() * 0.2)] for c in range(10)])
    tr = np.setdiff1d(np.arange(len(a)), val)
y, x = a[:, 0], a[:, 1:].astype(np.float32) / 255.0
m = torchvision.models.resnet18(num_classes=10); m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
if os.environ.get("CONV1_INIT") == "fan_out": torch.nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
opt = torch.optim.Adam(m.parameters(), 1e-3)
X = torch.from_numpy(x).view(-1, 1, 28, 28); Y = torch.from_numpy(y)
m.train(); t = time.time(); perm = np.random.permutation(tr)
for i in range(0, len(perm), 64):
    b = perm[i:i + 64]; opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(X[b]), Y[b]); loss.backward(); opt.step()
m.eval()
with torch.no_grad():
    pred = torch.cat([m(X[val[i:i + 256]]).argmax(1) for i in range(0, len(val), 256)])
print(f"pytorch resnet18 1 epoch: val accuracy {(pred == Y[val]).float().mean():.4f}, {len(tr) / (time.time() - t):.0f} img/s")

"""Reference for docs/correctness.md: the seed recipe's first resnet18 epoch in PyTorch eager on the full
train.csv (stratified 80/20, Adam 1e-3, batch 64). Run: .venv/bin/python scripts/torch_one_epoch.py
[ZIP] [SEED]. conv1 is replaced for gray input, so it gets nn.Conv2d's default init, as in our
trainer. Environment:
  SPLIT_DIR=DIR    train on DIR/train.csv, validate on DIR/val.csv instead of numpy's split
  ORDER=ours       split and batch order drawn as our trainer draws them (data::Rng, SplitMix64)
                   for `trainer --seed SEED --split-seed SPLIT_SEED` (SPLIT_SEED defaults to SEED)
  INIT=FILE        initial weights from a safetensors state_dict instead of torch's draw
  SAVE_INIT=FILE   write the initial weights there (for `trainer --pretrained FILE`)
  CONV1_INIT=fan_out  torchvision's kaiming fan-out init for conv1
  THREADS=N        torch threads (default 2)
ORDER=ours with INIT replays one of our trainer's epochs step for step (same weights, same batches).
The default seed and the validation fraction are the trainer's (`trainer --print-config`), so
build it first: cargo build --release --bin trainer."""
import json, os, pathlib, subprocess, sys, time, zipfile, numpy as np, torch, torchvision

TRAINER = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "trainer"
if not TRAINER.is_file():
    sys.exit(f"{TRAINER} is missing: run `cargo build --release --bin trainer` first")
DEFAULTS = json.loads(subprocess.run([str(TRAINER), "--print-config"], check=True, capture_output=True, text=True).stdout)
VAL_FRACTION = DEFAULTS["val_fraction"]
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULTS["seed"]
torch.manual_seed(SEED); np.random.seed(SEED); torch.set_num_threads(int(os.environ.get("THREADS", "2")))
M64 = (1 << 64) - 1


class Rng:
    """data/src/rng.rs: SplitMix64, Lemire's unbiased `below`, Fisher-Yates `shuffle`."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        threshold = ((-n) & M64) % n
        while True:
            m = self.next_u64() * n
            if m & M64 >= threshold:
                return m >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def our_split(labels, fraction, seed):
    """data::stratified_split."""
    rng, train, val = Rng(seed), [], []
    for c in range(256):
        rows = np.where(labels == c)[0].tolist()
        if not rows:
            continue
        rng.shuffle(rows)
        n_val = min(int(np.floor(len(rows) * fraction + 0.5)), len(rows))
        val += rows[:n_val]; train += rows[n_val:]
    return np.array(sorted(train)), np.array(sorted(val))


def our_epoch_order(seed, epoch, n):
    """trainer/src/train.rs epoch_seed + shuffle of 0..n."""
    order = list(range(n))
    Rng(Rng(seed ^ ((epoch * 0xD1B54A32D192ED03) & M64)).next_u64()).shuffle(order)
    return np.array(order)


ours = os.environ.get("ORDER") == "ours"
split_dir = os.environ.get("SPLIT_DIR")
if split_dir:
    # Our trainer's split, as written by `cargo run --release -p data --example split`.
    parts = [np.loadtxt(f"{split_dir}/{n}.csv", delimiter=',', skiprows=1, dtype=np.int64) for n in ("train", "val")]
    a = np.concatenate(parts)
    tr, val = np.arange(len(parts[0])), np.arange(len(parts[0]), len(a))
else:
    with zipfile.ZipFile(sys.argv[1] if len(sys.argv) > 1 else '../shared/data/digit-recognizer.zip') as z:
        a = np.loadtxt(z.open('train.csv'), delimiter=',', skiprows=1, dtype=np.int64)
    if ours:
        tr, val = our_split(a[:, 0], VAL_FRACTION, int(os.environ.get("SPLIT_SEED", SEED)))
    else:
        val = np.concatenate([np.random.permutation(np.where(a[:, 0] == c)[0])[: round((a[:, 0] == c).sum() * VAL_FRACTION)] for c in range(10)])
        tr = np.setdiff1d(np.arange(len(a)), val)
y, x = a[:, 0], a[:, 1:].astype(np.float32) / 255.0
m = torchvision.models.resnet18(num_classes=10); m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
if os.environ.get("CONV1_INIT") == "fan_out": torch.nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
if os.environ.get("INIT"):
    from safetensors.torch import load_file
    missing, unexpected = m.load_state_dict(load_file(os.environ["INIT"]), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
if os.environ.get("SAVE_INIT"):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}, os.environ["SAVE_INIT"])
opt = torch.optim.Adam(m.parameters(), 1e-3)
X = torch.from_numpy(x).view(-1, 1, 28, 28); Y = torch.from_numpy(y)
m.train(); t = time.time()
perm = tr[our_epoch_order(SEED, 1, len(tr))] if ours else np.random.permutation(tr)
for i in range(0, len(perm), 64):
    b = perm[i:i + 64]
    if len(b) < 2: continue  # our loader drops a last batch of one
    opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(X[b]), Y[b]); loss.backward(); opt.step()
m.eval()
with torch.no_grad():
    pred = torch.cat([m(X[val[i:i + 256]]).argmax(1) for i in range(0, len(val), 256)])
print(f"pytorch resnet18 1 epoch: val accuracy {(pred == Y[val]).float().mean():.4f} ({int((pred == Y[val]).sum())}/{len(val)}), {len(tr) / (time.time() - t):.0f} img/s")

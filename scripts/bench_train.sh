#!/usr/bin/env bash
# Training speed on the CPU: our trainer (libtorch through the graph lowering) against
# PyTorch eager with torchvision's model, same batch, threads, steps and warm-up.
#
# Usage: scripts/bench_train.sh [ARCHS] [BATCH] [THREADS] [STEPS]
#   ARCHS   comma list (default resnet18,mobilenet_v2,squeezenet1_1,efficientnet_b0,m5)
#   BATCH   images per step (default 64); THREADS intra-op threads (default 2);
#   STEPS   timed Adam steps after 3 warm-up steps (default 30)
# Prints a Markdown table. Not a test: numbers depend on the machine and its load.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=${1:-resnet18,mobilenet_v2,squeezenet1_1,efficientnet_b0,m5}
BATCH=${2:-64}
THREADS=${3:-2}
STEPS=${4:-30}
WARMUP=3
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: $PY missing; run scripts/setup.sh" >&2; exit 1; }

# .cargo/config.toml gives cargo LIBTORCH/ORT paths; the built example needs libtorch at run time.
cargo build --release -q -p trainer --example bench_train
BIN=target/release/examples/bench_train
export LD_LIBRARY_PATH="$PWD/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Both sides use exactly THREADS threads (no extra OpenMP/MKL pools).
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

echo "batch $BATCH, threads $THREADS, $STEPS steps after $WARMUP warm-up; load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
echo
echo "| arch | ours img/s | PyTorch img/s | ratio |"
echo "|---|---:|---:|---:|"
IFS=',' read -ra LIST <<< "$ARCHS"
for arch in "${LIST[@]}"; do
  ours=$("$BIN" "$arch" "$BATCH" "$THREADS" "$STEPS" "$WARMUP" | awk '/^img\/s/ {print $2}')
  theirs=$("$PY" scripts/bench_train_torch.py "$arch" "$BATCH" "$THREADS" "$STEPS" "$WARMUP" | awk '/^img\/s/ {print $2}')
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
  echo "| $arch | $ours | $theirs | $ratio |"
done

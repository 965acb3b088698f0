#!/usr/bin/env bash
# Trains resnet18 for one epoch on a CUDA GPU, in fp32 and with --amp (bf16 autocast), and
# prints the training img/s of each. For a GPU host (NVIDIA driver installed); the trainer's
# CUDA path is otherwise only compiled, not run, by the tests.
#
# Usage: scripts/train_cuda.sh [DATA] [RECIPE] [extra trainer args...]
#   DATA    Kaggle zip, folder or train.csv (default: the committed sample)
#   RECIPE  seed or strong (default strong)
#   DEVICE=cpu scripts/train_cuda.sh sample/digit-recognizer.zip seed --limit 500  # dry run
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-sample/digit-recognizer.zip}
RECIPE=${2:-strong}
shift $(( $# < 2 ? $# : 2 ))
DEVICE=${DEVICE:-cuda}

[ -x .venv/bin/python ] || bash scripts/setup.sh
cargo build --release --workspace -q --bin trainer
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

export MLFLOW_ALLOW_FILE_STORE=true
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for amp in "" "--amp"; do
  log="$OUT/log${amp}"
  target/release/trainer --model resnet18 --epochs 1 --recipe "$RECIPE" --device "$DEVICE" --data "$DATA" \
    --output-dir "$OUT/ckpts" --mlruns "$OUT/mlruns" --no-progress $amp "$@" | tee "$log"
  rate=$(sed -nE 's/^epoch 1\/1: .*\(([0-9.]+) img\/s\)$/\1/p' "$log")
  acc=$(sed -nE 's/^epoch 1\/1: .* val_accuracy ([0-9.]+) .*/\1/p' "$log")
  echo "resnet18 on $DEVICE, recipe $RECIPE${amp:+, bf16 autocast}: $rate img/s, val accuracy $acc"
done

#!/usr/bin/env bash
# The main job on a small default: train resnet18 for one epoch, export it to ONNX, and write a
# Kaggle submission with `infer`. Defaults to the sample committed in the repo; pass Kaggle's
# download (digit-recognizer.zip or its unzipped folder) to use the full data.
#
#   bash scripts/main_job.sh [DATA] [ARCH] [EPOCHS]
#
# Writes checkpoints/, exported/ and submission.csv in the repository root, or under $OUT if set
# (a relative $OUT is taken from the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
DATA=${1:-sample/digit-recognizer.zip}
ARCH=${2:-resnet18}
EPOCHS=${3:-1}
SETUP_TEST=${SETUP_TEST:-0} bash scripts/setup.sh   # what the binaries load, no test tools
cargo build --release --bin trainer --bin exporter --bin infer
BIN=target/release
echo "== train $ARCH for $EPOCHS epoch(s) on $DATA"
"$BIN/trainer" --model "$ARCH" --epochs "$EPOCHS" --data "$DATA" --output-dir "$OUT/checkpoints"
echo "== export"
mkdir -p "$OUT/exported"
"$BIN/exporter" --checkpoint "$OUT/checkpoints/$ARCH/best" -o "$OUT/exported/$ARCH.onnx"
echo "== infer"
"$BIN/infer" --model "$OUT/exported/$ARCH.onnx" "$DATA" -o "$OUT/submission.csv" --batch-size 64
echo "== wrote $OUT/submission.csv ($(($(wc -l < "$OUT/submission.csv") - 1)) rows)"

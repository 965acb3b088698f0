#!/usr/bin/env bash
# The main job on a small default: train resnet18 for one epoch, export it to ONNX, and write a
# Kaggle submission with `infer`. Defaults to the sample committed in the repo; pass Kaggle's
# download (digit-recognizer.zip or its unzipped folder) to use the full data.
#
#   bash scripts/main_job.sh [DATA] [ARCH] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-sample/digit-recognizer.zip}
ARCH=${2:-resnet18}
EPOCHS=${3:-1}
bash scripts/setup.sh
cargo build --release --bin trainer --bin exporter --bin infer
BIN=target/release
echo "== train $ARCH for $EPOCHS epoch(s) on $DATA"
"$BIN/trainer" --model "$ARCH" --epochs "$EPOCHS" --data "$DATA" --output-dir checkpoints
echo "== export"
mkdir -p exported
"$BIN/exporter" --checkpoint "checkpoints/$ARCH/best" -o "exported/$ARCH.onnx"
echo "== infer"
"$BIN/infer" --model "exported/$ARCH.onnx" "$DATA" -o submission.csv --batch-size 64
echo "== wrote submission.csv ($(($(wc -l < submission.csv) - 1)) rows)"

#!/usr/bin/env bash
# The accuracy recipe (issue #8): an ensemble of small digit CNNs trained with the strong recipe
# on Kaggle's train.csv, all sharing one validation split, exported, judged on that split alone
# (never on test.csv), and turned into submission.csv by `infer --ensemble`.
#
#   bash scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]
#
#   DATA     Kaggle's digit-recognizer.zip (or its folder)
#   EPOCHS   strong-recipe epochs per member (default 15)
#   MEMBERS  comma list of arch:seed (default cnn_digits:1,cnn_digits:2,cnn_digits:3)
#
# Members differ in architecture and/or initialisation/shuffle/augmentation seed; the
# validation split is the same for all (--split-seed 42), so the ensemble's validation
# accuracy is measured on images none of its members trained on. Everything lands in
# runs/accuracy/ (checkpoints, ONNX files, val.csv, timings) and submission.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]}
EPOCHS=${2:-15}
MEMBERS=${3:-cnn_digits:1,cnn_digits:2,cnn_digits:3}
SPLIT_SEED=42
VAL_FRACTION=0.2
OUT=runs/accuracy
BIN=target/release

bash scripts/setup.sh
cargo build --release --workspace --bins --examples
export MLFLOW_ALLOW_FILE_STORE=true
mkdir -p "$OUT/models"
start=$(date +%s)

names=()
for member in ${MEMBERS//,/ }; do
  arch=${member%%:*}; seed=${member##*:}; name="${arch}_s${seed}"
  echo "== train $name ($EPOCHS epochs, strong recipe)"
  "$BIN/trainer" --model "$arch" --recipe strong --epochs "$EPOCHS" --seed "$seed" \
    --split-seed "$SPLIT_SEED" --val-fraction "$VAL_FRACTION" --data "$DATA" \
    --output-dir "$OUT/checkpoints/$name" --experiment accuracy --no-progress
  "$BIN/exporter" --checkpoint "$OUT/checkpoints/$name/$arch/best" -o "$OUT/models/$name.onnx"
  names+=("$name")
done
ensemble=$(IFS=,; echo "${names[*]}")

echo "== validation split (the one every member held out)"
target/release/examples/split "$DATA" "$OUT/split" "$VAL_FRACTION" "$SPLIT_SEED"
for name in "${names[@]}"; do
  echo "-- $name"
  "$BIN/infer" --model "$OUT/models/$name.onnx" "$OUT/split/val.csv" --evaluate | grep -i "accuracy" | head -1
done
# The ways of combining members, all scored on the same held-out split (which one mattered).
for how in "" "--vote soft" "--tta" "--vote soft --tta"; do
  echo "-- ensemble of $ensemble: ${how:-majority vote}"
  # shellcheck disable=SC2086
  "$BIN/infer" --ensemble "$ensemble" --models-dir "$OUT/models" "$OUT/split/val.csv" --evaluate $how \
    | grep -i "accuracy" | head -1
done

echo "== submission"
"$BIN/infer" --ensemble "$ensemble" --models-dir "$OUT/models" "$DATA" -o submission.csv \
  --timings "$OUT/timings.json"
echo "== wrote submission.csv ($(($(wc -l < submission.csv) - 1)) rows) in $(( $(date +%s) - start )) s after the build"

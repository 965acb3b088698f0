#!/usr/bin/env bash
# The accuracy recipe (issue #8): an ensemble of small digit CNNs trained with the strong recipe
# on Kaggle's train.csv, all sharing one validation split, exported, judged on that split alone
# (never on test.csv), and turned into submission.csv by `infer --ensemble`.
#
#   bash scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]
#
#   DATA     Kaggle's digit-recognizer.zip (or its folder)
#   EPOCHS   strong-recipe epochs per member (default 30)
#   MEMBERS  comma list of arch:seed or arch:seed:epochs (default cnn_digits:1,cnn_digits:2);
#            a member's own epochs override EPOCHS, e.g. to give a costlier net fewer
#   JOBS     (environment) members trained at once (default: one per CPU, at most one per member)
#   THREADS  (environment) libtorch threads per member (default: CPUs / JOBS)
#   TRAIN_FLAGS  (environment) extra trainer flags for every member, e.g. '--elastic 36 --elastic-sigma 6'
#   BUILD=0  (environment) no set-up or build: use the binaries already in target/release
#   FULL=1   (environment) members train on every labelled image (--val-fraction 0 --keep last),
#            for a submission; nothing is scored, since no image is held out
#            (scripts/gpu_check.sh on a GPU host without a Rust toolchain)
#
# Members differ in architecture and/or initialisation/shuffle/augmentation seed; the
# validation split is the same for all (the trainer's default, which the split example also
# writes), so the ensemble's validation accuracy is measured on images none of its members
# trained on. Members train side by side, one thread each: a small CNN keeps one core busy far
# better than it splits a step over two (2 x 1 thread: ~980 img/s together; 1 x 2 threads:
# 570-820 img/s, batch 64-128). The default spends a 2-core hour on two long-trained members
# rather than more short ones: on the validation
# split, 15 -> 20 -> 30 epochs took a member from 35-36 to 28-31 to 25-28 errors, while voting
# three or four members gained 2-5 images (docs/accuracy.md).
# Everything lands in runs/accuracy/ (checkpoints, ONNX files, logs/, val.csv, timings), or in
# $OUT if set, and the submission in submission.csv, or in $SUBMISSION if set (relative paths
# are taken from the repository root).
set -euo pipefail
t0=$(date +%s)
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]}
EPOCHS=${2:-30}
MEMBERS=${3:-cnn_digits:1,cnn_digits:2}
OUT=${OUT:-runs/accuracy}
SUBMISSION=${SUBMISSION:-submission.csv}
BIN=target/release
read -ra TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"
SPLIT_FLAGS=()
if [ "${FULL:-0}" = 1 ]; then
  SPLIT_FLAGS=(--val-fraction 0 --keep last)
fi
source scripts/lanes.sh
IFS=',' read -ra LIST <<< "$MEMBERS"
# Member i: architecture archs[i], seed seeds[i], epochs[i], named names[i] (its checkpoint,
# ONNX file, log).
archs=() seeds=() epochs=() names=()
for member in "${LIST[@]}"; do
  IFS=: read -r arch seed ep extra <<< "$member"
  [[ -n $arch && $seed =~ ^[0-9]+$ && ${ep:-1} =~ ^[1-9][0-9]*$ && -z $extra ]] ||
    { echo "error: member '$member' is not arch:seed or arch:seed:epochs" >&2; exit 2; }
  archs+=("$arch") seeds+=("$seed") epochs+=("${ep:-$EPOCHS}") names+=("${arch}_s$seed")
done

if [ "${BUILD:-1}" != 0 ]; then
  SETUP_TEST=${SETUP_TEST:-0} bash scripts/setup.sh
  # Only what this script runs: the three binaries and the split example.
  cargo build --release --bin trainer --bin exporter --bin infer --example split
fi
export MLFLOW_ALLOW_FILE_STORE=true
mkdir -p "$OUT/models"
start=$(date +%s)

CPUS=$(nproc)
JOBS=${JOBS:-$(( CPUS < ${#LIST[@]} ? CPUS : ${#LIST[@]} ))}
THREADS=${THREADS:-$(( CPUS / JOBS > 0 ? CPUS / JOBS : 1 ))}
mkdir -p "$OUT/logs"
# Member i: train, then export its best (EMA, best validation epoch) checkpoint.
member() {
  local arch=${archs[$1]} name=${names[$1]}
  "$BIN/trainer" --model "$arch" --recipe strong --epochs "${epochs[$1]}" --seed "${seeds[$1]}" \
    "${SPLIT_FLAGS[@]}" --data "$DATA" --threads "$THREADS" \
    --output-dir "$OUT/checkpoints/$name" --experiment accuracy --no-progress "${TRAIN_FLAGS[@]}" &&
  "$BIN/exporter" --checkpoint "$OUT/checkpoints/$name/$arch/best" -o "$OUT/models/$name.onnx"
}
# One member per job, JOBS lanes side by side (scripts/lanes.sh); the trainers' MLflow store makes
# one "accuracy" experiment however many start at once.
train_member() {
  local log="$OUT/logs/${names[$1]}.log"
  echo "== lane $2: train ${names[$1]} (${epochs[$1]} epochs, strong recipe, $THREADS thread(s); log $log)"
  logged "${names[$1]}" "$log" member "$1" || return 1
  echo "== lane $2: ${names[$1]} done after $(( $(date +%s) - start )) s: $(best_of "$log")"
}
run_lanes "$JOBS" "${#LIST[@]}" train_member "$OUT/logs/.claims" ||
  { echo "error: a member failed to train or export (logs in $OUT/logs)" >&2; exit 1; }
echo "== all members trained and exported after $(( $(date +%s) - start )) s"
ensemble=$(IFS=,; echo "${names[*]}")

if [ "${FULL:-0}" != 1 ]; then
  echo "== validation split (the one every member held out)"
  target/release/examples/split "$DATA" "$OUT/split"
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
fi

echo "== submission"
"$BIN/infer" --ensemble "$ensemble" --models-dir "$OUT/models" "$DATA" -o "$SUBMISSION" \
  --timings "$OUT/timings.json"
echo "== wrote $SUBMISSION ($(($(wc -l < "$SUBMISSION") - 1)) rows) in $(( $(date +%s) - start )) s after the build, $(( $(date +%s) - t0 )) s in all (set-up and build included)"

#!/usr/bin/env bash
# The per-architecture results table of docs/accuracy.md (issue #8), in the seed project's shape: for each
# architecture the best validation accuracy with the seed recipe and with the strong recipe,
# its parameter count, and inference ms/batch (batch 64) with ort and with tract.
#
#   bash scripts/results_table.sh DATA [SEED_EPOCHS] [STRONG_EPOCHS] [ARCHS]
#
#   DATA           Kaggle's digit-recognizer.zip (or sample/digit-recognizer.zip for a quick table)
#   SEED_EPOCHS    epochs with --recipe seed (default 1)
#   STRONG_EPOCHS  epochs with --recipe strong (default 3)
#   ARCHS          comma list (default: the whole zoo, as `trainer --list-archs` prints it)
#
# Every run validates on the trainer's default split of DATA's train.csv; test.csv only
# feeds the timing (its first 21 batches of 64: one warm-up, 20 timed, 2 threads). The strong
# recipe's best checkpoint is the one exported and timed. Writes runs/results/table.md, or
# $OUT/table.md if OUT is set (the folder is emptied first; relative to the repository root).
# TIMING_ONLY=1 skips training and re-times the checkpoints of the last run (timings want
# a quiet machine; the accuracies do not). RESUME=1 keeps the trainings the last run finished
# (log and checkpoint) and does the rest, e.g. after an interruption. JOBS and THREADS: see the
# training lanes below.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/results_table.sh DATA [SEED_EPOCHS] [STRONG_EPOCHS] [ARCHS]}
SEED_EPOCHS=${2:-1}
STRONG_EPOCHS=${3:-3}
ARCHS=${4:-}
OUT=${OUT:-runs/results}
BIN=target/release
PY=.venv/bin/python
source scripts/lanes.sh

bash scripts/setup.sh
cargo build --release --workspace --bins
# models::Arch::ALL is the one list of architectures.
[[ -n $ARCHS ]] || ARCHS=$("$BIN/trainer" --list-archs | paste -sd, -)
export MLFLOW_ALLOW_FILE_STORE=true
start=$(date +%s)

[[ -n "${TIMING_ONLY:-}${RESUME:-}" ]] || rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/onnx"
# One training job per (recipe, architecture), JOBS lanes side by side (scripts/lanes.sh; default
# one per CPU, THREADS libtorch threads each, default CPUs / JOBS).
jobs=()
for recipe in seed strong; do for arch in ${ARCHS//,/ }; do jobs+=("$recipe:$arch"); done; done
CPUS=$(nproc)
JOBS=${JOBS:-$CPUS}
THREADS=${THREADS:-$(( CPUS / JOBS > 0 ? CPUS / JOBS : 1 ))}
train_job() {
  local recipe=${jobs[$1]%%:*} arch=${jobs[$1]##*:} epochs=$SEED_EPOCHS
  [[ $recipe == strong ]] && epochs=$STRONG_EPOCHS
  local log="$OUT/logs/$recipe-$arch.log"
  if [[ -n "${RESUME:-}" && -f "$OUT/$recipe/$arch/best/config.json" ]] && grep -qs '^best:' "$log"; then
    echo "== lane $2: $recipe recipe, $arch: kept from the last run"
    return 0
  fi
  logged "$recipe $arch" "$log" "$BIN/trainer" --model "$arch" --recipe "$recipe" --epochs "$epochs" \
    --data "$DATA" --threads "$THREADS" --output-dir "$OUT/$recipe" \
    --experiment "results-$recipe" --no-progress || return 1
  echo "== lane $2: $recipe recipe, $arch, $epochs epoch(s), done after $(( $(date +%s) - start )) s: $(best_of "$log")"
}
if [[ -z "${TIMING_ONLY:-}" ]]; then
  echo "== ${#jobs[@]} training jobs in $JOBS lane(s) of $THREADS thread(s); logs in $OUT/logs"
  run_lanes "$JOBS" "${#jobs[@]}" train_job "$OUT/logs/.claims" ||
    { echo "error: a training job failed (logs in $OUT/logs)" >&2; exit 1; }
fi

# The timing input: the first 21 x 64 rows of test.csv (fewer whole batches for the sample).
"$PY" - "$DATA" "$OUT/test_head.csv" <<'EOF'
import io, sys, zipfile, pathlib
src, dst = pathlib.Path(sys.argv[1]), sys.argv[2]
if src.suffix == ".zip":
    text = zipfile.ZipFile(src).read("test.csv").decode()
else:
    text = (src / "test.csv" if src.is_dir() else src).read_text()
lines = io.StringIO(text).readlines()
open(dst, "w").write("".join(lines[: 1 + min(21, (len(lines) - 1) // 64) * 64]))
EOF

field() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
{
  echo "| architecture | val accuracy, seed recipe ($SEED_EPOCHS ep) | val accuracy, strong recipe ($STRONG_EPOCHS ep) | parameters | ms/batch ort | ms/batch tract |"
  echo "|---|---:|---:|---:|---:|---:|"
} > "$OUT/table.md"
for arch in ${ARCHS//,/ }; do
  seed_acc=$(field "$OUT/seed/$arch/best/config.json" val_accuracy)
  strong_acc=$(field "$OUT/strong/$arch/best/config.json" val_accuracy)
  params=$(grep -m1 -oE "model: $arch \([0-9]+ trainable" "$OUT/logs/strong-$arch.log" | grep -oE "[0-9]+ trainable" | cut -d' ' -f1)
  "$BIN/exporter" --checkpoint "$OUT/strong/$arch/best" -o "$OUT/onnx/$arch.onnx" > /dev/null
  ms=()
  for backend in ort tract; do
    "$BIN/infer" --model "$OUT/onnx/$arch.onnx" "$OUT/test_head.csv" --backend "$backend" --batch-size 64 \
      --threads 2 -o "$OUT/sub_$arch.csv" --timings "$OUT/timing_${arch}_$backend.json" > /dev/null
    ms+=("$("$PY" -c 'import json, sys; print("%.1f" % json.load(open(sys.argv[1]))["models"][0]["mean_ms"])' "$OUT/timing_${arch}_$backend.json")")
  done
  printf '| %s | %.4f | %.4f | %s | %s | %s |\n' "$arch" "$seed_acc" "$strong_acc" "$params" "${ms[0]}" "${ms[1]}" | tee -a "$OUT/table.md"
done
echo "== wrote $OUT/table.md in $(( $(date +%s) - start )) s after the build"

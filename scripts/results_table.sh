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
# $OUT/table.md if set (the folder is emptied first; relative to the repository root).
# TIMING_ONLY=1 skips training and re-times the checkpoints of the last run (timings want
# a quiet machine; the accuracies do not). RESUME=1 keeps the trainings the last run finished
# (log and checkpoint) and does the rest, e.g. after an interruption. JOBS trainings at once
# (default: one per CPU), THREADS libtorch threads each (default: CPUs / JOBS). BUILD=0: no
# set-up or build. The table itself is `xtask results-table` (xtask/src/results_table.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${1:?usage: scripts/results_table.sh DATA [SEED_EPOCHS] [STRONG_EPOCHS] [ARCHS]}"
if [ "${BUILD:-1}" != 0 ]; then
  bash scripts/setup.sh
  cargo build --release --bin trainer --bin exporter --bin infer --bin xtask
fi
exec target/release/xtask results-table "$@"

#!/usr/bin/env bash
# The accuracy recipe (issues #8, #19): an ensemble of small digit CNNs trained with the strong
# recipe for a fixed number of epochs (the last epoch's EMA weights, `--keep last`: no epoch is
# chosen on any validation images), exported, and turned into submission.csv by the majority
# vote of the members' shift-TTA predictions (`infer --ensemble --tta`). Two modes:
#
#   bash scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]           # the submission (FULL=1, default)
#   FULL=0 SPLIT_SEED=7 bash scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]   # the estimate
#
#   DATA     Kaggle's digit-recognizer.zip (or its folder)
#   EPOCHS   the recipe's length in epochs over a split's 33,600 training images (default 40);
#            FULL=1 trains the same number of optimiser steps over all 42,000: 4/5 as many (32)
#   MEMBERS  comma list of arch:seed or arch:seed:epochs (default cnn_digits:1,cnn_digits:2);
#            a member's own epochs (counted like EPOCHS) override EPOCHS, e.g. to give a
#            costlier net fewer
#   FULL=1   (environment, default) members train on every labelled image (--val-fraction 0):
#            nothing is held out, so nothing is scored; the submission's mode
#   FULL=0   members hold out the stratified split of SPLIT_SEED (20% of each class) and are
#            scored, alone and voting, on it: the recipe's estimate. No choice is made on that
#            split, so with a SPLIT_SEED other than the trainer's default (42, the split the
#            recipe's settings were tried on) the figure is unselected
#   SPLIT_SEED (environment) seed of the held-out split with FULL=0 (default: the trainer's)
#   JOBS     (environment) members trained at once (default: one per CPU, at most one per member)
#   THREADS  (environment) libtorch threads per member (default: CPUs / JOBS)
#   TRAIN_FLAGS  (environment) extra trainer flags for every member, e.g. '--elastic 36 --elastic-sigma 6'
#   BUILD=0  (environment) no set-up or build: use the binaries already in target/release
#
# Everything lands in runs/accuracy/ (checkpoints, ONNX files, logs/, split/, timings), or in
# $OUT if set, and the submission in submission.csv, or in $SUBMISSION if set (relative paths
# are taken from the repository root). This script sets up and builds; the recipe itself is
# `xtask accuracy` (xtask/src/accuracy.rs; `target/release/xtask accuracy --help`).
set -euo pipefail
# "in all" counts the set-up and the build too.
XTASK_STARTED=$(date +%s) && export XTASK_STARTED
cd "$(dirname "$0")/.."
: "${1:?usage: scripts/accuracy.sh DATA [EPOCHS] [MEMBERS]}"
if [ "${BUILD:-1}" != 0 ]; then
  SETUP_TEST=${SETUP_TEST:-0} bash scripts/setup.sh
  # Only what the recipe runs: the three binaries and xtask.
  cargo build --release --bin trainer --bin exporter --bin infer --bin xtask
elif [ -f .gpu/bundle.tar.xz ] && [ .gpu/bundle.tar.xz -nt target/release/xtask ]; then
  # A GPU host without cargo (scripts/gpu_check.sh): xtask travels in the bundle with the
  # binaries it drives.
  mkdir -p target/release
  tar -xJOf .gpu/bundle.tar.xz ./bin/xtask >target/release/xtask.part && chmod +x target/release/xtask.part ||
    { rm -f target/release/xtask.part; echo "error: .gpu/bundle.tar.xz has no bin/xtask (rerun scripts/gpu_pack.sh)" >&2; exit 1; }
  mv target/release/xtask.part target/release/xtask
fi
exec target/release/xtask accuracy "$@"

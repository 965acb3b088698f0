#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU host that has no Rust toolchain (such as the
# project's lent H200): the release binaries built here, from the same sources and settings CI
# tests, the CUDA test binary, and the data, into .gpu/bundle.tar.xz (ignored by git; carry
# `.gpu`). The binaries find libtorch and ONNX Runtime there through gpu_check.sh.
#
# Usage: scripts/gpu_pack.sh [DATA]   DATA: Kaggle's zip (default ../shared/data/digit-recognizer.zip)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/digit-recognizer.zip}
[ -f "$DATA" ] || { echo "error: $DATA: no such file" >&2; exit 2; }
bash scripts/setup.sh
# xtask runs the accuracy recipe for scripts/accuracy.sh (BUILD=0 there unpacks it from the bundle).
cargo build --release --bin trainer --bin exporter --bin infer --bin xtask --example bench_train
# The test binary's path has a hash: ask cargo for it.
cuda_test=$(target/release/xtask test-binary trainer cuda)
[ -x "$cuda_test" ] || { echo "error: the CUDA test binary was not built" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/data"
# Stripped: the unstripped exporter and infer are 44 MB each; 64 MiB travel in all.
for b in trainer exporter infer xtask; do strip -o "$stage/bin/$b" "target/release/$b"; done
strip -o "$stage/bin/bench_train" target/release/examples/bench_train
strip -o "$stage/bin/cuda_tests" "$cuda_test"
cp "$DATA" "$stage/data/digit-recognizer.zip"
# Test binaries name files by this checkout's absolute path (CARGO_MANIFEST_DIR).
pwd >"$stage/BUILD_ROOT"
git rev-parse HEAD >"$stage/COMMIT"
git status --porcelain --untracked-files=no | grep -q . && echo "dirty" >>"$stage/COMMIT"
mkdir -p .gpu
tar -C "$stage" -cJf .gpu/bundle.tar.xz .
echo "wrote .gpu/bundle.tar.xz ($(du -m .gpu/bundle.tar.xz | cut -f1) MB; commit $(head -1 "$stage/COMMIT"))"

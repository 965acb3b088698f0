#!/usr/bin/env bash
# Loads what each binary loads at run time (the Dockerfile runs it at build time; the Dockerfile
# test runs it on the staged layout): the trainer trains one small epoch on the CPU (libtorch,
# libtorch_cuda and the CUDA libraries it links), the exporter self-checks in tract and ONNX
# Runtime, `infer --backend ort` predicts (it must open libonnxruntime, an error otherwise).
# With ONNX Runtime's CUDA provider present, `--backend ort-cuda` must fail for the driver alone
# (libcuda.so.1 comes from the host): every other library it needs is in the image.
#
#   image-smoke.sh DATA_ZIP      (trainer, exporter, infer on PATH; ORT_DYLIB_PATH set)
set -euo pipefail
data=${1:?usage: image-smoke.sh DATA_ZIP}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trainer --model cnn_digits --epochs 1 --limit 512 --data "$data" --device cpu --threads 1 --no-progress \
  --output-dir "$tmp/ck" --mlruns "$tmp/mlruns" >"$tmp/train.log"
exporter --checkpoint "$tmp/ck/cnn_digits/best" -o "$tmp/m.onnx" --no-mlflow --check-data "$data" >"$tmp/export.log"
# The self-check ran in ONNX Runtime, not only in tract.
grep -q "ort max" "$tmp/export.log" || { cat "$tmp/export.log" >&2; echo "error: the exporter's self-check did not load ONNX Runtime" >&2; exit 1; }
infer --backend ort --model "$tmp/m.onnx" "$data" -o "$tmp/sub.csv" 2>"$tmp/infer.log" ||
  { cat "$tmp/infer.log" >&2; exit 1; }
echo "smoke: trainer (libtorch), exporter and infer (ONNX Runtime from $ORT_DYLIB_PATH) ran"
if [[ -e $(dirname "$(readlink -f "$ORT_DYLIB_PATH")")/libonnxruntime_providers_cuda.so ]]; then
  if infer --backend ort-cuda --model "$tmp/m.onnx" "$data" -o "$tmp/sub.csv" 2>"$tmp/cuda.log"; then
    echo "smoke: infer --backend ort-cuda ran on a GPU"
  elif grep -q "missing library: libcuda.so.1" "$tmp/cuda.log"; then
    echo "smoke: ONNX Runtime's CUDA provider loads all its libraries but the driver's libcuda.so.1 (no GPU here)"
  else
    cat "$tmp/cuda.log" >&2
    echo "error: ONNX Runtime's CUDA provider misses a library other than the driver" >&2
    exit 1
  fi
fi

#!/usr/bin/env bash
# Creates the project-local Python environment that provides libtorch (for the trainer),
# libonnxruntime (for `infer --backend ort`) and the reference tools the tests compare
# against (torch, torchvision, onnx, onnxruntime, mlflow). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Headless Chromium and its WebDriver, for the browser test of `infer serve`'s page
# (inference/tests/serve_clients.rs).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "[setup] installing Debian's chromium and chromium-driver"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if ! cmp -s scripts/requirements.txt "$VENV/.requirements.installed" 2>/dev/null; then
  echo "[setup] installing scripts/requirements.txt (first time: ~4 GB of wheels, torch ships CUDA libraries)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$VENV/.requirements.installed"
fi
# Stable paths that do not depend on the Python minor version; .cargo/config.toml points at them.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$SITE/torch" "$VENV/libtorch"
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so* | head -n 1)
ln -sfn "$ORT_LIB" "$VENV/libonnxruntime.so"
echo "[setup] libtorch: $VENV/libtorch -> $SITE/torch"
echo "[setup] onnxruntime: $VENV/libonnxruntime.so -> $ORT_LIB"

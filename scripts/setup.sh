#!/usr/bin/env bash
# Creates the project-local Python environment `.venv`: libtorch (the trainer links it) and
# libonnxruntime (`infer --backend ort` loads it) from scripts/requirements.txt, then the
# reference tools the tests compare against (torchvision, onnx, mlflow, scipy, tritonclient...)
# from scripts/requirements-test.txt and Debian's Chromium for one browser test.
# Idempotent: a second run is quick.
#
# SETUP_TEST=0 installs only what the binaries load (the main job needs nothing else); the test
# command installs everything. SETUP_BROWSER=0 skips Chromium alone.
# SETUP_GPU=1 installs onnxruntime-gpu (ONNX Runtime with its CUDA provider, for
# `--backend ort-cuda`) instead of the CPU-only onnxruntime; SETUP_GPU=auto (the default) does so
# where an NVIDIA driver is loaded, SETUP_GPU=0 never. torch's PyPI wheel has CUDA either way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Headless Chromium and its WebDriver, for the browser test of `infer serve`'s page
# (inference/tests/serve_clients.rs). SETUP_BROWSER=0 skips them where no test runs (Docker).
TESTS=${SETUP_TEST:-1}
if [ "$TESTS" != 0 ] && [ "${SETUP_BROWSER:-1}" != 0 ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
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
case "${SETUP_GPU:-auto}" in
  auto) if [ -e /proc/driver/nvidia/version ]; then GPU=1; else GPU=0; fi ;;
  0 | 1) GPU=$SETUP_GPU ;;
  *) echo "[setup] error: SETUP_GPU must be 0, 1 or auto, got '$SETUP_GPU'" >&2; exit 2 ;;
esac
# The two ONNX Runtime wheels ship the same `onnxruntime` module and cannot share a venv: the
# requirements name the CPU one, the GPU variant swaps it and removes the other if present.
REQ=scripts/requirements.txt
if [ "$GPU" = 1 ]; then
  REQ=$VENV/requirements-gpu.txt
  sed 's/^onnxruntime==/onnxruntime-gpu==/' scripts/requirements.txt >"$REQ"
  OTHER=onnxruntime
else
  OTHER=onnxruntime-gpu
fi
# Measured on a fresh venv: 2.8 GB of wheels (torch ships CUDA libraries) unpack into 5.7 GB,
# so the first install peaks at ~8.6 GB; the cold release build adds 2.1 GB to the 5.7 afterwards.
need_mb=9000
free_mb() { df -Pm "$VENV" | awk 'NR == 2 { print $4 }'; }
# install FILE MARKER: pip-installs FILE unless MARKER says that exact file is installed.
install() {
  cmp -s "$1" "$VENV/$2" 2>/dev/null && return 0
  echo "[setup] installing $1 (a first full install peaks at ~8.6 GB; $(free_mb) MB free)"
  if (( $(free_mb) < need_mb )); then
    echo "[setup] warning: less than $need_mb MB free on the filesystem of $VENV; the install may run out of space" >&2
  fi
  # Wheels are downloaded next to the venv (one filesystem to have room on, not a small /tmp)
  # and not cached: pip's cache would keep a second 2.8 GB copy that nothing reads again.
  mkdir -p "$VENV/pip-tmp"
  if ! TMPDIR="$PWD/$VENV/pip-tmp" "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check \
    -r "$1"; then
    rm -rf "$VENV/pip-tmp"
    echo "[setup] error: pip could not install $1 into $VENV (its message is above;" \
      "$(free_mb) MB free now, the first install needs ~$need_mb MB). Rerunning this script resumes." >&2
    exit 1
  fi
  rm -rf "$VENV/pip-tmp"
  cp "$1" "$VENV/$2"
}
if ! cmp -s "$REQ" "$VENV/.requirements.installed" 2>/dev/null &&
  "$VENV/bin/python" -m pip show -q "$OTHER" 2>/dev/null; then
  echo "[setup] removing $OTHER (SETUP_GPU=$GPU)"
  "$VENV/bin/python" -m pip uninstall -q -y "$OTHER"
fi
install "$REQ" .requirements.installed
if [ "$TESTS" != 0 ]; then
  install scripts/requirements-test.txt .requirements-test.installed
fi
# Stable paths that do not depend on the Python minor version; .cargo/config.toml points at them.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$SITE/torch" "$VENV/libtorch"
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so* | head -n 1)
ln -sfn "$ORT_LIB" "$VENV/libonnxruntime.so"
echo "[setup] libtorch: $VENV/libtorch -> $SITE/torch"
echo "[setup] onnxruntime: $VENV/libonnxruntime.so -> $ORT_LIB"

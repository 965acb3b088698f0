#!/usr/bin/env bash
# Regenerates exporter/src/onnx.rs (prost types) from exporter/proto/onnx.proto.
# onnx.proto is a verbatim copy of the one shipped with the venv's `onnx` package; refresh it
# from .venv/lib/python3.*/site-packages/onnx/onnx.proto when upgrading ONNX.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo run --release --quiet --manifest-path "$here/gen/Cargo.toml" -- "$here/onnx.proto" "$here/../src/onnx.rs"
echo "wrote $(cd "$here/../src" && pwd)/onnx.rs"

#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone: sets up the venv (libtorch, onnxruntime
# and the Python reference tools), builds once in the release profile, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_ALLOW_FILE_STORE=true
# One profile for building and testing, so the heavy crates compile once.
cargo build --release --workspace --all-targets
cargo test --release --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

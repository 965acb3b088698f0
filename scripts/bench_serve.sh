#!/usr/bin/env bash
# Serving benchmark (not a test): `infer serve` on one model, single-image requests from the
# loadgen example at several concurrency levels, with dynamic batching on and off, next to
# offline `infer` at batch 64 on the same ONNX file and thread count.
#
#   scripts/bench_serve.sh [ARCH]
#
# ARCH: a torchvision architecture of the zoo (default resnet18), random weights (speed only).
# Environment: BENCH_THREADS (2: inference threads of the server and of offline infer),
# BENCH_SECONDS (10 per level), BENCH_CONCURRENCY ("1,16,64"), BENCH_BACKEND (ort),
# BENCH_MAX_BATCH (64), BENCH_MAX_DELAY_US (2000), BENCH_OUT (also write the report there).
# The load generator runs on the same machine, so it takes CPU from the server: on 2 cores
# that is part of what is measured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "bench_serve.sh: $PY is missing; run scripts/setup.sh first" >&2; exit 1; }
ARCH=${1:-resnet18}
THREADS=${BENCH_THREADS:-2}
SECONDS_PER_LEVEL=${BENCH_SECONDS:-10}
LEVELS=${BENCH_CONCURRENCY:-1,16,64}
BACKEND=${BENCH_BACKEND:-ort}
MAX_BATCH=${BENCH_MAX_BATCH:-64}
MAX_DELAY_US=${BENCH_MAX_DELAY_US:-2000}
log() { echo "bench: $*" >&2; }

log "building (release, workspace)"
cargo build --release -q --workspace --bins --examples
INFER="$ROOT/target/release/infer"
LOADGEN="$ROOT/target/release/examples/loadgen"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-serve.XXXXXX")
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log "writing a random-weight $ARCH checkpoint and exporting it"
"$PY" -W ignore scripts/bench_infer_python.py checkpoint --arch "$ARCH" --out "$WORK/ckpt"
ONNX="$WORK/$ARCH.onnx"
"$ROOT/target/release/exporter" --checkpoint "$WORK/ckpt" -o "$ONNX" --no-mlflow >&2
"$PY" -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("test.csv"))' \
    sample/digit-recognizer.zip "$WORK/test.csv"

log "offline: infer --batch-size 64 --threads $THREADS on the sample's 1000 images"
"$INFER" --model "$ONNX" "$WORK/test.csv" --backend "$BACKEND" --batch-size 64 --threads "$THREADS" \
    -o "$WORK/sub.csv" --timings "$WORK/offline.json" > /dev/null 2>&1
OFFLINE=$("$PY" -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["models"][0]["img_per_s"]))' "$WORK/offline.json")
log "offline batch 64: $OFFLINE img/s"

serve_and_load() {  # label, extra serve arguments...
    local label=$1; shift
    "$INFER" serve --model "$ONNX" --backend "$BACKEND" --threads "$THREADS" --addr 127.0.0.1:0 \
        --queue 4096 "$@" 2> "$WORK/serve.err" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 1 300); do
        addr=$(sed -n 's/^infer serve: listening on http:\/\///p' "$WORK/serve.err")
        [[ -n "$addr" ]] && break
        sleep 0.1
    done
    [[ -n "$addr" ]] || { cat "$WORK/serve.err" >&2; exit 1; }
    log "$label: server on $addr"
    "$LOADGEN" --url "http://$addr" --model "$ARCH" --concurrency "$LEVELS" --seconds "$SECONDS_PER_LEVEL" \
        --data "$WORK/test.csv" --label "$label" --json "$WORK/levels.jsonl" | tail -n +3 >> "$WORK/table.md"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
}

: > "$WORK/table.md"
serve_and_load "batching (max-batch $MAX_BATCH, max-delay ${MAX_DELAY_US} us)" \
    --max-batch "$MAX_BATCH" --max-delay-us "$MAX_DELAY_US"
serve_and_load "no batching (max-batch 1)" --max-batch 1 --max-delay-us 0

{
    echo "## Serving benchmark: $ARCH on $BACKEND, $THREADS inference threads, ${SECONDS_PER_LEVEL} s per level"
    echo
    echo "Offline \`infer --batch-size 64\`: $OFFLINE img/s."
    echo
    echo "| mode | concurrency | requests | errors | img/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    cat "$WORK/table.md"
    echo
    "$PY" - "$WORK/levels.jsonl" "$OFFLINE" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
offline = float(sys.argv[2])
best = max((r for r in rows if r["mode"].startswith("batching")), key=lambda r: r["concurrency"])
ratio = best["img_per_s"] / offline
print(f"Batching at concurrency {best['concurrency']}: {best['img_per_s']:.0f} img/s = {ratio:.0%} of offline batch 64 "
      f"(goal >= 60%: {'met' if ratio >= 0.6 else 'MISSED'}), p99 {best['p99_ms']:.1f} ms "
      f"(goal < 50 ms: {'met' if best['p99_ms'] < 50 else 'MISSED'}).")
PYEOF
} | tee "${BENCH_OUT:-/dev/null}"

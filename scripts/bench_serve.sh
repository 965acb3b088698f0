#!/usr/bin/env bash
# Serving benchmark (not a test): `infer serve` on one model at a time, single-image requests
# from the loadgen example at several concurrency levels, with adaptive batching (the
# default), the fixed window it replaced (`--batch-wait fixed`: the "before" figures) and no
# batching, next to offline `infer` at batch 64 and batch 1 on the same ONNX file and
# thread count, all in one run. Prints issue #18's goals against the figures:
#   concurrency 64: >= 90% of offline batch-64 img/s, p99 <= 2 x (batch-64 time + max delay);
#   concurrency 1:  p50 <= 1.5 x the batch-1 inference time.
#
#   scripts/bench_serve.sh [ARCHS]
#
# ARCHS: comma-separated zoo architectures (default resnet18,cnn_digits), random weights.
# Environment: BENCH_THREADS (2: inference threads of the server and of offline infer),
# BENCH_SECONDS (10 per level), BENCH_CONCURRENCY ("1,16,64"), BENCH_BACKEND (ort),
# BENCH_MAX_BATCH (64), BENCH_MAX_DELAY_US (2000), BENCH_MODES ("adaptive fixed none"),
# BENCH_OUT (also write the report there). The load generator runs on the same machine, so
# it takes CPU from the server: on 2 cores that is part of what is measured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "bench_serve.sh: $PY is missing; run scripts/setup.sh first" >&2; exit 1; }
IFS=, read -r -a ARCHS <<< "${1:-resnet18,cnn_digits}"
THREADS=${BENCH_THREADS:-2}
SECONDS_PER_LEVEL=${BENCH_SECONDS:-10}
LEVELS=${BENCH_CONCURRENCY:-1,16,64}
BACKEND=${BENCH_BACKEND:-ort}
MAX_BATCH=${BENCH_MAX_BATCH:-64}
MAX_DELAY_US=${BENCH_MAX_DELAY_US:-2000}
read -r -a MODES <<< "${BENCH_MODES:-adaptive fixed none}"
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
"$PY" -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("test.csv"))' \
    sample/digit-recognizer.zip "$WORK/test.csv"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

serve_and_load() {  # arch, label, extra serve arguments...
    local arch=$1 label=$2; shift 2
    "$INFER" serve --model "$WORK/$arch.onnx" --backend "$BACKEND" --threads "$THREADS" --addr 127.0.0.1:0 \
        --queue 4096 "$@" 2> "$WORK/serve.err" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 1 300); do
        addr=$(sed -n 's/^infer serve: listening on http:\/\///p' "$WORK/serve.err")
        [[ -n "$addr" ]] && break
        sleep 0.1
    done
    [[ -n "$addr" ]] || { cat "$WORK/serve.err" >&2; exit 1; }
    log "$arch $label: server on $addr"
    "$LOADGEN" --url "http://$addr" --model "$arch" --concurrency "$LEVELS" --seconds "$SECONDS_PER_LEVEL" \
        --data "$WORK/test.csv" --label "$label" --json "$WORK/levels-$arch.jsonl" | tail -n +3 >> "$WORK/table-$arch.md"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
}

for arch in "${ARCHS[@]}"; do
    log "$arch: a random-weight checkpoint, exported"
    "$PY" -W ignore scripts/bench_infer_python.py checkpoint --arch "$arch" --out "$WORK/ckpt-$arch"
    "$ROOT/target/release/exporter" --checkpoint "$WORK/ckpt-$arch" -o "$WORK/$arch.onnx" --no-mlflow >&2
    : > "$WORK/table-$arch.md"
    for mode in "${MODES[@]}"; do
        # Offline runs before every mode, so they see the load the server saw; the best is kept.
        for b in 64 1; do
            "$INFER" --model "$WORK/$arch.onnx" "$WORK/test.csv" --backend "$BACKEND" --batch-size "$b" \
                --threads "$THREADS" -o "$WORK/sub.csv" --timings "$WORK/offline-$arch-$b-$mode.json" > /dev/null 2>&1
        done
        case $mode in
            adaptive|fixed) serve_and_load "$arch" "batching, $mode (max-batch $MAX_BATCH, max-delay ${MAX_DELAY_US} us)" \
                --max-batch "$MAX_BATCH" --max-delay-us "$MAX_DELAY_US" --batch-wait "$mode" ;;
            none) serve_and_load "$arch" "no batching (max-batch 1)" --max-batch 1 --max-delay-us 0 ;;
            *) echo "bench_serve.sh: unknown mode $mode" >&2; exit 1 ;;
        esac
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

for arch in "${ARCHS[@]}"; do
    "$PY" - "$WORK" "$arch" "$BACKEND" "$THREADS" "$SECONDS_PER_LEVEL" "$MAX_DELAY_US" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PYEOF'
import glob, json, sys
work, arch, backend, threads, secs, delay_us, load_before, load_after = sys.argv[1:]
# The best offline run of those before each mode: the goals are measured against it.
runs = lambda b: [json.load(open(p))["models"][0] for p in glob.glob(f"{work}/offline-{arch}-{b}-*.json")]
off = {b: max(runs(b), key=lambda m: m["img_per_s"]) for b in (64, 1)}
print(f"## Serving benchmark: {arch} on {backend}, {threads} inference threads, {secs} s per level; "
      f"load average before {load_before}, after {load_after}\n")
print(f"Offline `infer` (best of {len(runs(64))}): batch 64 {off[64]['img_per_s']:.0f} img/s ({off[64]['p50_ms']:.2f} ms a batch), "
      f"batch 1 {off[1]['img_per_s']:.0f} img/s ({off[1]['p50_ms']:.2f} ms a batch).\n")
print("| mode | concurrency | requests | errors | img/s | p50 ms | p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(open(f"{work}/table-{arch}.md").read().rstrip())
print()
rows = [json.loads(l) for l in open(f"{work}/levels-{arch}.jsonl")]
p99_goal = 2 * (off[64]["p50_ms"] + float(delay_us) / 1000)
p50_goal = 1.5 * off[1]["p50_ms"]
for mode in sorted({r["mode"] for r in rows if r["mode"].startswith("batching")}):
    level = {r["concurrency"]: r for r in rows if r["mode"] == mode}
    if 64 in level:
        r = level[64]
        share = r["img_per_s"] / off[64]["img_per_s"]
        print(f"- {mode}, concurrency 64: {r['img_per_s']:.0f} img/s = {share:.0%} of offline batch 64 (goal >= 90%): "
              f"{'PASS' if share >= 0.9 else 'short of goal'}; p99 {r['p99_ms']:.1f} ms (goal <= {p99_goal:.1f}): "
              f"{'PASS' if r['p99_ms'] <= p99_goal else 'short of goal'}")
    if 1 in level:
        r = level[1]
        plain = [x for x in rows if x["mode"].startswith("no batching") and x["concurrency"] == 1]
        vs = f"; no batching's p50 {plain[0]['p50_ms']:.2f} ms" if plain else ""
        print(f"- {mode}, concurrency 1: p50 {r['p50_ms']:.2f} ms (goal <= 1.5 x batch 1 = {p50_goal:.2f}): "
              f"{'PASS' if r['p50_ms'] <= p50_goal else 'short of goal'}{vs}")
print()
PYEOF
done | tee "${BENCH_OUT:-/dev/null}"

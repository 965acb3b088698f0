#!/usr/bin/env bash
# Training speed on the CPU: our trainer (libtorch through the graph lowering) against
# PyTorch eager with torchvision's model, same batch, threads, steps and warm-up.
#
# Usage: scripts/bench_train.sh [ARCHS] [BATCH] [THREADS] [STEPS] [AUGMENT]
#   ARCHS   comma list (default resnet18,mobilenet_v2,squeezenet1_1,efficientnet_b0,m5)
#   BATCH   images per step (default 64); THREADS intra-op threads (default 2);
#   STEPS   timed Adam steps after 3 warm-up steps (default 30)
#   AUGMENT "0", "1" (random affine augmentation of every batch, both sides) or "both" (default:
#           both, with a column for our own with/without ratio)
# Environment: REPEATS rounds of (ours, PyTorch) back to back (default 3): the img/s columns are
# medians, "ours / PyTorch" the median of the rounds' ratios, steadier on a shared machine than
# a ratio of two single runs. GOAL (default 1.3, issue #18): each row's ratio is checked
# against it, one PASS/SHORT line per row under the table. DEVICE and AMP pass through to both.
# Prints a Markdown table. Not a test: numbers depend on the machine and its load.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=${1:-resnet18,mobilenet_v2,squeezenet1_1,efficientnet_b0,m5}
BATCH=${2:-64}
THREADS=${3:-2}
STEPS=${4:-30}
AUGMENT=${5:-both}
REPEATS=${REPEATS:-3}
GOAL=${GOAL:-1.3}
WARMUP=3
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: $PY missing; run scripts/setup.sh" >&2; exit 1; }

# .cargo/config.toml gives cargo LIBTORCH/ORT paths; the built example needs libtorch at run time.
cargo build --release -q -p trainer --example bench_train
BIN=target/release/examples/bench_train
export LD_LIBRARY_PATH="$PWD/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Both sides use exactly THREADS threads (no extra OpenMP/MKL pools).
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

echo "batch $BATCH, threads $THREADS, $STEPS steps after $WARMUP warm-up, $REPEATS rounds; load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
echo
case "$AUGMENT" in both) MODES="0 1" ;; 0|1) MODES=$AUGMENT ;; *) echo "error: AUGMENT must be 0, 1 or both" >&2; exit 1 ;; esac
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { printf "%.2f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "| arch | augment | ours img/s | PyTorch img/s | ours / PyTorch | ours augmented / plain | augmentation share of our step |"
echo "|---|---|---:|---:|---:|---:|---:|"
verdicts=()
IFS=',' read -ra LIST <<< "$ARCHS"
for arch in "${LIST[@]}"; do
  plain=""
  for aug in $MODES; do
    ours_all="" theirs_all="" ratios="" shares=""
    for _ in $(seq "$REPEATS"); do
      out=$("$BIN" "$arch" "$BATCH" "$THREADS" "$STEPS" "$WARMUP" "$aug")
      ours=$(awk '/^img\/s/ {print $2}' <<< "$out")
      shares="$shares $(awk '/^augmentation share/ {print $3 * 100}' <<< "$out")"
      theirs=$("$PY" scripts/bench_train_torch.py "$arch" "$BATCH" "$THREADS" "$STEPS" "$WARMUP" "$aug" | awk '/^img\/s/ {print $2}')
      ours_all="$ours_all $ours" theirs_all="$theirs_all $theirs"
      ratios="$ratios $(awk -v a="$ours" -v b="$theirs" 'BEGIN { print a / b }')"
    done
    ours=$(median <<< "$ours_all") theirs=$(median <<< "$theirs_all") ratio=$(median <<< "$ratios")
    share="-"
    [ -n "${shares// /}" ] && share="$(median <<< "$shares" | awk '{ printf "%.1f%%", $1 }')"
    keep="-"
    if [ "$aug" = 0 ]; then plain=$ours; elif [ -n "$plain" ]; then keep=$(awk -v a="$ours" -v b="$plain" 'BEGIN { printf "%.2f", a / b }'); fi
    augmented=$([ "$aug" = 1 ] && echo yes || echo no)
    echo "| $arch | $augmented | $ours | $theirs | $ratio | $keep | $share |"
    verdict=$(awk -v r="$ratio" -v g="$GOAL" 'BEGIN { print (r >= g ? "PASS" : "SHORT") }')
    verdicts+=("$verdict $arch (augment $augmented): ours / PyTorch $ratio, goal >= $GOAL (rounds:$ratios)")
  done
done
echo
printf '%s\n' "${verdicts[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# The GPU check (issue #16) as one command on a GPU host: environment and linking, the CUDA
# tests (parity with PyTorch on the same GPU included), a CUDA-trained checkpoint through the
# exporter's self-check, training speed against PyTorch eager, the GPU accuracy recipe with its
# submission, and inference timings. Sized for under 8 minutes on an H200. It appends to a
# Markdown report and a log under $OUT as it goes, so a timeout keeps what finished, and a
# failed section is reported and the next one still runs.
#
#   bash scripts/gpu_check.sh [DATA]
#
#   DATA       Kaggle's digit-recognizer.zip (default: the one in .gpu/bundle.tar.xz, else the sample)
# Environment:
#   OUT        report folder (default runs/gpu_check)
#   SECTIONS   comma list of env,tests,speed,accuracy,infer (default all); accuracy trains the
#              members twice: on the split (the estimate), then on every image (the submission)
#   MEMBERS    accuracy.sh members (default 8 x cnn_digits + 8 x resnet_digits, seeds 1-8)
#   EPOCHS     epochs per member (default 30, sized for a lent device's minutes, shorter than
#              the CPU recipe's 40); JOBS members trained at once (default: all)
#   STEPS      timed steps per speed measurement (default 50); SPEED_ARCHS (default
#              resnet18,cnn_digits), SPEED_BATCHES (default 64,512) and SPEED_AMP (default 0,1)
#              what is measured
#   PARITY_LIMIT  images of the resnet18 run that is exported and self-checked (default 4000)
#   DEVICE     cuda (default); cpu makes a dry run of the whole script on a CPU machine
#   PYTHON     python with torch (and onnxruntime): default .venv/bin/python, else python3
#
# On a host with this checkout built (scripts/setup.sh, cargo) it uses target/release. On a
# host without Rust, run scripts/gpu_pack.sh here first and bring .gpu/ along: the binaries are
# unpacked into target/release, and the host's own torch and onnxruntime are linked where the
# binaries look for them (.venv/libtorch, .venv/libonnxruntime.so).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-runs/gpu_check}
SECTIONS=${SECTIONS:-env,tests,speed,accuracy,infer}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-30}
STEPS=${STEPS:-50}
SPEED_ARCHS=${SPEED_ARCHS:-resnet18,cnn_digits}
SPEED_BATCHES=${SPEED_BATCHES:-64,512}
SPEED_AMP=${SPEED_AMP:-0,1}
PARITY_LIMIT=${PARITY_LIMIT:-4000}
MEMBERS=${MEMBERS:-$(for a in cnn_digits resnet_digits; do for s in 1 2 3 4 5 6 7 8; do printf '%s:%s,' "$a" "$s"; done; done)}
MEMBERS=${MEMBERS%,}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPORT=$OUT/gpu_report.md
LOG=$OUT/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
report() { printf '%s\n' "$@" >>"$REPORT"; }
elapsed() { echo "$(($(date +%s) - t0)) s"; }
want() { [[ ",$SECTIONS," == *",$1,"* ]]; }
section() { echo "== $1 ($(elapsed))"; report "" "## $1" ""; }
BIN=target/release

# --- binaries and libraries -------------------------------------------------------------------
if [ -f .gpu/bundle.tar.xz ]; then
  bundle=$(mktemp -d)
  tar -C "$bundle" -xJf .gpu/bundle.tar.xz
  mkdir -p "$BIN/examples" "$BIN/deps"
  cp "$bundle"/bin/{trainer,exporter,infer,xtask} "$BIN/"
  cp "$bundle/bin/bench_train" "$BIN/examples/"
  cp "$bundle/bin/cuda_tests" "$BIN/deps/cuda_tests"
  DATA=${1:-$bundle/data/digit-recognizer.zip}
  built_root=$(cat "$bundle/BUILD_ROOT")
  commit=$(tr '\n' ' ' <"$bundle/COMMIT")
  # The test binary opens files under the checkout it was built in.
  if [ "$built_root" != "$ROOT" ] && [ ! -e "$built_root" ]; then
    mkdir -p "$(dirname "$built_root")" && ln -s "$ROOT" "$built_root"
  fi
else
  DATA=${1:-sample/digit-recognizer.zip}
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
CUDA_TESTS=$(ls -t "$BIN"/deps/cuda_tests "$BIN"/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -1)
PY=${PYTHON:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
PY=$(command -v "$PY")
if [ ! -e .venv/libtorch ]; then
  # A bare GPU image: its python's torch and onnxruntime stand in for the project venv.
  mkdir -p .venv/bin
  [ -e .venv/bin/python ] || ln -s "$PY" .venv/bin/python
  ln -sfn "$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .venv/libtorch
  ort=$("$PY" -c 'import glob, os, onnxruntime as o
print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[0])' 2>/dev/null) &&
    ln -sfn "$ort" .venv/libonnxruntime.so
fi
# ONNX Runtime's CUDA provider needs the CUDA runtime libraries of torch's nvidia-* wheels;
# libtorch finds them by its own RUNPATH, the provider does not.
# (No empty element: an empty one would put the current folder on the search path.)
nv_libs=$(ls -d "$(readlink -f .venv/libtorch)"/../nvidia/*/lib 2>/dev/null | paste -sd:)
export LD_LIBRARY_PATH=$ROOT/.venv/libtorch/lib${nv_libs:+:$nv_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ORT_DYLIB_PATH=$ROOT/.venv/libonnxruntime.so MLFLOW_ALLOW_FILE_STORE=true MLFLOW_TRACKING_URI=$OUT/mlruns
unset CUDA_LAUNCH_BLOCKING

report "# GPU check" "" "commit $commit, device $DEVICE, data $DATA, started $(date -u +%FT%TZ)"

# --- 0. environment ---------------------------------------------------------------------------
if want env; then
  section "Environment"
  report '```'
  { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    "$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
    echo "trainer links:"; ldd "$BIN/trainer" | grep -E '^\s*(libtorch|libc10|libcudart|libcudnn)|not found'
    echo "libtorch_cuda needs, unresolved:"; ldd .venv/libtorch/lib/libtorch_cuda.so | grep 'not found' || echo "  none"
    readelf -d "$BIN/trainer" | grep -E 'NEEDED|RUNPATH' | grep -E 'torch|c10|RUNPATH'
    "$BIN/trainer" --help >/dev/null && echo "trainer starts"
  } 2>&1 | tee -a "$REPORT"
  report '```'
fi

# --- 1. CUDA tests and parity -----------------------------------------------------------------
if want tests; then
  section "CUDA tests (trainer/tests/cuda.rs) and parity"
  if [ "$DEVICE" = cuda ]; then
    # Includes 20 seed-recipe resnet18 steps against torchvision's on the same GPU (losses within
    # 1e-3 relative), every recipe with and without --amp, --device auto, a kill and --resume.
    "$CUDA_TESTS" --include-ignored --test-threads 1 --nocapture >"$OUT/cuda_tests.log" 2>&1
    rc=$?
    report '```' "$(grep -E '^test |test result|^step [0-9]+:|max\|diff\||panicked' "$OUT/cuda_tests.log")" '```' "exit $rc"
  else
    report "skipped on $DEVICE (the CUDA tests need a GPU)"
  fi
  # A checkpoint trained on the device, exported and self-checked on the CPU (tract and ORT).
  ck=$OUT/parity
  if "$BIN/trainer" --model resnet18 --epochs 1 --limit "$PARITY_LIMIT" --device "$DEVICE" --data "$DATA" \
      --output-dir "$ck/ckpts" --no-progress >"$ck.log" 2>&1 &&
    "$BIN/exporter" --checkpoint "$ck/ckpts/resnet18/best" -o "$ck/resnet18.onnx" >>"$ck.log" 2>&1; then
    report "resnet18 trained on $DEVICE, exported: $(grep -E '^self-check' "$ck.log" | tail -1)"
  else
    report "resnet18 train/export on $DEVICE FAILED:" '```' "$(tail -5 "$ck.log")" '```'
  fi
fi

# --- 2. training speed ------------------------------------------------------------------------
if want speed; then
  section "Training speed: ours vs PyTorch eager (img/s, $STEPS steps after 10 warm-up, loss read every step)"
  report "| arch | batch | amp | ours | PyTorch | ours / PyTorch |" "|---|---:|---|---:|---:|---:|"
  for arch in ${SPEED_ARCHS//,/ }; do
    for batch in ${SPEED_BATCHES//,/ }; do
      for amp in ${SPEED_AMP//,/ }; do
        ours=$(DEVICE=$DEVICE AMP=$amp "$BIN/examples/bench_train" "$arch" "$batch" 4 "$STEPS" 10 0 2>>"$LOG" | awk '/^img\/s/ {print $2}')
        theirs=$(DEVICE=$DEVICE AMP=$amp "$PY" scripts/bench_train_torch.py "$arch" "$batch" 4 "$STEPS" 10 0 2>>"$LOG" | awk '/^img\/s/ {print $2}')
        ratio=$(awk -v a="${ours:-0}" -v b="${theirs:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        report "| $arch | $batch | $([ "$amp" = 1 ] && echo bf16 || echo fp32) | ${ours:-failed} | ${theirs:-failed} | $ratio |"
      done
    done
  done
fi

# --- 3. accuracy recipe -----------------------------------------------------------------------
if want accuracy; then
  n=$(tr ',' '\n' <<<"$MEMBERS" | grep -c .)
  section "GPU accuracy recipe: $n members x $EPOCHS epochs, strong recipe, last epoch kept (--keep last)"
  report "Members $MEMBERS, trained side by side on one GPU; each member and the ensemble are judged" \
    "on the 8,402-image validation split (--split-seed 42) that no member trained on and nothing was chosen on."
  # The estimate: members trained on the split, scored on the images they did not see.
  acc=$OUT/accuracy
  if FULL=0 BUILD=0 OUT="$acc" SUBMISSION="$acc/split_submission.csv" JOBS=${JOBS:-$n} THREADS=1 \
      TRAIN_FLAGS="--device $DEVICE" bash scripts/accuracy.sh "$DATA" "$EPOCHS" "$MEMBERS" >"$OUT/accuracy.log" 2>&1; then
    report '```' "$(grep -E '^-- |ccuracy|== wrote|done after' "$OUT/accuracy.log")" '```'
  else
    report "accuracy recipe FAILED:" '```' "$(tail -15 "$OUT/accuracy.log")" '```'
  fi
  # The submission: the same recipe on all 42,000 labelled images (nothing left to score on);
  # xtask turns EPOCHS into the same number of optimiser steps over them (4/5 as many epochs).
  section "Submission: the same members trained on every labelled image (FULL=1, the same optimiser steps)"
  # (SUBMISSION before OUT: a prefix assignment sees the ones left of it.)
  if FULL=1 BUILD=0 SUBMISSION="$OUT/submission.csv" OUT="$OUT/full" JOBS=${JOBS:-$n} THREADS=1 \
      TRAIN_FLAGS="--device $DEVICE" bash scripts/accuracy.sh "$DATA" "$EPOCHS" "$MEMBERS" >"$OUT/full.log" 2>&1; then
    report '```' "$(grep -E '== wrote|done after' "$OUT/full.log")" '```'
  else
    report "full-data members FAILED:" '```' "$(tail -15 "$OUT/full.log")" '```'
  fi
fi

# --- 4. inference -----------------------------------------------------------------------------
if want infer; then
  section "Inference on test.csv (28,000 images): ms per batch"
  model=$(ls "$OUT"/accuracy/models/*.onnx "$OUT"/parity/*.onnx 2>/dev/null | head -1)
  report "model $(basename "${model:-none}")" "" "| backend | batch | mean ms | p50 ms | p99 ms | img/s |" "|---|---:|---:|---:|---:|---:|"
  backends="ort"
  [ "$DEVICE" = cuda ] && backends="ort ort-cuda"
  for backend in $backends; do
    for batch in 64 1024; do
      line=$("$BIN/infer" --model "$model" --backend "$backend" --batch-size "$batch" "$DATA" \
        -o "$OUT/infer_sub.csv" 2>"$OUT/infer_err.log" | awk 'NR > 1 && NF >= 7 { print $(NF-3), $(NF-2), $(NF-1), $NF; exit }')
      if [ -n "$line" ]; then
        read -r mean p50 p99 rate <<<"$line"
        report "| $backend | $batch | $mean | $p50 | $p99 | $rate |"
      else
        report "| $backend | $batch | failed: $(head -c 300 "$OUT/infer_err.log" | tr '\n' ' ') | | | |"
      fi
    done
  done
fi
report "" "finished in $(elapsed)"
echo "== done in $(elapsed): $REPORT"

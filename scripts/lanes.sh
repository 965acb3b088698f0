# Training lanes side by side, and the logging of one training, shared by scripts/accuracy.sh
# and scripts/results_table.sh (sourced, not run).
#
#   run_lanes LANES COUNT JOB CLAIMS
#
# Runs `JOB i lane` for every i in 0..COUNT-1, LANES at a time. A lane that finishes a job takes
# the next one no lane has taken yet (taking job i = creating the folder CLAIMS/i, which only one
# process can do), so lanes stay busy when jobs differ in cost. After a failed job no lane takes
# another; returns non-zero once all lanes have stopped if any job failed.
run_lanes() {
  local lanes=$1 count=$2 job=$3 claims=$4 k pid failed=0 pids=()
  rm -rf "$claims"
  mkdir -p "$claims"
  for (( k = 0; k < lanes; k++ )); do
    (
      for (( i = 0; i < count; i++ )); do
        [[ -e $claims/failed ]] && exit 1
        mkdir "$claims/$i" 2> /dev/null || continue
        "$job" "$i" "$k" || { touch "$claims/failed"; exit 1; }
      done
    ) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  rm -rf "$claims"
  return "$failed"
}

# logged NAME LOG CMD...: runs CMD with all its output in LOG; if it fails, says so with the
# end of LOG and returns non-zero.
logged() {
  local name=$1 log=$2
  shift 2
  "$@" > "$log" 2>&1 || { echo "error: $name failed; its log ends:" >&2; tail -20 "$log" >&2; return 1; }
}

# best_of LOG: the trainer's closing "best: epoch ... val_accuracy ..." line, less the path.
best_of() { sed -n 's/^best: \(.*\) -> .*/best \1/p' "$1"; }

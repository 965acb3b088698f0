#!/usr/bin/env bash
# One ensemble member: the container command of the training Indexed Job (deploy/k8s/train-job.yaml).
# JOB_COMPLETION_INDEX (set by Kubernetes) picks line INDEX+1 of MEMBERS_FILE: architecture and
# seed. Trains into the MLflow server of MLFLOW_TRACKING_URI, experiment EXPERIMENT, with
# checkpoints in CHECKPOINTS/member-INDEX (a persistent volume): when a rescheduled pod finds the
# member's last/ checkpoint there it continues that run with --resume instead of starting over
# (a finished run resumes to a no-op). When done it writes CHECKPOINTS/member-INDEX/done
# ("ARCHITECTURE SEED RUN_ID"), which register.sh waits for.
#
# Environment: DATA (Kaggle zip or folder), EPOCHS [1], RECIPE [seed], DEVICE [auto], THREADS
# (libtorch CPU threads, optional), TRAIN_FLAGS (extra flags of a fresh start only: --resume
# takes no training values, they come from the run's saved configuration).
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/bin/common.sh
. "$here/common.sh"
i=${JOB_COMPLETION_INDEX:?JOB_COMPLETION_INDEX is not set (an Indexed Job sets it)}
line=$(members | sed -n "$((i + 1))p")
[[ -n $line ]] || { echo "error: member $i: $MEMBERS_FILE has $(member_count) members" >&2; exit 2; }
read -r arch seed rest <<<"$line"
[[ -n ${seed:-} && -z ${rest:-} ]] || { echo "error: member $i: want 'ARCHITECTURE SEED', got '$line'" >&2; exit 2; }
dir=${CHECKPOINTS:?CHECKPOINTS must name the checkpoint volume}/member-$i
mkdir -p "$dir"
rm -f "$dir/done"
common=(--device "${DEVICE:-auto}" --no-progress)
[[ -z ${THREADS:-} ]] || common+=(--threads "$THREADS")
if [[ -f $dir/$arch/last/config.json ]]; then
  echo "member $i: $arch seed $seed: resuming $dir/$arch/last"
  trainer --resume "$dir/$arch/last" "${common[@]}"
else
  echo "member $i: $arch seed $seed: fresh start"
  # TRAIN_FLAGS is split on spaces on purpose: it holds several flags.
  # shellcheck disable=SC2086
  trainer --model "$arch" --seed "$seed" --recipe "${RECIPE:-seed}" --epochs "${EPOCHS:-1}" \
    --data "${DATA:?DATA must name the training data}" --experiment "${EXPERIMENT:-digits-ensemble}" \
    --output-dir "$dir" "${common[@]}" ${TRAIN_FLAGS:-}
fi
run=$(sed -n 's/.*"run_id": *"\([^"]*\)".*/\1/p' "$dir/$arch/best/config.json")
[[ -n $run ]] || { echo "error: member $i: no run_id in $dir/$arch/best/config.json" >&2; exit 1; }
# Written whole, then renamed: register.sh never reads half a line.
echo "$arch $seed $run" >"$dir/done.tmp"
mv "$dir/done.tmp" "$dir/done"
echo "member $i: done: $arch seed $seed run $run"

#!/usr/bin/env bash
# Export and registration: the container command of deploy/k8s/register-job.yaml.
# Waits (up to WAIT_SECONDS [86400]) until every member of MEMBERS_FILE has written
# CHECKPOINTS/member-i/done, then exports each member's run from the MLflow server of
# MLFLOW_TRACKING_URI (its checkpoint/ artifacts), registers it as a new version of
# MODEL_PREFIX-i [digits-i] and points ALIAS [champion] at it: the ensemble is the members'
# versions under that one alias, which serve.sh loads. DATA, if set, holds the exporter's
# self-check images (else it uses synthetic ones).
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/bin/common.sh
. "$here/common.sh"
: "${CHECKPOINTS:?CHECKPOINTS must name the checkpoint volume}" "${MLFLOW_TRACKING_URI:?}"
n=$(member_count)
deadline=$((SECONDS + ${WAIT_SECONDS:-86400}))
for ((i = 0; i < n; i++)); do
  until [[ -f $CHECKPOINTS/member-$i/done ]]; do
    ((SECONDS < deadline)) || { echo "error: member $i not done after ${WAIT_SECONDS:-86400} s" >&2; exit 1; }
    sleep "${POLL_SECONDS:-10}"
  done
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
check=()
[[ -z ${DATA:-} ]] || check=(--check-data "$DATA")
for ((i = 0; i < n; i++)); do
  read -r arch seed run <"$CHECKPOINTS/member-$i/done"
  name=$(member_model "$i")
  echo "register: member $i ($arch seed $seed, run $run) -> models:/$name@${ALIAS:-champion}"
  exporter --run "$run" -o "$out/member-$i.onnx" --register "$name" --alias "${ALIAS:-champion}" "${check[@]}"
done
echo "register: $n members under alias ${ALIAS:-champion}"

#!/usr/bin/env bash
# `infer serve` of the registered ensemble: the container command of deploy/k8s/serve.yaml and
# of the KServe InferenceService. Serves models:/MODEL_PREFIX-i@ALIAS for every member of
# MEMBERS_FILE (each under its registered name, plus `ensemble`, the majority vote), pulled from
# the registry of MLFLOW_TRACKING_URI into CACHE_DIR. The bearer token comes from
# INFER_SERVE_TOKEN (a Secret), never from an argument. Extra `infer serve` flags: SERVE_FLAGS.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/bin/common.sh
. "$here/common.sh"
: "${MLFLOW_TRACKING_URI:?}"
uris=$(for ((i = 0; i < $(member_count); i++)); do echo "models:/$(member_model "$i")@${ALIAS:-champion}"; done | paste -sd,)
echo "serve: $uris on ${ADDR:-0.0.0.0:8080}"
# SERVE_FLAGS is split on spaces on purpose: it holds several flags.
# shellcheck disable=SC2086
exec infer serve --ensemble "$uris" --addr "${ADDR:-0.0.0.0:8080}" --cache-dir "${CACHE_DIR:-/tmp/models}" ${SERVE_FLAGS:-}

# shellcheck shell=bash
# Shared by member.sh, register.sh and serve.sh (sourced): the ensemble's member list.
#
# MEMBERS_FILE holds one member per line, "ARCHITECTURE SEED" (blank lines and # comments
# ignored); line i+1 is completion index i of the training Job. The same file (the ConfigMap
# digits-ensemble, key members.txt) feeds the trainers, the registration and the server, so the
# three cannot disagree on who the members are.
: "${MEMBERS_FILE:?MEMBERS_FILE must name the member list (ARCHITECTURE SEED per line)}"

members() { grep -vE '^[[:space:]]*(#|$)' "$MEMBERS_FILE"; }
member_count() { members | wc -l; }
# The registered model of member i: one registered model per member (an alias points at one
# version, and `infer serve` needs distinct names), all moved together under one alias.
member_model() { echo "${MODEL_PREFIX:-digits}-$1"; }

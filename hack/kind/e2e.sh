#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite against the kind installation (`pytest e2e --platform=kind`).
# Brings the installation up first (hack/kind/up.sh) when it is not there, or when kind.env was
# written by an older up.sh. The tests read $UCIM_KIND_DIR/kind.env and run UCloud/Core's stand-in
# themselves (ucim/testing/kind_stack.py). Exits 0 with "skipped: ..." where Docker or kind is
# missing. Extra arguments go to pytest.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require_kind

if ! cluster_exists \
    || [[ $(docker inspect -f '{{.State.Running}}' "$frontend" 2>/dev/null) != true ]] \
    || ! grep -qx "UCIM_KIND_ENV_VERSION=$env_version" "$state/kind.env" 2>/dev/null; then
  bash "$repo/hack/kind/up.sh"
fi
# For the commands below, and for anyone reading the tests' environment.
set -a
# shellcheck disable=SC1091
source "$state/kind.env"
set +a
export UCIM_KIND_DIR=$state
cd "$repo"
status=0
python3 -m pytest e2e --platform=kind "$@" || status=$?
if ((status != 0)); then
  say "failed: the components' logs, events and resources follow"
  kubectl -n "$namespace" logs "deploy/$release-operator" --tail 100 || true
  kubectl -n "$namespace" logs "deploy/$release-gateway" --tail 100 || true
  docker logs --tail 100 "$frontend" || true
  kubectl -n "$namespace" get events --sort-by=.lastTimestamp || true
  kubectl -n "$namespace" get ucim -o yaml || true
fi
exit "$status"

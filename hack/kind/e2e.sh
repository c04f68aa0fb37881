#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite against the kind installation (`pytest e2e --platform=kind`).
# Brings the installation up first when it is not there. Exits 0 with "skipped: ..." where
# Docker or kind is missing. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_kind

if ! cluster_exists || [[ ! -s $state/kind.env ]] || ! docker inspect "$frontend" >/dev/null 2>&1; then
  bash "$repo/hack/kind/up.sh"
fi
# The e2e tier looks for helm on PATH (e2e/conftest.py).
helm=$(bash "$repo/hack/build-helm.sh")
PATH=$(dirname "$helm"):$PATH
set -a
# shellcheck disable=SC1091
source "$state/kind.env"
set +a
cd "$repo"
status=0
python3 -m pytest e2e --platform=kind "$@" || status=$?
if ((status != 0)); then
  say "failed: the components' logs, events and resources follow"
  kubectl -n "$namespace" logs deploy/ucim-operator --tail 100 || true
  kubectl -n "$namespace" logs deploy/ucim-gateway --tail 100 || true
  docker logs --tail 100 "$frontend" || true
  kubectl -n "$namespace" get events --sort-by=.lastTimestamp || true
  kubectl -n "$namespace" get ucim -o yaml || true
fi
exit "$status"

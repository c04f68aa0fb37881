#!/usr/bin/env bash
# Remove what hack/kind/up.sh made: the frontend and Core containers and the kind cluster.
# The state directory (keys, tokens) is kept unless --purge is given.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_kind
docker rm -f "$frontend" "$core" >/dev/null 2>&1 || true
if cluster_exists; then kind delete cluster --name "$cluster"; fi
[[ ${1:-} == --purge ]] && rm -rf "$state"
say "done"

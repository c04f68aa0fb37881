#!/usr/bin/env bash
# Remove what hack/kind/up.sh made: the frontend container and the kind cluster (and the Core
# stand-in container of earlier versions). The state directory (keys, tokens) is kept unless
# --purge is given; its kind.env goes, so hack/kind/e2e.sh brings the installation up again.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require_kind
docker rm -f "$frontend" "$legacy_core" >/dev/null 2>&1 || true
if cluster_exists; then kind delete cluster --name "$cluster"; fi
rm -f "$state/kind.env"
[[ ${1:-} == --purge ]] && rm -rf "$state"
say "done"

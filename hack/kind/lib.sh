# Shared by hack/kind/*.sh: names, the state directory, and the "can kind run here?" check.
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${UCIM_KIND_CLUSTER:-ucim}
namespace=${UCIM_KIND_NAMESPACE:-ucim}
state=${UCIM_KIND_DIR:-${UCIM_CACHE:-$HOME/.cache/ucim}/kind}
frontend=$cluster-frontend        # the Slurm frontend container, running ucim-bridge
core=$cluster-core                # the UCloud/Core stand-in container
tag=kind
# The kubectl the local platform builds, for machines without one on PATH.
PATH=$PATH:${UCIM_CACHE:-$HOME/.cache/ucim}/bin/current

say() { echo "$(basename "$0" .sh): $*"; }

# Exits 0 with a clear message where the kind path cannot run (no Docker engine, no kind): the
# make targets then succeed with nothing done, as on machines without Docker.
require_kind() {
  if ! command -v docker >/dev/null; then
    say "skipped: docker is not installed (the kind path needs Docker and kind)"; exit 0
  fi
  if ! docker info >/dev/null 2>&1; then
    say "skipped: no Docker engine is running (\`docker info\` failed); the kind path needs one"; exit 0
  fi
  if ! command -v kind >/dev/null; then
    say "skipped: kind is not installed (https://kind.sigs.k8s.io; \`go install sigs.k8s.io/kind@latest\`)"; exit 0
  fi
  command -v kubectl >/dev/null || { say "kubectl is missing (make platform-up builds one into \$UCIM_CACHE/bin/current)"; exit 1; }
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$cluster"; }

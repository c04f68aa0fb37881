# Shared by hack/kind/*.sh: names, ports, the state directory, and the "can kind run here?" check.
# shellcheck shell=bash disable=SC2034  # the names below are used by the scripts that source this file
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${UCIM_KIND_CLUSTER:-ucim}
namespace=${UCIM_KIND_NAMESPACE:-ucim}
release=ucim                      # the Helm release; its objects are named ucim-operator, ucim-gateway, ...
state=${UCIM_KIND_DIR:-${UCIM_CACHE:-$HOME/.cache/ucim}/kind}
frontend=$cluster-frontend        # the Slurm frontend container, running ucim-bridge
legacy_core=$cluster-core         # the Core stand-in container earlier versions of up.sh ran; removed when found
tag=kind
# The e2e tests run UCloud/Core's stand-in themselves, on this machine, at this port of the kind network's
# gateway address (see up.sh); the bridge's metrics are published on the host's loopback at the second one.
core_port=${UCIM_KIND_CORE_PORT:-18080}
bridge_metrics_port=${UCIM_KIND_BRIDGE_METRICS_PORT:-19102}
# What kind.env holds; hack/kind/e2e.sh runs up.sh again when an older up.sh wrote it.
# Keep equal to KIND_ENV_VERSION in ucim/testing/kind_stack.py.
env_version=2
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

# The IPv4 gateway of the docker network kind's nodes are on ("kind"): the address of this machine
# on that network, so what listens here on it is reachable from the node, its pods and the frontend
# container. Docker leaves IPAM's Gateway empty on some versions; the subnet's first address is it then.
kind_network_gateway() {
  local gateway subnet
  gateway=$(docker network inspect kind -f '{{range .IPAM.Config}}{{println .Gateway}}{{end}}' \
    | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n 1 || true)
  if [[ -z $gateway ]]; then
    subnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' \
      | grep -E '^[0-9]+(\.[0-9]+){3}/[0-9]+$' | head -n 1 || true)
    [[ -n $subnet ]] || return 1
    subnet=${subnet%/*}
    gateway=${subnet%.*}.$((${subnet##*.} + 1))
  fi
  echo "$gateway"
}

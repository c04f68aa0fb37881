#!/usr/bin/env bash
# `make kind-up`: a kind cluster with ucim installed from the Helm chart, and a Slurm frontend
# container running the bridge, wired together like a real site:
#
#   1. the kind cluster (hack/kind/kind-config.yaml), if it does not exist yet;
#   2. the images: operator, gateway (images/*.Dockerfile) and the Slurm frontend, loaded into kind;
#   3. UCloud/Core's key pair and the tokens, made once in $UCIM_KIND_DIR and kept;
#   4. `helm upgrade --install` of charts/ucim into a namespace that enforces Pod Security "restricted",
#      with Core's public key, the refresh token, and core.url = http://<kind network gateway>:18080;
#   5. the bridge's kubeconfig from its token Secret (deploy/frontend/make-bridge-kubeconfig.sh);
#   6. the frontend container (munge, slurmctld, slurmd, ucim-bridge), then `helm test`;
#   7. $UCIM_KIND_DIR/kind.env: where everything is, for the e2e tests (hack/kind/e2e.sh).
#
# UCloud/Core is not a container: the e2e tests run its stand-in in their own process
# (ucim/testing/kind_stack.py), with the private key and refresh token of step 3, listening on this
# machine at the kind network's gateway address, which is how the operator's pod reaches this machine.
# So nothing is reconfigured when the tests start, and between runs the operator just retries.
# Where the pods reach this machine at another address (Docker Desktop, a remote engine), set
# UCIM_KIND_CORE_HOST (what the operator calls) and UCIM_KIND_CORE_LISTEN_HOST (where the tests listen).
#
# Idempotent: running it again rebuilds the images and upgrades the release. It exits 0 with
# "skipped: ..." where Docker or kind is missing. hack/kind/down.sh removes everything.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require_kind

command -v openssl >/dev/null || { say "openssl is missing (it makes Core's key pair)"; exit 1; }
helm=$(bash "$repo/hack/build-helm.sh")
# The state directory holds an admin kubeconfig, keys and tokens: ours only.
umask 077
mkdir -p "$state"
chmod 0700 "$state"
# Written again at the end: a run that fails half-way leaves none, so hack/kind/e2e.sh runs this again.
rm -f "$state/kind.env"
start=$SECONDS

# Secrets of this test installation, made once and kept, so that re-runs and the e2e tests agree:
# Core's key pair (Core signs its JWTs with the private key, the gateway verifies them with the public
# one; core.pub is the base64 DER of ucloud_key.pub) and the refresh and ingress tokens.
[[ -s $state/core.key ]] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$state/core.key" 2>/dev/null
openssl pkey -in "$state/core.key" -pubout -outform DER | openssl base64 -A >"$state/core.pub"
for secret in ingress-token refresh-token; do
  # No trailing newline: the files go into the chart's Secret and the bridge's credentials as they are.
  [[ -s $state/$secret ]] || openssl rand -hex 32 | tr -d '\n' >"$state/$secret"
done

if cluster_exists; then
  say "cluster $cluster exists"
else
  say "creating the kind cluster $cluster"
  kind create cluster --name "$cluster" --config "$repo/hack/kind/kind-config.yaml" --wait 120s
fi
kubeconfig=$state/kubeconfig
kind get kubeconfig --name "$cluster" >"$kubeconfig"
export KUBECONFIG=$kubeconfig

say "building the images"
for image in operator gateway slurm-frontend; do
  docker build -q -f "$repo/images/$image.Dockerfile" -t "ucim-$image:$tag" "$repo" >/dev/null
done
kind load docker-image --name "$cluster" "ucim-operator:$tag" "ucim-gateway:$tag"
# Earlier versions ran Core's stand-in as a container; the tests run it themselves now.
docker rm -f "$legacy_core" >/dev/null 2>&1 || true

# Where the operator's pod finds UCloud/Core: this machine, at its address on the kind network.
core_host=${UCIM_KIND_CORE_HOST:-}
if [[ -z $core_host ]]; then
  core_host=$(kind_network_gateway) || { say "cannot tell the kind network's gateway (docker network inspect kind)"; exit 1; }
fi
core_listen_host=${UCIM_KIND_CORE_LISTEN_HOST:-$core_host}
core_url=http://$core_host:$core_port

say "installing the chart into namespace $namespace (Pod Security: restricted; Core at $core_url)"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$namespace" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null
"$helm" upgrade --install "$release" "$repo/charts/ucim" --namespace "$namespace" \
  -f "$repo/hack/kind/values.yaml" \
  --set-file core.publicKey="$state/core.pub" \
  --set core.url="$core_url" \
  --set-file core.refreshToken="$state/refresh-token" \
  --set-file ingressToken="$state/ingress-token" \
  --wait --timeout 5m

say "connecting the bridge"
for _ in $(seq 30); do
  [[ -n $(kubectl -n "$namespace" get secret "$release-bridge-token" -o jsonpath='{.data.token}' 2>/dev/null) ]] && break
  sleep 1
done
bash "$repo/deploy/frontend/make-bridge-kubeconfig.sh" -n "$namespace" -r "$release" \
  -s "https://$cluster-control-plane:6443" -o "$state/bridge.kubeconfig" >/dev/null
docker rm -f "$frontend" >/dev/null 2>&1 || true
# The bridge's metrics are published on the host's loopback, for the e2e tests' Prometheus.
docker run -d --name "$frontend" --hostname "$frontend" --network kind \
  -p "127.0.0.1:$bridge_metrics_port:9102" \
  -v "$state/bridge.kubeconfig:/etc/ucim/kubeconfig:ro" -v "$state/ingress-token:/etc/ucim/ingress-token:ro" \
  -e UCIM_BRIDGE_CLUSTER=kind-frontend -e UCIM_BRIDGE_NAMESPACE="$namespace" -e UCIM_BRIDGE_LOG_LEVEL=DEBUG \
  "ucim-slurm-frontend:$tag" >/dev/null
ready=""
for _ in $(seq 60); do
  if docker exec "$frontend" python3 -c \
      'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9102/readyz", timeout=2)' 2>/dev/null; then
    ready=yes; break
  fi
  sleep 1
done
[[ -n $ready ]] || { docker logs --tail 50 "$frontend"; say "the bridge did not become ready"; exit 1; }

"$helm" test "$release" --namespace "$namespace" --timeout 2m

# What the e2e tests read (ucim/testing/kind_stack.py parses it; KIND_ENV_VERSION there = env_version):
# KEY=value lines only, values shell-quoted, so `set -a; source kind.env; set +a` works too.
frontend_ip=$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$frontend")
printf '%s=%q\n' \
  UCIM_KIND_ENV_VERSION "$env_version" \
  KUBECONFIG "$kubeconfig" \
  UCIM_KIND_KUBECTL "$(command -v kubectl)" \
  UCIM_KIND_CLUSTER "$cluster" \
  UCIM_KIND_NAMESPACE "$namespace" \
  UCIM_KIND_RELEASE "$release" \
  UCIM_KIND_GATEWAY_URL "http://127.0.0.1:18889" \
  UCIM_KIND_BRIDGE_METRICS "127.0.0.1:$bridge_metrics_port" \
  UCIM_KIND_FRONTEND_CONTAINER "$frontend" \
  UCIM_KIND_FRONTEND_IP "$frontend_ip" \
  UCIM_KIND_CORE_LISTEN "$core_listen_host:$core_port" \
  UCIM_KIND_CORE_URL "$core_url" \
  UCIM_KIND_CORE_PRIVATE_KEY "$state/core.key" \
  UCIM_KIND_CORE_REFRESH_TOKEN_FILE "$state/refresh-token" \
  UCIM_KIND_INGRESS_TOKEN_FILE "$state/ingress-token" >"$state/kind.env.partial"
mv "$state/kind.env.partial" "$state/kind.env"
say "ready in $((SECONDS - start)) s: set -a; source $state/kind.env; set +a; kubectl -n $namespace get ucim"
say "Core is not running: \`make e2e-kind\` runs its stand-in; by hand: python3 -m ucim.testing.core_standin" \
  "--host $core_listen_host --port $core_port --provider-id ucim --refresh-token \"\$(cat $state/refresh-token)\"" \
  "--private-key $state/core.key --provider-url http://127.0.0.1:18889"

#!/usr/bin/env bash
# `make kind-up`: a kind cluster with ucim installed from the Helm chart, and a Slurm frontend
# container running the bridge, wired together like a real site:
#
#   1. the kind cluster (hack/kind/kind-config.yaml), if it does not exist yet;
#   2. the images: operator, gateway (images/*.Dockerfile) and the Slurm frontend, loaded into kind;
#   3. a UCloud/Core stand-in container (its key pair and the tokens live in $UCIM_KIND_DIR);
#   4. `helm upgrade --install` of charts/ucim into a namespace that enforces Pod Security "restricted";
#   5. the bridge's kubeconfig from its token Secret (deploy/frontend/make-bridge-kubeconfig.sh);
#   6. the frontend container (munge, slurmctld, slurmd, ucim-bridge), then `helm test`.
#
# Idempotent: running it again rebuilds the images and upgrades the release. It exits 0 with
# "skipped: ..." where Docker or kind is missing. hack/kind/down.sh removes everything.
# $UCIM_KIND_DIR/kind.env tells the e2e tests (hack/kind/e2e.sh) where everything is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_kind

helm=$(bash "$repo/hack/build-helm.sh")
# The state directory holds an admin kubeconfig, keys and tokens: ours only.
umask 077
mkdir -p "$state"
chmod 0700 "$state"
start=$SECONDS

# Secrets of this test installation, made once and kept, so that re-runs agree.
for secret in ingress-token refresh-token; do
  # No trailing newline: the files go into the chart's Secret and the bridge's credentials as they are.
  [[ -s $state/$secret ]] || python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' >"$state/$secret"
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

say "starting the UCloud/Core stand-in ($core)"
docker rm -f "$core" >/dev/null 2>&1 || true
# As the calling user, so that the e2e tests can read the key it writes into the state directory.
docker run -d --name "$core" --network kind -p 127.0.0.1:18080:8080 -e UCIM_FRONTEND_SLURM=0 \
  --user "$(id -u):$(id -g)" -v "$state:/state" "ucim-slurm-frontend:$tag" \
  python -m ucim.testing.core_standin --host 0.0.0.0 --port 8080 --provider-id ucim \
    --refresh-token "$(cat "$state/refresh-token")" --private-key /state/core.key \
    --write-public-key /state/core.pub --provider-url "http://$cluster-control-plane:30889" >/dev/null
for _ in $(seq 60); do [[ -s $state/core.pub ]] && break; sleep 0.5; done
[[ -s $state/core.pub ]] || { docker logs "$core"; say "the Core stand-in did not start"; exit 1; }
core_ip=$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$core")

say "installing the chart into namespace $namespace (Pod Security: restricted)"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$namespace" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null
"$helm" upgrade --install ucim "$repo/charts/ucim" --namespace "$namespace" \
  -f "$repo/hack/kind/values.yaml" \
  --set-file core.publicKey="$state/core.pub" \
  --set core.url="http://$core_ip:8080" \
  --set-file core.refreshToken="$state/refresh-token" \
  --set-file ingressToken="$state/ingress-token" \
  --wait --timeout 5m

say "connecting the bridge"
for _ in $(seq 30); do
  [[ -n $(kubectl -n "$namespace" get secret ucim-bridge-token -o jsonpath='{.data.token}' 2>/dev/null) ]] && break
  sleep 1
done
bash "$repo/deploy/frontend/make-bridge-kubeconfig.sh" -n "$namespace" -r ucim \
  -s "https://$cluster-control-plane:6443" -o "$state/bridge.kubeconfig" >/dev/null
docker rm -f "$frontend" >/dev/null 2>&1 || true
docker run -d --name "$frontend" --hostname "$frontend" --network kind \
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

"$helm" test ucim --namespace "$namespace" --timeout 2m

frontend_ip=$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$frontend")
cat >"$state/kind.env" <<ENV
KUBECONFIG=$kubeconfig
UCIM_KIND_CLUSTER=$cluster
UCIM_KIND_NAMESPACE=$namespace
UCIM_KIND_GATEWAY_URL=http://127.0.0.1:18889
UCIM_KIND_CORE_URL=http://127.0.0.1:18080
UCIM_KIND_CORE_PRIVATE_KEY=$state/core.key
UCIM_KIND_FRONTEND_CONTAINER=$frontend
UCIM_KIND_FRONTEND_IP=$frontend_ip
ENV
say "ready in $((SECONDS - start)) s: source <(sed 's/^/export /' $state/kind.env); kubectl -n $namespace get ucim"

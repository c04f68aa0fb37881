#!/usr/bin/env bash
# Build (or reuse) the helm v3 client from the pinned Go module in hack/helm.
# helm has no Debian package; the binary is cached per version in
# $UCIM_CACHE/bin/helm-<version>/helm and linked as $UCIM_CACHE/bin/helm, so a
# warm machine skips the build entirely (a cold build takes ~2 min on 2 cores).
# Prints nothing but progress on stderr; the last line on stdout is the binary's path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mod="$here/helm"
cache=${UCIM_CACHE:-$HOME/.cache/ucim}
version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$mod/go.mod")
out="$cache/bin/helm-$version"

if [[ -x "$out/helm" ]]; then
  echo "build-helm: helm $version cached" >&2
else
  if ! command -v go >/dev/null; then
    if [[ -x /usr/local/go/bin/go ]]; then
      PATH=$PATH:/usr/local/go/bin
    else
      echo "build-helm: the Go toolchain is missing (install Go >= $(awk '$1=="go"{print $2}' "$mod/go.mod"))" >&2
      exit 1
    fi
  fi
  # helm stamps its own version, and the Kubernetes version its lint and template
  # commands assume, at link time (as helm's Makefile does): client-go v0.X.Y is Kubernetes 1.X.
  client_go=$(cd "$mod" && GOTOOLCHAIN=local go list -m -f '{{.Version}}' k8s.io/client-go)
  k8s_minor=$(cut -d. -f2 <<<"$client_go")
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
  done
  echo "build-helm: building helm $version (a cold build takes ~2 min on 2 cores)..." >&2
  start=$SECONDS
  mkdir -p "$out"
  (cd "$mod" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
      -o "$out/helm.partial" helm.sh/helm/v3/cmd/helm)
  mv "$out/helm.partial" "$out/helm"
  echo "build-helm: helm $version built in $((SECONDS - start)) s" >&2
fi
ln -sfn "$out/helm" "$cache/bin/helm"
echo "$cache/bin/helm"

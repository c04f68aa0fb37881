#!/usr/bin/env bash
# Build (or reuse) kube-apiserver, kube-controller-manager, kubectl and etcd
# from the pinned Go module in hack/k8s. Binaries are cached per version in
# $UCIM_CACHE/bin/<version>/, so a warm machine skips the build entirely.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mod="$here/k8s"
cache=${UCIM_CACHE:-$HOME/.cache/ucim}
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$mod/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$mod/go.mod")
out="$cache/bin/k8s-$k8s_version-etcd-$etcd_version"
minor=${k8s_version#v1.}; minor=${minor%%.*}

# Go is only needed when something must be built; a warm cache runs without it.
# /usr/local/go/bin is where the machine's Go lives, and not every shell has it in PATH.
require_go() {
  command -v go >/dev/null && return
  [[ -x /usr/local/go/bin/go ]] && { PATH=$PATH:/usr/local/go/bin; return; }
  echo "build-k8s: the Go toolchain is missing (install Go >= $(awk '$1=="go"{print $2}' "$mod/go.mod"))" >&2
  exit 1
}

declare -A pkgs=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [etcd]=go.etcd.io/etcd/server/v3
)
order=(etcd kubectl kube-controller-manager kube-apiserver)

# The version is stamped in, or the servers report v0.0.0-master.
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean"
done

mkdir -p "$out"
n=0
for name in "${order[@]}"; do
  n=$((n + 1))
  if [[ -x "$out/$name" ]]; then
    echo "build-k8s: [$n/${#order[@]}] $name $k8s_version cached"
    continue
  fi
  require_go
  echo "build-k8s: [$n/${#order[@]}] building $name (a cold build of kube-apiserver takes ~3 min on 2 cores)..."
  start=$SECONDS
  (cd "$mod" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
      -o "$out/$name.partial" "${pkgs[$name]}") &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && echo "build-k8s:        ... $name still building ($((SECONDS - start)) s)"
  done
  wait "$pid"
  mv "$out/$name.partial" "$out/$name"
  echo "build-k8s:        $name built in $((SECONDS - start)) s"
done
ln -sfn "$out" "$cache/bin/current"
echo "build-k8s: binaries in $out"

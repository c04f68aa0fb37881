#!/usr/bin/env bash
# Write a kubeconfig for the slurm_bridge's identity (the chart's bridge ServiceAccount), for
# /etc/ucim/kubeconfig on the frontend. Run where kubectl reaches the management cluster:
#
#   deploy/frontend/make-bridge-kubeconfig.sh [-n NAMESPACE] [-r RELEASE] [-s SERVER] [-o FILE]
#
# The token comes from the chart's `kubernetes.io/service-account-token` Secret
# (<release>-ucim-bridge-token; bridge.tokenSecret=true, the default); with --duration it is a
# short-lived token from `kubectl create token` instead (renew it before it expires).
set -euo pipefail

namespace=ucim release=ucim server="" out=bridge.kubeconfig duration=""
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while getopts "n:r:s:o:d:h" opt; do
  case $opt in
    n) namespace=$OPTARG ;;
    r) release=$OPTARG ;;
    s) server=$OPTARG ;;  # the apiserver URL as the frontend reaches it (default: kubectl's current)
    o) out=$OPTARG ;;
    d) duration=$OPTARG ;;
    h) usage 0 ;;
    *) usage 1 ;;
  esac
done

account="$release-ucim-bridge"
[[ $release == *ucim* ]] && account="$release-bridge"   # the chart's fullname rule
secret="$account-token"
[[ -n $server ]] || server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z $duration ]]; then
  kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$tmp/ca.crt"
  token=$(kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
else
  kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
    | base64 -d >"$tmp/ca.crt"
  token=$(kubectl -n "$namespace" create token "$account" --duration="$duration")
fi
if [[ -z $token || ! -s $tmp/ca.crt ]]; then
  echo "make-bridge-kubeconfig: no token or CA in secret $namespace/$secret (is the release installed?)" >&2
  exit 1
fi

umask 077
k=(kubectl config --kubeconfig="$out")
"${k[@]}" set-cluster ucim --server="$server" --certificate-authority="$tmp/ca.crt" --embed-certs=true >/dev/null
"${k[@]}" set-credentials ucim-bridge --token="$token" >/dev/null
"${k[@]}" set-context ucim --cluster=ucim --user=ucim-bridge --namespace="$namespace" >/dev/null
"${k[@]}" use-context ucim >/dev/null
echo "make-bridge-kubeconfig: wrote $out for $namespace/$account at $server"
echo "  on the frontend: install -m 0600 -o root $out /etc/ucim/kubeconfig && systemctl restart ucim-bridge"

#!/usr/bin/env bash
# Install the Debian packages the local platform (hack/local_platform.py) needs:
# Slurm 22.05 (controller, node daemon, client, accounting daemon), munge,
# MariaDB for slurmdbd, openssl for the Kubernetes PKI, nginx as the file
# benchmark's baseline proxy (bench/bench_files.py runs its own nginx process with its
# own config; the system service is never started), Lmod, the module system of the
# platform's jobs (its /etc/profile.d/lmod.sh defines `module` in every login shell), and
# what the catalogue's interactive test applications run (ucim/testing/apps): Debian's
# python3-aiohttp for web-echo (jobs run Debian's python3 as alice or bob, who cannot read
# root's virtualenv), TigerVNC (Xtigervnc; vncpasswd is in tigervnc-tools) and websockify
# for desktop-vnc, and chromium, the headless browser of the tests (ucim/testing/browser.py).
#
# Warm runs are ~0 s: when every package is already installed, neither
# `apt-get update` nor `apt-get install` runs. Debian's policy-rc.d on these
# machines keeps the packages from starting services; local_platform.py starts the
# daemons itself, as plain processes under its run directory.
set -euo pipefail

pkgs=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openssl prometheus shellcheck nginx lmod
  python3-aiohttp tigervnc-standalone-server tigervnc-tools websockify chromium)

missing=()
for p in "${pkgs[@]}"; do
  # dpkg-query exits 0 for removed-but-configured packages too, so read the status.
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all present (${pkgs[*]})"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing ${missing[*]}; run this script as root" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done in $((SECONDS - start)) s"

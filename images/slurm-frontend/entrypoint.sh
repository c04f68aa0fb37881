#!/usr/bin/env bash
# Start munge, slurmctld and slurmd, wait for an idle node, then run the command (ucim-bridge by
# default) in the foreground. Other commands (the Core stand-in) skip Slurm: UCIM_FRONTEND_SLURM=0.
set -euo pipefail

if [[ ${UCIM_FRONTEND_SLURM:-1} == 1 ]]; then
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- munged
  install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  install -d /var/spool/slurmd
  slurmctld
  slurmd -N localhost
  for _ in $(seq 60); do
    [[ $(sinfo -h -n localhost -o %T 2>/dev/null) == idle ]] && break
    sleep 0.5
  done
  echo "ucim-frontend: Slurm is $(sinfo -h -n localhost -o %T)"
  # The bridge publishes this URL in each UserInstance's status: the pods reach us by IP.
  export UCIM_BRIDGE_INGRESS_PUBLIC_URL=${UCIM_BRIDGE_INGRESS_PUBLIC_URL:-http://$(hostname -i | awk '{print $1}'):8890}
fi
exec "$@"

# syntax=docker/dockerfile:1
# A single-node Slurm "HPC frontend" for the kind path (hack/kind/up.sh): munge, slurmctld and
# slurmd (Debian 12's Slurm 22.05), the test users alice and bob, and ucim installed in /opt/ucim,
# running ucim-bridge as root exactly as the systemd unit does on a real frontend. The same image
# also runs the UCloud/Core stand-in (python -m ucim.testing.core_standin) for the e2e tests.
#
#   docker build -f images/slurm-frontend.Dockerfile -t ucim-slurm-frontend .   (repository root)
#
# Not for production: a real frontend installs ucim with pip and systemd (docs/install.md).
FROM debian:bookworm-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ucim
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/ucim/bin/pip install -r /tmp/requirements.txt
COPY ucim ucim
COPY common common
COPY gateway gateway
COPY operator operator
COPY slurm_bridge slurm_bridge
COPY user_sidecar user_sidecar
RUN /opt/ucim/bin/pip install --no-deps . \
 && /opt/ucim/bin/pip uninstall -y pip setuptools wheel \
 && /opt/ucim/bin/python -m compileall -q /opt/ucim/lib

FROM debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      python3 slurmctld slurmd slurm-client munge ca-certificates procps >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# The user instances run ucim's code as their users: /opt/ucim must be world-readable.
COPY --from=build /opt/ucim /opt/ucim
RUN chmod -R a+rX /opt/ucim
# The test users, as on the local platform: private homes, one shared project group.
RUN groupadd -g 2000 ucimproj \
 && useradd -m -u 2001 -g ucimproj -s /bin/bash alice \
 && useradd -m -u 2002 -g ucimproj -s /bin/bash bob \
 && chmod 0700 /home/alice /home/bob
COPY images/slurm-frontend/slurm.conf /etc/slurm/slurm.conf
COPY images/slurm-frontend/entrypoint.sh /usr/local/bin/ucim-frontend
ENV PATH=/opt/ucim/bin:$PATH PYTHONUNBUFFERED=1 SLURM_CONF=/etc/slurm/slurm.conf \
    UCIM_BRIDGE_KUBECONFIG=/etc/ucim/kubeconfig \
    UCIM_BRIDGE_INGRESS_TOKEN_FILE=/etc/ucim/ingress-token \
    UCIM_BRIDGE_INGRESS_HOST=0.0.0.0 \
    UCIM_BRIDGE_METRICS_HOST=0.0.0.0 \
    UCIM_BRIDGE_MAPPING__MIN_UID=2000
EXPOSE 8890 9102
ENTRYPOINT ["/usr/local/bin/ucim-frontend"]
CMD ["ucim-bridge"]

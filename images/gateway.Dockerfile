# syntax=docker/dockerfile:1
# The ucim gateway (UCloud/Core's entry point: JWT verification, jobs, routing), for the Helm chart.
#
#   docker build -f images/gateway.Dockerfile -t ucim-gateway .     (from the repository root)
#
# Two stages: the first builds ucim and its dependencies into a virtualenv at /opt/ucim; the
# second is a clean slim Python with only that virtualenv (no pip, no compilers, no sources),
# running as a numeric non-root user so that Pod Security "restricted" admits it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/ucim
WORKDIR /src
# Dependencies first (a layer that changes only with pyproject.toml)...
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt
RUN /opt/ucim/bin/pip install -r /tmp/requirements.txt
# ...then ucim itself. The component folders sit at the top of the repository and are reached
# through the symlinks in ucim/, so both are copied.
COPY ucim ucim
COPY common common
COPY gateway gateway
COPY operator operator
COPY slurm_bridge slurm_bridge
COPY user_sidecar user_sidecar
RUN /opt/ucim/bin/pip install --no-deps . \
 && /opt/ucim/bin/pip uninstall -y pip setuptools wheel \
 && /opt/ucim/bin/python -m compileall -q /opt/ucim/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ucim-gateway" \
      org.opencontainers.image.description="ucim gateway: the provider API UCloud/Core calls" \
      org.opencontainers.image.source="https://github.com/ucim/ucim" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ucim /opt/ucim
# The root filesystem is read-only in the pod: no bytecode writes, logs straight to stdout.
ENV PATH=/opt/ucim/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UCIM_GATEWAY_HOST=0.0.0.0
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8889
ENTRYPOINT ["ucim-gateway"]

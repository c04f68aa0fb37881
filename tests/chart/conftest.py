"""Fixtures of the chart tests: helm, promtool, and a restricted namespace on the local platform.

Rendering, lint and rule tests need no cluster. The tests that take ``platform`` (server-side
validation, ``helm install``) run against the real local platform's apiserver, like the
integration tier.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.chart.helm import MONITORING_CRDS, Helm, helm_binary
from tests.support.platform import Platform

MONITORING_CRD_NAMES = (
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
    "scrapeconfigs.monitoring.coreos.com",
)


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm for rendering and linting (no cluster)."""
    return Helm(helm_binary(), env={})


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed: `apt-get install -y --no-install-recommends prometheus` provides it")
    return path


@pytest.fixture(scope="session")
def cluster_helm(platform: Platform) -> Helm:
    """helm pointed at the local platform as its admin."""
    return Helm(helm_binary(), env={"KUBECONFIG": platform.kubeconfig})


@pytest.fixture(scope="session")
def monitoring_crds(platform: Platform) -> Iterator[None]:
    """Our minimal stand-ins for the prometheus-operator CRDs, so their objects can be validated.

    Created when missing and removed again at the end, but only if this session created them
    (another session, or a real prometheus-operator, may own them).
    """
    missing = [name for name in MONITORING_CRD_NAMES if platform.kubectl("get", "crd", name, check=False).returncode]
    if missing:
        platform.kubectl("apply", "-f", str(MONITORING_CRDS))
        platform.kubectl("wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{n}" for n in missing))
    yield
    if missing:
        platform.kubectl("delete", "crd", *missing, "--wait=false", check=False)


@pytest.fixture
def restricted_namespace(platform: Platform) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted", deleted after the test."""
    name = f"ucim-chart-{uuid.uuid4().hex[:8]}"
    platform.kubectl("create", "namespace", name)
    platform.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/audit=restricted",
    )
    yield name
    platform.kubectl("delete", "namespace", name, "--wait=false", check=False)

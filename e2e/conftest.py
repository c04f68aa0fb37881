"""End-to-end tier: the same tests on the local platform or on a kind cluster.

``--platform=local`` (default) runs every component as a local process against
the real local platform; ``--platform=kind`` runs them from the Helm chart in a
kind cluster, which needs Docker and kind and is skipped cleanly without them.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def kind_unavailable_reason() -> str | None:
    """Why the kind path cannot run here, or None when it can."""
    for tool in ("docker", "kind", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    engine = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False, timeout=30)
    if engine.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
    if config.getoption("--platform") != "kind":
        return
    reason = kind_unavailable_reason()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"kind e2e skipped: {reason}; run `make kind-up e2e-kind` where Docker works")
        for item in items:
            if "e2e" in item.path.parts:
                item.add_marker(skip)

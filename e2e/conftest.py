"""End-to-end tier: the same tests on the local platform or on a kind cluster.

``--platform=local`` (default) runs every component as a local process against
the real local platform; ``--platform=kind`` runs them from the Helm chart in a
kind cluster, which needs Docker and kind and is skipped cleanly without them.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Generator

import pytest

from tests.support.platform import Platform
from ucim.testing.stack import Stack, running_stack


def kind_unavailable_reason() -> str | None:
    """Why the kind path cannot run here, or None when it can."""
    for tool in ("docker", "kind", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    engine = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False, timeout=30)
    if engine.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


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


@pytest.fixture
async def stack(platform: Platform, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    if request.config.getoption("--platform") != "local":
        pytest.skip("the job-path e2e runs the components as local processes")
    namespace = f"ucim-e2e-{uuid.uuid4().hex[:6]}"
    platform.kubectl("create", "namespace", namespace)
    try:
        async with running_stack(platform.env, namespace) as running:
            yield running
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                # What a person would look at first: the components' logs, the events, the resources.
                print(running.logs())
                print(platform.kubectl("get", "events", "-n", namespace, check=False).stdout)
                print(platform.kubectl("get", "ucj,ui", "-n", namespace, "-o", "yaml", check=False).stdout)
    finally:
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

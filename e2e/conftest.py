"""End-to-end tier: the same tests on the local platform or on a kind cluster.

``--platform=local`` (default) runs every component as a local process against
the real local platform (``running_stack``); ``--platform=kind`` runs the tests
against the Helm release in the kind cluster that ``hack/kind/up.sh`` made
(``kind_stack``), which needs Docker and kind and is skipped cleanly without them.
Either way the tests get a ``Stack``: Core's stand-in, the namespace, kubectl, and
the frontend (this machine, or the Slurm frontend container through ``docker exec``).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Generator

import pytest

from tests.support.platform import Platform
from ucim.testing.kind_stack import KindSetupError, kind_stack, load_kind_env
from ucim.testing.stack import Stack, running_stack


def kind_unavailable_reason() -> str | None:
    """Why the kind path cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    engine = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False, timeout=30)
    if engine.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    if shutil.which("kind") is None:
        return "kind is not installed"
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
    e2e = [item for item in items if "e2e" in item.path.parts]
    for item in e2e:
        item.add_marker(pytest.mark.e2e)
    if config.getoption("--platform") != "kind" or not e2e:
        return
    reason = kind_unavailable_reason()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"kind e2e skipped: {reason}; run `make kind-up e2e-kind` where Docker works")
        for item in e2e:
            item.add_marker(skip)
        return
    # Docker and kind work here: a missing installation is a mistake to report, not a reason to skip.
    try:
        load_kind_env()
    except KindSetupError as error:
        raise pytest.UsageError(f"--platform=kind: {error}") from error
    local_only = pytest.mark.skip(reason="runs the components as local processes: --platform=local only")
    for item in e2e:
        if item.get_closest_marker("local_platform") is not None:
            item.add_marker(local_only)


@pytest.fixture
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """A running ucim and Core's stand-in: local processes in a fresh namespace, or the kind release."""
    if request.config.getoption("--platform") == "kind":
        async with kind_stack() as running:
            yield running
            _dump_on_failure(request, running)
        return
    platform: Platform = request.getfixturevalue("platform")
    namespace = f"ucim-e2e-{uuid.uuid4().hex[:6]}"
    platform.kubectl("create", "namespace", namespace)
    try:
        marker = request.node.get_closest_marker("stack_settings")
        settings = marker.args[0] if marker is not None else None
        async with running_stack(platform.env, namespace, settings) as running:
            yield running
            _dump_on_failure(request, running)
    finally:
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _dump_on_failure(request: pytest.FixtureRequest, stack: Stack) -> None:
    """What a person would look at first when a test failed: the components' logs, the events, the resources."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    stack.keep_logs = True
    print(f"the components' logs: {stack.workdir}")
    print(stack.logs())
    print(stack.kubectl("get", "events", "-n", stack.namespace, check=False).stdout)
    print(stack.kubectl("get", "ucj,ui", "-n", stack.namespace, "-o", "yaml", check=False).stdout)

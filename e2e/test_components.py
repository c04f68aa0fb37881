"""Every component starts against the real platform and serves /healthz and /metrics.

Local processes only: on kind the components are the release's pods and the frontend container,
whose /metrics test_observability scrapes (and whose probes and `helm test` check /healthz).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.support.platform import Platform
from ucim.testing.core_standin import CoreKeys
from ucim.testing.stack import free_port, running_stack

pytestmark = pytest.mark.local_platform


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become healthy in {timeout} s")


@pytest.fixture
def ucim_namespace(platform: Platform) -> str:
    if platform.kubectl("get", "namespace", "ucim", check=False).returncode != 0:
        platform.kubectl("create", "namespace", "ucim")
    return "ucim"


COMPONENTS = {
    "ucim-gateway": "UCIM_GATEWAY_PORT",
    "ucim-operator": "UCIM_OPERATOR_METRICS_PORT",
    "ucim-bridge": "UCIM_BRIDGE_METRICS_PORT",
    "ucim-sidecar": "UCIM_SIDECAR_METRICS_PORT",
}


@pytest.fixture(params=sorted(COMPONENTS))
def component(request: pytest.FixtureRequest, platform: Platform, ucim_namespace: str) -> Iterator[tuple[str, int]]:
    command: str = request.param
    port = free_port()
    env = {
        **platform.process_env(),
        COMPONENTS[command]: str(port),
        "UCIM_LOG_FORMAT": "json",
        "UCIM_GATEWAY_CORE_PUBLIC_KEY": CoreKeys.generate().public_key_b64(),
    }
    proc = subprocess.Popen([command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        yield command, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode in (0, -15), (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]


def test_component_serves_health_and_metrics(component: tuple[str, int]) -> None:
    _, port = component
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "process_resident_memory_bytes" in metrics


async def test_a_stack_keeps_its_logs_only_when_its_body_failed(platform: Platform) -> None:
    namespace = f"ucim-e2e-{uuid.uuid4().hex[:6]}"
    platform.kubectl("create", "namespace", namespace)
    try:
        async with running_stack(platform.env, namespace) as stack:
            passed = stack.workdir
            assert (passed / "ucim-gateway.log").exists()
        assert not passed.exists()
        with pytest.raises(RuntimeError, match="a test failed"):
            async with running_stack(platform.env, namespace) as stack:
                failed = stack.workdir
                raise RuntimeError("a test failed")
        assert (failed / "ucim-gateway.log").exists()
        shutil.rmtree(failed)
    finally:
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

"""A real Prometheus (Debian's 2.42) scrapes a running gateway; every gateway dashboard query returns data.

The gateway runs as its console script against the local platform's apiserver; traffic of the
kinds Core sends (products, a user who is not ready yet, an unauthenticated call) flows while
Prometheus scrapes it every second. Then each query of the gateway dashboard, with Grafana's
``$__rate_interval`` replaced by a window of a few scrapes, must answer with at least one series.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.platform import Platform
from ucim.common.protocol import encode_username
from ucim.testing.core_standin import CoreStandIn

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DASHBOARD = REPO / "charts" / "ucim" / "dashboards" / "gateway.json"
PROVIDER = "ucim"
RATE_WINDOW = "15s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def gateway(platform: Platform, namespace: str) -> Iterator[tuple[str, CoreStandIn]]:
    core = CoreStandIn(PROVIDER, "refresh")
    port = free_port()
    env = {
        **platform.process_env(),
        "UCIM_GATEWAY_PORT": str(port),
        "UCIM_GATEWAY_NAMESPACE": namespace,
        "UCIM_GATEWAY_PROVIDER_ID": PROVIDER,
        "UCIM_GATEWAY_CORE_PUBLIC_KEY": core.keys.public_key_b64(),
        "UCIM_GATEWAY_INIT_WAIT_SECONDS": "0.1",
    }
    process = subprocess.Popen(["ucim-gateway"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{url}/healthz")[0] == 200, 30, "the gateway")
        yield url, core
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def prometheus(gateway: tuple[str, CoreStandIn]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed: `apt-get install -y --no-install-recommends prometheus`")
    folder = Path(tempfile.mkdtemp(prefix="ucim-prometheus-"))
    target = urllib.parse.urlsplit(gateway[0]).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ucim-gateway", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{url}/-/ready")[0] == 200, 30, "Prometheus to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        shutil.rmtree(folder, ignore_errors=True)


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    status, body = get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{promql}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def traffic(gateway: str, core: CoreStandIn, stop: threading.Event) -> None:
    """What Core sends: products, a call for a user who is not ready (449), and a forged call (401)."""
    service = {"Authorization": f"Bearer {core.mint_service_token()}"}
    user = {**service, "UCloud-Username": encode_username("alice"), "Content-Type": "application/json"}
    while not stop.is_set():
        get(f"{gateway}/ucloud/{PROVIDER}/jobs/retrieveProducts", service)
        get(f"{gateway}/ucloud/{PROVIDER}/jobs", user, data=b'{"items": []}')
        get(f"{gateway}/ucloud/{PROVIDER}/jobs/retrieveProducts", {"Authorization": "Bearer forged"})
        stop.wait(0.05)


def test_every_gateway_panel_returns_data(gateway: tuple[str, CoreStandIn], prometheus: str) -> None:
    url, core = gateway
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(url, core, stop), daemon=True)
    sender.start()
    try:
        wait_for(lambda: query(prometheus, 'up{job="ucim-gateway"} == 1'), 30, "the first scrape")
        # A rate needs two samples in its window: wait for several scrapes with traffic.
        wait_for(lambda: query(prometheus, f"rate(ucim_gateway_requests_total[{RATE_WINDOW}]) > 0"), 30, "a rate")
        time.sleep(3)
        board = json.loads(GATEWAY_DASHBOARD.read_text())
        empty = []
        for panel in board["panels"]:
            for target in panel["targets"]:
                promql = target["expr"].replace("$__rate_interval", RATE_WINDOW)
                if not query(prometheus, promql):
                    empty.append(f"{panel['title']}: {promql}")
        assert empty == [], "panels without data"
    finally:
        stop.set()
        sender.join(timeout=10)

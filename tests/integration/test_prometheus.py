"""A real Prometheus (Debian's 2.42) scrapes a running gateway; every gateway dashboard query returns data.

The gateway runs as its console script against the local platform's apiserver; traffic of the
kinds Core sends (products, a user who is not ready yet, an unauthenticated call) flows while
Prometheus scrapes it every second. Then each query of the gateway dashboard, with Grafana's
``$__rate_interval`` replaced by a window of a few scrapes, must answer with at least one series.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.platform import Platform
from tests.support.prometheus import dashboard_queries, http_get, query, static_job, wait_for
from tests.support.prometheus import prometheus as run_prometheus
from ucim.common.protocol import encode_username
from ucim.testing.core_standin import CoreStandIn
from ucim.testing.stack import free_port

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DASHBOARD = REPO / "charts" / "ucim" / "dashboards" / "gateway.json"
PROVIDER = "ucim"
RATE_WINDOW = "15s"


@pytest.fixture
def gateway(platform: Platform, namespace: str, tmp_path: Path) -> Iterator[tuple[str, CoreStandIn]]:
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
    # Its log to a file: a pipe nobody reads fills up (a line per request) and the gateway blocks writing it.
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(["ucim-gateway"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/healthz")[0] == 200, 30, "the gateway")
        yield url, core
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


@pytest.fixture
def prometheus(gateway: tuple[str, CoreStandIn]) -> Iterator[str]:
    with run_prometheus([static_job("ucim-gateway", urllib.parse.urlsplit(gateway[0]).netloc)]) as url:
        yield url


def traffic(gateway: str, core: CoreStandIn, stop: threading.Event) -> None:
    """What Core sends: products, a call for a user who is not ready (449), and a forged call (401)."""
    service = {"Authorization": f"Bearer {core.mint_service_token()}"}
    user = {**service, "UCloud-Username": encode_username("alice"), "Content-Type": "application/json"}
    while not stop.is_set():
        http_get(f"{gateway}/ucloud/{PROVIDER}/jobs/retrieveProducts", service)
        http_get(f"{gateway}/ucloud/{PROVIDER}/jobs", user, data=b'{"items": []}')
        http_get(f"{gateway}/ucloud/{PROVIDER}/jobs/retrieveProducts", {"Authorization": "Bearer forged"})
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
        empty = [
            f"{title}: {promql}"
            for title, promql in dashboard_queries(GATEWAY_DASHBOARD, RATE_WINDOW)
            if not query(prometheus, promql)
        ]
        assert empty == [], "panels without data"
    finally:
        stop.set()
        sender.join(timeout=10)

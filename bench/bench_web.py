#!/usr/bin/env python3
"""A job's web interface: the route browser → gateway → bridge → the owner's instance → the job's server,
side by side with nginx proxying the same server and with the server reached directly.

Against the running local platform, every component a real process: alice runs the library's
``web-echo`` job (ucim/testing/web_app.py, Debian's python3-aiohttp) on the platform's Slurm;
its web session is opened as Core opens it (``interactiveSession`` WEB, ``authorize-app``) and
the bench then sends requests with the session cookie to the job's host name at the gateway.
The same server is measured three ways in one run, one after the other:

* **direct**: the client to the job's server (node:port): the server's own speed;
* **nginx**: nginx (Debian's, ``bench/nginx.py``: HTTP/1.1, kept-alive upstream connections, no
  buffering) proxying to the server: the baseline the issue names;
* **ucim**: the gateway's web route (cookie checked, job looked up, relayed through a tunnel to the
  owner's instance, which connects on to the server as alice).

Measured: latency of small requests one at a time (p50/p99; ``added`` = lane p50 - direct p50),
small-request throughput with ``--concurrency`` clients, and a large body's download rate.
Targets (issue 17): ucim ≥ 0.7 x nginx in both throughputs; ucim's added p50 ≤ 2 ms.

    python -m bench web
    python -m bench web --requests 2000 --seconds 10 --json out.json
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
from yarl import URL

from bench.nginx import running_nginx
from bench.report import bench_parser, cpu_seconds, in_own_namespace, run_bench, summary
from ucim.common.protocol import JobState, SimpleDuration
from ucim.common.resources import UCloudJob
from ucim.testing.stack import Stack, read_platform_env, running_stack

THROUGHPUT_RATIO: Final = 0.7
ADDED_P50_MS: Final = 2.0
LARGE_BYTES: Final = 256 << 20
LANES: Final = ("direct", "nginx", "ucim")


class Lane:
    """Where requests go, and with which headers (the job's host name and cookie for ucim)."""

    def __init__(self, base: str, headers: Mapping[str, str] | None = None) -> None:
        self.base = URL(base)
        self.headers = dict(headers or {})

    def url(self, path: str) -> URL:
        return URL(str(self.base) + path, encoded=True)


async def latencies(client: aiohttp.ClientSession, lane: Lane, count: int) -> list[float]:
    samples = []
    url = lane.url("/whoami")
    for _ in range(count):
        started = time.perf_counter()
        async with client.get(url, headers=lane.headers) as answer:
            await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


# Who spends the CPU of a lane: processes by a part of their command line (the bench itself is "client").
ROLES: Final = {
    "gateway": "ucim-gateway", "bridge": "ucim-bridge", "instance": "slurm_bridge.spawner",
    "nginx": "nginx: worker", "server": "ucim.testing.web_app",
}  # fmt: skip


async def requests_per_second(
    client: aiohttp.ClientSession, lane: Lane, concurrency: int, seconds: float
) -> tuple[float, dict[str, int]]:
    """Requests per second, and each role's CPU per request (µs) meanwhile."""
    url = lane.url("/whoami")
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with client.get(url, headers=lane.headers) as answer:
                await answer.read()
            done += 1

    before, started = cpu_seconds(ROLES), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, after = time.perf_counter() - started, cpu_seconds(ROLES)
    per_request = {
        role: round((after[role] - before[role]) / done * 1e6) for role in after if after[role] > before[role]
    }
    return done / elapsed, per_request


async def download_rate(client: aiohttp.ClientSession, lane: Lane) -> float:
    """MB/s of one large answer, read as it comes."""
    started = time.perf_counter()
    received = 0
    async with client.get(lane.url(f"/bytes?n={LARGE_BYTES}"), headers=lane.headers) as answer:
        async for piece in answer.content.iter_any():
            received += len(piece)
    if received != LARGE_BYTES:
        raise RuntimeError(f"{lane.base} sent {received} of {LARGE_BYTES} bytes")
    return received / (time.perf_counter() - started) / 1e6


async def measure_lane(lane: Lane, requests: int, concurrency: int, seconds: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
        await latencies(client, lane, 50)  # warm: connections, the server's first answers
        latency = summary(await latencies(client, lane, requests))
        rate, cpu = await requests_per_second(client, lane, concurrency, seconds)
        large = await download_rate(client, lane)
    return {"latency_ms": latency, "requests_per_s": round(rate, 1), "cpu_us_per_request": cpu,
            "download_mb_s": round(large, 1)}  # fmt: skip


def node_address(node: str) -> str:
    """The node's NodeAddr, as the instance finds it (the platform's node names do not all resolve)."""
    env = read_platform_env()
    shown = subprocess.run(
        ["scontrol", "show", "node", "--oneliner", node], capture_output=True, text=True, check=True,
        env={**os.environ, "SLURM_CONF": env.get("SLURM_CONF", "")},
    )  # fmt: skip
    found = re.search(r"\bNodeAddr=(\S+)", shown.stdout)
    return found[1] if found else node


async def web_session(stack: Stack) -> tuple[Lane, str, int, str]:
    """alice's web-echo job, running, and its session: the ucim lane, the server's node and port, the job id."""
    core = stack.core
    job_id = str(uuid.uuid4().int % 10**9)
    spec = core.make_job(job_id, "alice", ("web-echo", "1"), {}, time_allocation=SimpleDuration(minutes=10))
    await core.create_jobs([spec])
    await core.wait_for_update(job_id, JobState.RUNNING, timeout=60)
    job = UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job_id)}"))
    opened = await core.open_session(spec, "WEB")
    opened.raise_for_status()
    redirect = URL(opened.body["responses"][0]["redirectClientTo"])
    host = f"{redirect.host}:{redirect.port}"  # the job's name on the wildcard domain, sent to the gateway's address
    async with aiohttp.ClientSession() as client:
        async with client.get(redirect.with_host("127.0.0.1"), headers={"Host": host}, allow_redirects=False) as done:
            cookie = done.cookies.get(f"ucloud-compute-session-{job_id}-0-")
        if cookie is None:
            raise RuntimeError(f"authorize-app set no cookie ({done.status})")
        gateway = str(redirect.with_host("127.0.0.1").with_path("").with_query(None)).rstrip("/")
        lane = Lane(gateway, {"Host": host, "Cookie": f"{cookie.key}={cookie.value}"})
        for _ in range(100):  # the server starts a moment after the job
            async with client.get(lane.url("/whoami"), headers=lane.headers) as probe:
                if probe.status == 200:
                    return lane, node_address(job.status.node_list or ""), job.status.interfaces[0].port, job_id
            await asyncio.sleep(0.2)
    raise RuntimeError("the web-echo job never served")


async def bench(env: dict[str, str], namespace: str, opts: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "requests": opts.requests, "concurrency": opts.concurrency, "seconds": opts.seconds,
        "large_bytes": LARGE_BYTES, "lanes": {},
    }  # fmt: skip
    async with running_stack(env, namespace) as stack:
        ucim, node, port, job_id = await web_session(stack)
        result["server"] = f"{node}:{port} (web-echo job {job_id}, as alice)"
        try:
            with tempfile.TemporaryDirectory(prefix="ucim-bench-web-") as folder:
                async with running_nginx(Path(folder), f"{node}:{port}", health_path="/whoami") as nginx:
                    lanes = {"direct": Lane(f"http://{node}:{port}"), "nginx": Lane(nginx), "ucim": ucim}
                    for name in LANES:
                        result["lanes"][name] = await measure_lane(
                            lanes[name], opts.requests, opts.concurrency, opts.seconds
                        )
        finally:
            await stack.core.terminate_jobs([stack.core.make_job(job_id, "alice", ("web-echo", "1"), {})])
    lanes = result["lanes"]
    direct_p50 = lanes["direct"]["latency_ms"]["p50"]
    for lane in lanes.values():
        lane["added_p50_ms"] = round(lane["latency_ms"]["p50"] - direct_p50, 2)
    rps = lanes["ucim"]["requests_per_s"] / lanes["nginx"]["requests_per_s"]
    mbs = lanes["ucim"]["download_mb_s"] / lanes["nginx"]["download_mb_s"]
    result["verdict"] = {
        "requests_vs_nginx": {"measured": round(rps, 2), "limit": THROUGHPUT_RATIO, "ok": rps >= THROUGHPUT_RATIO},
        "download_vs_nginx": {"measured": round(mbs, 2), "limit": THROUGHPUT_RATIO, "ok": mbs >= THROUGHPUT_RATIO},
        "added_p50_ms": {
            "measured": lanes["ucim"]["added_p50_ms"], "limit": ADDED_P50_MS,
            "ok": lanes["ucim"]["added_p50_ms"] <= ADDED_P50_MS,
        },
    }  # fmt: skip
    return result


def measure(opts: Any) -> dict[str, Any]:
    return in_own_namespace("web", lambda env, namespace: bench(env, namespace, opts))


def table(document: dict[str, Any]) -> str:
    lines = [
        f"web route ({document['duration_s']} s): {document['server']}; {document['requests']} requests one at a "
        f"time, {document['concurrency']} clients for {document['seconds']} s, one {LARGE_BYTES >> 20} MiB answer",
        f"  {'lane':8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'req/s':>9} {'MB/s':>8}",
    ]
    for name in LANES:
        lane = document["lanes"][name]
        lines.append(
            f"  {name:8} {lane['latency_ms']['p50']:>8} {lane['latency_ms']['p99']:>8} {lane['added_p50_ms']:>10} "
            f"{lane['requests_per_s']:>9} {lane['download_mb_s']:>8}  CPU µs/request: "
            + ", ".join(f"{role} {us}" for role, us in lane["cpu_us_per_request"].items())
        )
    for name, verdict in document["verdict"].items():
        sign = "≤" if name.startswith("added") else "≥"
        lines.append(
            f"  {name}: {verdict['measured']} ({sign} {verdict['limit']}) {'ok' if verdict['ok'] else 'MISSED'}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="small requests one at a time (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the throughput run (default 16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run (default 5)")
    opts = parser.parse_args()
    if not 10 <= opts.requests <= 1_000_000 or not 1 <= opts.concurrency <= 1000 or not 0.5 <= opts.seconds <= 600:
        parser.error("--requests 10..1000000, --concurrency 1..1000, --seconds 0.5..600")
    return run_bench("web", opts, lambda: measure(opts), table, needs_root=True)


if __name__ == "__main__":
    sys.exit(main())

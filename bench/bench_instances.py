#!/usr/bin/env python3
"""How fast a user instance starts, and how much memory an idle one costs.

Runs a real ``ucim-bridge`` (as a subprocess, as root) against the local platform
(``python3 hack/local_platform.py up``) in a fresh namespace, then creates UserInstances
one after the other for alice and bob and measures:

* **cold start**: from the create call to the watch event that shows ``Ready=True``
  (mapping, the ``spec`` patch, the fork, the first answer, the ``status`` patch and the
  watch delivery: what a gateway waiting in ``integration/init`` sees);
* **fork to first response**: ``status.spawnDurationSeconds``, the bridge's own clock from
  the spawn request to the instance's first answer on its socket;
* **idle USS**: each running instance's unique memory (``/proc/<pid>/smaps_rollup``,
  Private_Clean + Private_Dirty) once all are up and idle.

    python3 -m bench instances                 # 30 instances
    python3 -m bench instances --count 100 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
The namespace and every process are removed at the end, however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.report import bench_parser, run_bench
from ucim.common.conditions import is_true
from ucim.common.kube import Kube
from ucim.common.resources import ObjectMeta, UserInstance, UserInstanceSpec, cluster_labels
from ucim.slurm_bridge.spawner import uss_bytes
from ucim.testing.stack import free_port, read_platform_env


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bridge exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (our own http:// URL)
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the bridge did not become ready")


async def measure(kube: Kube, namespace: str, cluster: str, count: int) -> dict[str, Any]:
    ready_at: dict[str, float] = {}
    objects: dict[str, UserInstance] = {}
    seen = asyncio.Event()

    async def watch() -> None:
        while True:
            async for event in kube.watch(UserInstance, namespace, timeout_seconds=300):
                obj = event.obj
                if obj is None:
                    continue
                if is_true(obj.status.conditions, "Ready") and obj.metadata.name not in ready_at:
                    ready_at[obj.metadata.name] = time.perf_counter()
                    objects[obj.metadata.name] = obj
                    seen.set()

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)  # let the watch connect before the first create
    cold: list[float] = []
    try:
        for i in range(count):
            user = ("alice", "bob")[i % 2]
            name = f"bench-{i:04d}"
            instance = UserInstance(
                metadata=ObjectMeta(name=name, labels=cluster_labels(cluster)),
                spec=UserInstanceSpec(ucloud_username=f"{user}#{i:04d}", cluster=cluster, idle_timeout_seconds=0),
            )
            started = time.perf_counter()
            await kube.create(instance, namespace)
            async with asyncio.timeout(30):
                while name not in ready_at:
                    seen.clear()
                    await seen.wait()
            cold.append(ready_at[name] - started)
    finally:
        watcher.cancel()
    await asyncio.sleep(1.0)  # idle
    pids = [obj.status.pid for obj in objects.values() if obj.status.pid]
    spawn = [obj.status.spawn_duration_seconds for obj in objects.values() if obj.status.spawn_duration_seconds]
    return {
        "count": count,
        "cold_start_seconds": summary(cold),
        "fork_to_first_response_seconds": summary(spawn),
        "idle_uss_bytes": summary([float(uss_bytes(pid)) for pid in pids]),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("cold start (create → Ready)", result["cold_start_seconds"], 1000, "ms"),
        ("fork → first response", result["fork_to_first_response_seconds"], 1000, "ms"),
        ("idle instance USS", result["idle_uss_bytes"], 1 / 1024 / 1024, "MiB"),
    ]
    lines = [f"{'measure':32} {'p50':>9} {'p99':>9} {'max':>9}  unit   (n={result['count']})"]
    for label, values, scale, unit in rows:
        lines.append(
            f"{label:32} {values['p50'] * scale:9.2f} {values['p99'] * scale:9.2f} {values['max'] * scale:9.2f}  {unit}"
        )
    return "\n".join(lines)


async def connect_and_measure(kubeconfig: str, namespace: str, cluster: str, count: int) -> dict[str, Any]:
    async with await Kube.connect(kubeconfig) as kube:
        return await measure(kube, namespace, cluster, count)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Start a bridge in a fresh namespace, measure, clean everything up."""
    env = {**os.environ, **read_platform_env()}
    tag = uuid.uuid4().hex[:8]
    namespace, cluster = f"ucim-bench-{tag}", f"bench-{tag}"
    folder = Path(tempfile.mkdtemp(prefix="ucim-bench-"))
    token = folder / "token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token.chmod(0o600)
    metrics = free_port()
    bridge_env = {
        **env,
        "UCIM_BRIDGE_NAMESPACE": namespace,
        "UCIM_BRIDGE_CLUSTER": cluster,
        "UCIM_BRIDGE_INGRESS_PORT": str(free_port()),
        "UCIM_BRIDGE_METRICS_PORT": str(metrics),
        "UCIM_BRIDGE_INGRESS_TOKEN_FILE": str(token),
        "UCIM_BRIDGE_SOCKET_DIR": f"/run/ucim/bench-{tag}",
        "UCIM_BRIDGE_MONITOR_ENABLED": "false",
        "UCIM_BRIDGE_LOG_LEVEL": "WARNING",
    }
    kubectl = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True, env=env)
    with (folder / "bridge.log").open("wb") as log:
        bridge = subprocess.Popen([sys.executable, "-m", "ucim.slurm_bridge.main"], env=bridge_env, stderr=log)
        try:
            wait_ready(f"http://127.0.0.1:{metrics}/readyz", bridge)
            return asyncio.run(connect_and_measure(env["KUBECONFIG"], namespace, cluster, opts.count))
        finally:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(timeout=60)
            Path(bridge_env["UCIM_BRIDGE_SOCKET_DIR"]).rmdir()
            subprocess.run(
                [*kubectl, "delete", "namespace", namespace, "--wait=false"], check=False, capture_output=True, env=env
            )


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--count", type=int, default=30, help="how many instances to start (default 30)")
    opts = parser.parse_args()
    return run_bench("instances", opts, lambda: run(opts), table, needs_root=True)


if __name__ == "__main__":
    sys.exit(main())

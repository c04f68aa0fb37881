#!/usr/bin/env python3
"""A login storm, what follows a provider restart: N users at once, each answered within Core's budget?

Runs the whole of ucim as processes (``ucim.testing.stack.running_stack``: gateway, operator,
bridge, Core's stand-in in this process) against the local platform, as root, in a fresh
namespace per N. Each of N real local users (``ucimstorm001`` …, made here with ``useradd`` and
removed at the end) plays what Core does for a user whose instance is not running: an
``integration/init``, then a user-routed call (``jobs/requestDynamicParameters`` of the
``sleep-exit`` application) with Core's user-not-ready loop (449/503 → ``integration/init``,
500 ms, at most 5 tries, 5 s per call: the stand-in's, which are Core's). The N users start
within one second.

Measured per N, side by side in one run:

* **time to the first 200** of each user's call (p50/p99/max) from that user's start;
* users **Core gives up on** (the last try still 449/503, or a call without an answer in 5 s),
  and ``integration/init`` calls that ran past Core's 5 s;
* the **apiserver's requests** in the storm window (its ``/metrics``), reads (get/list) and
  writes (post/put/patch/delete) per login, by resource;
* the users' **instances' memory** afterwards (USS, ``/proc/<pid>/smaps_rollup``).

Goal (issue 18): p99 ≤ 2 s at N = 200, nobody given up on.

    python -m bench logins                          # N = 25, 100, 200
    python -m bench logins --users 25,100 --json out.json
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any, Final

from bench.bench_job_load import parse_apiserver_metrics
from bench.report import bench_parser, cpu_seconds, in_own_namespace, run_bench, summary
from ucim.common.kube import Kube
from ucim.common.protocol import NameAndVersion, ResourceOwner, dump
from ucim.common.resources import UserInstance
from ucim.slurm_bridge.spawner import uss_bytes
from ucim.testing.core_standin import USER_NOT_READY_STATUSES
from ucim.testing.stack import CLUSTER, Stack, platform_kubectl, read_platform_env, running_stack

USER_PREFIX: Final = "ucimstorm"
FIRST_UID: Final = 21001
APPLICATION: Final = ("sleep-exit", "1")
GOAL_P99_S: Final = 2.0
READS: Final = ("get", "list")
WRITES: Final = ("post", "put", "patch", "delete")
# What a login may touch; the rest of the window's requests are the platform's own (e.g. the namespace
# controller emptying the previous run's namespace).
RESOURCES: Final = frozenset({"userinstances", "userconnections", "ucloudjobs", "ucloudprojects", "leases", "events"})
# Who spends the CPU of a storm: processes by a part of their command line, the first that fits (the
# apiserver's names etcd; the instances are the bridge's fork server's children).
ROLES: Final = {
    "gateway": "ucim-gateway", "operator": "ucim-operator", "instances": "slurm_bridge.spawner",
    "bridge": "ucim-bridge", "apiserver": "kube-apiserver", "etcd": "/etcd --name", "slurmctld": "slurmctld",
}  # fmt: skip


def storm_users(count: int) -> list[str]:
    return [f"{USER_PREFIX}{i:03d}" for i in range(1, count + 1)]


def ensure_users(names: list[str]) -> list[str]:
    """Each of ``names`` a local account with a private home; the ones this run made."""
    made = []
    for offset, name in enumerate(names):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            continue
        uid = str(FIRST_UID + offset)
        subprocess.run(["groupadd", "-g", uid, name], check=True, capture_output=True)
        subprocess.run(["useradd", "-m", "-u", uid, "-g", name, "-s", "/bin/bash", "-K", "HOME_MODE=0700", name],
                       check=True, capture_output=True)  # fmt: skip
        made.append(name)
    return made


def remove_users(names: list[str]) -> None:
    for name in names:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


def apiserver_counters(env: Mapping[str, str]) -> dict[str, float]:
    return parse_apiserver_metrics(platform_kubectl(env)("get", "--raw", "/metrics").stdout)


def per_login(before: Mapping[str, float], after: Mapping[str, float], logins: int) -> dict[str, Any]:
    """ucim's requests to the apiserver in the window per login: reads and writes, and each by resource."""
    by_resource: dict[str, float] = defaultdict(float)
    totals = {"reads": 0.0, "writes": 0.0}
    for key, value in after.items():
        _, resource, verb = key.split("/", 2) if key.startswith("requests/") else ("", "", "")
        delta = value - before.get(key, 0.0)
        if resource not in RESOURCES or delta <= 0:
            continue
        kind = "reads" if verb in READS else "writes" if verb in WRITES else None
        if kind is not None:
            totals[kind] += delta
            by_resource[f"{resource} {verb}"] += delta
    mean_ms = {}
    for key in by_resource:
        resource, verb = key.split(" ")
        timed = after.get(f"timed/{resource}/{verb}", 0.0) - before.get(f"timed/{resource}/{verb}", 0.0)
        seconds = after.get(f"seconds/{resource}/{verb}", 0.0) - before.get(f"seconds/{resource}/{verb}", 0.0)
        if timed > 0:
            mean_ms[key] = round(seconds / timed * 1000, 1)
    return {
        "mean_ms": mean_ms,
        "reads": round(totals["reads"] / logins, 1),
        "writes": round(totals["writes"] / logins, 1),
        "by_resource": {k: round(v / logins, 2) for k, v in sorted(by_resource.items(), key=lambda kv: -kv[1])},
    }


async def one_login(stack: Stack, user: str, delay: float) -> tuple[float | None, str]:
    """Init, then the user-routed call through Core's loop: seconds to the 200 (None: given up), and why not."""
    core = stack.core
    await asyncio.sleep(delay)
    started = time.monotonic()
    with contextlib.suppress(Exception):  # Core ignores init's outcome; the call's loop tells
        await core.call_provider("POST", "integration/init", {"username": user})
    application = core.applications.resolve(NameAndVersion(name=APPLICATION[0], version=APPLICATION[1]))
    body = {"owner": dump(ResourceOwner(created_by=user, project=None)), "application": dump(application)}
    try:
        answer = await core.call_provider("POST", "jobs/requestDynamicParameters", body, user)
    except Exception as error:  # Core's 5 s passed without an answer
        return None, f"no answer: {type(error).__name__}"
    if answer.status == 200:
        return time.monotonic() - started, ""
    status = "not ready" if answer.status in USER_NOT_READY_STATUSES else "refused"
    return None, f"{status}: {answer.status}"


async def instances_uss(stack: Stack, kube: Kube) -> int:
    total = 0
    for instance in await kube.list(UserInstance, stack.namespace):
        if instance.status.pid:
            with contextlib.suppress(OSError):
                total += uss_bytes(instance.status.pid)
    return total


async def storm(env: dict[str, str], namespace: str, users: list[str]) -> dict[str, Any]:
    async with running_stack(env, namespace) as stack, await Kube.connect(env["KUBECONFIG"]) as kube:
        before, cpu_before = await asyncio.to_thread(apiserver_counters, env), cpu_seconds(ROLES)
        started = time.monotonic()
        results = await asyncio.gather(*(one_login(stack, user, i / len(users)) for i, user in enumerate(users)))
        window = time.monotonic() - started
        after, cpu_after = await asyncio.to_thread(apiserver_counters, env), cpu_seconds(ROLES)
        memory = await instances_uss(stack, kube)
        calls = stack.core.record.provider_calls
    seconds = [s * 1000 for s, _ in results if s is not None]
    given_up = Counter(why for s, why in results if s is None)
    late_inits = sum(1 for c in calls if c.path == "integration/init" and (c.status is None or c.seconds > 5.0))
    latency = summary(seconds)
    return {
        "users": len(users), "window_s": round(window, 2), "first_200_ms": latency,
        "given_up": sum(given_up.values()), "given_up_why": dict(given_up), "inits_past_5s": late_inits,
        "init_calls": sum(1 for c in calls if c.path == "integration/init"),
        "init_call_ms": summary([c.seconds * 1000 for c in calls if c.path == "integration/init"]),
        "apiserver_per_login": per_login(before, after, len(users)),
        "instances_uss_mib": round(memory / 2**20, 1),
        "cpu_s": {role: round(cpu_after[role] - cpu_before.get(role, 0.0), 2) for role in cpu_after},
        "ok": not given_up and latency.get("p99", 1e9) <= GOAL_P99_S * 1000,
    }  # fmt: skip


def run_storm(count: int) -> dict[str, Any]:
    return in_own_namespace("logins", lambda env, namespace: storm(env, namespace, storm_users(count)))


def measure(sizes: list[int]) -> dict[str, Any]:
    made = ensure_users(storm_users(max(sizes)))
    try:
        runs = [run_storm(n) for n in sizes]
    finally:
        remove_users(made)
    return {"cluster": CLUSTER, "runs": runs}


def table(document: dict[str, Any]) -> str:
    lines = [
        f"login storm ({document['duration_s']} s): N users' init within 1 s, then a user-routed call through "
        f"Core's 449 loop (goal: p99 ≤ {GOAL_P99_S:g} s, nobody given up on)",
        f"  {'N':>5} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'given up':>9} {'init>5s':>8} {'inits':>6} "
        f"{'reads':>6} {'writes':>7} {'USS MiB':>8}",
    ]
    for run in document["runs"]:
        latency, api = run["first_200_ms"], run["apiserver_per_login"]

        p50, p99, top = (f"{latency[k] / 1000:.2f}" if k in latency else "-" for k in ("p50", "p99", "max"))
        lines.append(
            f"  {run['users']:>5} {p50:>7} {p99:>7} {top:>7} {run['given_up']:>9} "
            f"{run['inits_past_5s']:>8} {run['init_calls']:>6} {api['reads']:>6} {api['writes']:>7} "
            f"{run['instances_uss_mib']:>8}  {'ok' if run['ok'] else 'MISSED'}"
        )
    for run in document["runs"]:
        lines.append(f"  CPU s at N = {run['users']}: " + ", ".join(f"{k} {v}" for k, v in run["cpu_s"].items()))
    last = document["runs"][-1]["apiserver_per_login"]
    lines.append(
        "  apiserver requests per login at the largest N (mean ms): "
        + ", ".join(f"{k} {v} ({last['mean_ms'].get(k, '-')})" for k, v in last["by_resource"].items())
    )
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--users", default="25,100,200", help="storm sizes, comma-separated (default 25,100,200)")
    opts = parser.parse_args()
    try:
        sizes = [int(n) for n in opts.users.split(",")]
    except ValueError:
        parser.error("--users: numbers separated by commas")
    if not sizes or not all(1 <= n <= 500 for n in sizes):
        parser.error("--users: each 1..500")
    read_platform_env()  # a clear error when the platform is not up
    return run_bench("logins", opts, lambda: measure(sizes), table, needs_root=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The seeded chaos soak: many short jobs of many users while components crash on a seeded schedule.

Runs the whole of ucim as processes (``running_stack``) against the local platform, in a fresh
namespace ``ucim-soak-<rand>``, and streams ``--jobs`` short ``sleep-exit`` jobs (1 to 3 s) of
``--users`` UCloud users, one every ``--interval`` seconds (default 1.5: the local platform's node runs two such
jobs at a time, and a faster stream only builds a queue in Slurm). The UCloud users are ``alice#1``,
``bob#1``, ``alice#2``, ...: the bridge's default mapping policy (``pattern``, ``{username}``)
drops the ``#<digits>`` suffix, so each maps to the local account ``alice`` or ``bob`` (the
platform's two users), and each still gets its own UserInstance (one process per UCloud user).

Meanwhile, on a schedule drawn from ``--seed``, one of the gateway, the operator, the bridge,
slurmctld and the kube-apiserver is SIGKILLed and started again 1 to 5 s later, one crash
every 15 to 45 s. When the stream is over, the soak waits for a final state of every job at
Core, then reports what each job saw (``ucim.testing.drills``: its creates' statuses and
latencies, its states at Core, its Slurm jobs) and the totals: lost, duplicated, out of order,
creates over Core's budget. The table goes to stdout, the JSON document after it (and to
``--json``). Every daemon it crashed runs again afterwards, whatever happens.

    python -m bench soak --seed 1                            # 500 jobs, 20 users, at most 20 minutes
    python -m bench soak --seed 7 --jobs 100 --users 10      # a smaller run

Bounded: the stream stops when ``--max-minutes`` is two thirds over, the wait for final states
ends with it. Not part of ``make bench`` (it is run alone: ``make soak``). Exit status 1 when
any invariant was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
import uuid
from typing import Any, Final

from bench.report import bench_parser, run_bench
from ucim.testing.drills import Drill, DrillReport, Fault, component, daemons
from ucim.testing.platform_daemons import APISERVER, SLURMCTLD, PlatformDaemons
from ucim.testing.stack import Stack, platform_kubectl, read_platform_env, running_stack

LOCAL_USERS: Final = ("alice", "bob")
TARGETS: Final = ("ucim-gateway", "ucim-operator", "ucim-bridge", SLURMCTLD, APISERVER)
CRASH_EVERY_SECONDS: Final = (15.0, 45.0)
DOWN_SECONDS: Final = (1.0, 5.0)
JOB_SECONDS: Final = (1, 2, 3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = bench_parser(__doc__.split("\n\n")[0], prog="python -m bench soak")
    parser.add_argument("--seed", type=int, required=True, help="draws the users, the jobs and the crash schedule")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--users", type=int, default=20, help="UCloud users (alice#1, bob#1, alice#2, ...)")
    # The platform's node runs two of these jobs at a time (each asks for 1000 MB of its 2000 MB): one every 0.8 s
    # outran it (a backlog of 69 pending jobs at the deadline); one every 1.5 s keeps up and fits 20 minutes.
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between two jobs")
    parser.add_argument("--max-minutes", type=float, default=20.0)
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= 5000 or not 1 <= args.users <= 200 or args.max_minutes <= 0:
        parser.error("--jobs 1..5000, --users 1..200, --max-minutes > 0")
    return args


def ucloud_users(count: int) -> list[str]:
    """``alice#1``, ``bob#1``, ``alice#2``, ...: ``count`` UCloud users mapped onto the platform's two accounts."""
    return [f"{LOCAL_USERS[i % len(LOCAL_USERS)]}#{i // len(LOCAL_USERS) + 1}" for i in range(count)]


def fault_for(target: str, stack: Stack, platform: PlatformDaemons) -> Fault:
    return component(stack, target) if target.startswith("ucim-") else daemons(platform, target)


async def stream(drill: Drill, rng: random.Random, users: list[str], args: argparse.Namespace, until: float) -> None:
    """One job every ``--interval`` s, of a user drawn by ``rng``, until ``--jobs`` were started or ``until``."""
    for _ in range(args.jobs):
        if time.monotonic() > until:
            return
        drill.submit(rng.choice(users), rng.choice(JOB_SECONDS))
        await asyncio.sleep(args.interval)


async def chaos(drill: Drill, rng: random.Random, stack: Stack, platform: PlatformDaemons, stop: asyncio.Event) -> None:
    """Crash a target drawn by ``rng`` every 15-45 s, down for 1-5 s, until ``stop`` is set (never mid-crash)."""
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(*CRASH_EVERY_SECONDS)):
                await stop.wait()
        if stop.is_set():
            return
        target, down = rng.choice(TARGETS), rng.uniform(*DOWN_SECONDS)
        print(f"soak: {time.strftime('%T')} crash {target} for {down:.1f} s", flush=True)
        await drill.outage(fault_for(target, stack, platform), down_for=down)


async def soak(args: argparse.Namespace) -> DrillReport:
    rng = random.Random(args.seed)
    started = time.monotonic()
    budget = args.max_minutes * 60
    env = read_platform_env()
    kubectl = platform_kubectl(env)
    namespace = f"ucim-soak-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    platform = PlatformDaemons()
    try:
        async with running_stack(env, namespace) as stack:
            drill = Drill(stack, f"soak seed {args.seed}", rng=rng)
            users = ucloud_users(args.users)
            stop = asyncio.Event()
            schedule = random.Random(rng.random())
            crashes = asyncio.create_task(chaos(drill, schedule, stack, platform, stop))
            try:
                await stream(drill, rng, users, args, started + budget * 2 / 3)
            finally:
                stop.set()
                await crashes
            report = await drill.finish(timeout=max(30.0, started + budget - time.monotonic()))
            stack.keep_logs = bool(report.violations())
            if stack.keep_logs:
                print(f"soak: the components' logs stay in {stack.workdir}", flush=True)
            return report
    finally:
        await platform.start()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The table and the exit status come from the report itself, not from its JSON document.
    reports: list[DrillReport] = []

    def measure() -> dict[str, Any]:
        reports.append(asyncio.run(soak(args)))
        return reports[0].to_json()

    fields = {"seed": args.seed, "users": args.users, "interval": args.interval}
    status = run_bench("soak", args, measure, lambda _: reports[0].table(), **fields)
    return 1 if status == 0 and reports[0].violations() else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

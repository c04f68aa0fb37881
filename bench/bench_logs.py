#!/usr/bin/env python3
"""Log follow latency: a line written by a running job → Core's stand-in receiving it on the follow socket.

Runs the whole of ucim as processes (``ucim.testing.stack.running_stack``) against the local
platform, as root, in a fresh namespace ``ucim-bench-logs-<rand>``. Each of ``--jobs`` jobs (alice's,
the stand-in's ``run-command``) prints ``--lines`` lines, one every ``--interval`` seconds, each
carrying the wall-clock time just before it was written (``date +%s.%N``; the local platform's
compute nodes share this machine's clock). The stand-in follows the job from its submission
(IN_QUEUE) to its end; every line it receives is timed at receipt against the time in the line.

Path measured: slurmstepd writes stdout.txt → inotify wakes alice's instance → NDJSON through the
bridge's tunnel → gateway → websocket frame → the stand-in. The anchor polls every 200 ms after
waiting for RUNNING; targets: p50 ≤ 250 ms, p99 ≤ 1 s.

    python3 -m bench logs                       # 2 jobs of 100 lines, 0.1 s apart
    python3 -m bench logs --jobs 3 --lines 200 --interval 0.05 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any, Final

from bench.report import bench_parser, in_own_namespace, run_bench, summary
from ucim.common.protocol import JobState
from ucim.testing.stack import Stack, running_stack

USER: Final = "alice"
TARGETS: Final = {"p50_ms": 250.0, "p99_ms": 1000.0}


def command(lines: int, interval: float) -> str:
    return f'for i in $(seq 1 {lines}); do echo "$i $(date +%s.%N)"; sleep {interval}; done'


async def follow_one(stack: Stack, job: str, lines: int, interval: float) -> tuple[list[float], int]:
    """Submit one job and follow it to its end: the latencies in ms, and how many lines arrived."""
    spec = stack.core.make_job(job, USER, ("run-command", "1"), {"command": command(lines, interval)})
    await stack.core.create_jobs([spec])
    latencies: list[float] = []
    pending, seen = "", 0
    async for frame in stack.core.follow_job(job, USER):
        received = time.time()
        if frame.get("type") != "message" or frame["payload"]["stdout"] is None:
            continue
        pending += frame["payload"]["stdout"]
        *complete, pending = pending.split("\n")
        for line in complete:
            _, _, written = line.partition(" ")
            latencies.append((received - float(written)) * 1000)
            seen += 1
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    return latencies, seen


async def follow_all(opts: argparse.Namespace, env: dict[str, str], namespace: str) -> list[tuple[list[float], int]]:
    async with running_stack(env, namespace) as stack:
        stack.keep_logs = opts.keep_logs
        jobs = [str(uuid.uuid4().int % 10**9) for _ in range(opts.jobs)]
        return await asyncio.gather(*(follow_one(stack, job, opts.lines, opts.interval) for job in jobs))


def bench(opts: argparse.Namespace) -> dict[str, Any]:
    results = in_own_namespace("logs", lambda env, namespace: follow_all(opts, env, namespace))
    samples = [ms for latencies, _ in results for ms in latencies]
    received = sum(seen for _, seen in results)
    latency = summary(samples)
    ok = latency.get("p50", 1e9) <= TARGETS["p50_ms"] and latency.get("p99", 1e9) <= TARGETS["p99_ms"]
    return {
        "lines_written": opts.jobs * opts.lines,
        "lines_received": received,
        "line_to_core_ms": latency,
        "verdict": {"ok": ok and received == opts.jobs * opts.lines},
    }


def table(document: dict[str, Any]) -> str:
    latency = document["line_to_core_ms"]
    rows = [
        f"log follow: {document['lines_received']}/{document['lines_written']} lines received "
        f"({document['jobs']} jobs, {document['interval_s']} s apart), {document['duration_s']} s",
        f"{'':24}{'n':>6}{'p50':>10}{'p99':>10}{'min':>10}{'max':>10}",
        f"{'line → Core (ms)':24}{latency.get('n', 0):>6}"
        + "".join(f"{latency.get(key, float('nan')):>10.1f}" for key in ("p50", "p99", "min", "max")),
        f"targets: p50 ≤ {TARGETS['p50_ms']:g} ms, p99 ≤ {TARGETS['p99_ms']:g} ms: "
        + ("met" if document["verdict"]["ok"] else "NOT met"),
    ]
    return "\n".join(rows)


def main() -> int:
    parser = bench_parser(__doc__, keep_logs=True)
    parser.add_argument("--jobs", type=int, default=2, help="jobs followed at once (default 2)")
    parser.add_argument("--lines", type=int, default=100, help="lines per job (default 100)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between lines (default 0.1)")
    opts = parser.parse_args()
    if not 1 <= opts.jobs <= 20 or not 1 <= opts.lines <= 10_000 or not 0.0 <= opts.interval <= 5.0:
        parser.error("--jobs 1..20, --lines 1..10000, --interval 0..5")
    return run_bench(
        "logs",
        opts,
        lambda: bench(opts),
        table,
        needs_root=True,
        jobs=opts.jobs,
        interval_s=opts.interval,
        targets=TARGETS,
    )


if __name__ == "__main__":
    sys.exit(main())

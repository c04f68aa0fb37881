#!/usr/bin/env python3
"""How long one monitoring cycle takes: ``SlurmClient.poll()`` with 0, 100 and 1000 tracked jobs.

Runs against the real Slurm of the local platform (``python3 hack/local_platform.py up``), as root,
like the bridge. It submits *held* jobs (``sbatch -H``: they never run and take no resources),
grows the queue to each size, times ``poll()`` over all tracked jobs and, for comparison, the
other single-call queries a poll could be built on, then cancels every job it submitted (one
``scancel``) however it ends.

    python3 -m bench slurm_poll                      # sizes 0,100,1000; 20 rounds each
    python3 -m bench slurm_poll --sizes 0,100 --rounds 10 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
With 0 tracked jobs ``poll([])`` runs no command at all; that row times ``poll()`` of one id
Slurm does not know (the path of a job that has left slurmctld's memory).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.report import bench_parser, run_bench
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_parsing import SACCT_FIELDS, squeue_format
from ucim.testing.stack import read_platform_env

MAX_JOBS = 2000  # hard bound on what one run may submit
SUBMIT_CONCURRENCY = 8


def platform_slurm_conf() -> Path:
    conf = read_platform_env().get("SLURM_CONF")
    if conf is None:
        raise SystemExit("no SLURM_CONF in the local platform's platform.env: is the platform up?")
    return Path(conf)


async def timed(fn: Callable[[], Awaitable[Any]], rounds: int) -> tuple[list[float], Any]:
    samples: list[float] = []
    last: Any = None
    await fn()  # warm-up
    for _ in range(rounds):
        started = time.perf_counter()
        last = await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, last


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
    }


async def submit_held(client: SlurmClient, name: str, count: int, workdir: Path) -> list[int]:
    """``count`` held one-line jobs, a few sbatch calls at a time."""
    semaphore = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def one() -> int:
        async with semaphore:
            result = await client.run(
                "sbatch",
                ["--parsable", "-H", "-J", name, "-o", "/dev/null", "-t", "1", "--wrap", "true"],
                cwd=workdir,
                query=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"sbatch failed: {result.stderr.strip()}")
            return int(result.stdout.strip().split(";")[0])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def measure(client: SlurmClient, ids: list[int], rounds: int) -> dict[str, Any]:
    id_list = ",".join(str(i) for i in sorted(ids)) if ids else "2147483000"
    row: dict[str, Any] = {"tracked_jobs": len(ids)}

    poll_ids = ids or [2147483000]
    samples, result = await timed(lambda: client.poll(poll_ids), rounds)
    row["poll"] = {**summary(samples), "found": len(result), "complete": set(result) == set(ids)}

    queries: dict[str, tuple[str, list[str]]] = {
        "squeue -O -j ids": ("squeue", ["-h", "-t", "all", "-O", squeue_format(), "-j", id_list]),
        "squeue -O (all jobs)": ("squeue", ["-h", "-t", "all", "-O", squeue_format()]),
        "scontrol show job -o (all)": ("scontrol", ["show", "job", "-o"]),
        "sacct -XPn -j ids": ("sacct", ["-X", "-P", "-n", "-a", "-o", ",".join(SACCT_FIELDS), "-j", id_list]),
    }
    for label, (tool, args) in queries.items():

        async def run(tool: str = tool, args: list[str] = args) -> int:
            return (await client.run(tool, args)).returncode

        samples, _ = await timed(run, rounds)
        row[label] = summary(samples)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    labels = ["poll", "squeue -O -j ids", "squeue -O (all jobs)", "scontrol show job -o (all)", "sacct -XPn -j ids"]
    header = f"{'query (median / p95 ms)':<30}" + "".join(f"{r['tracked_jobs']:>18} jobs" for r in rows)
    lines = [header, "-" * len(header)]
    for label in labels:
        cells = "".join(f"{r[label]['median_ms']:>11.1f} / {r[label]['p95_ms']:>6.1f}" for r in rows)
        lines.append(f"{label:<30}{cells}")
    complete = "".join(f"{str(r['poll']['complete']) + ' (' + str(r['poll']['found']) + ')':>23}" for r in rows)
    lines.append(f"{'poll complete (found)':<30}{complete}")
    return "\n".join(lines)


async def measure_sizes(config: SlurmConfig, sizes: list[int], rounds: int) -> dict[str, Any]:
    """Grow a queue of held jobs to each size and measure it; cancel them all however it ends."""
    client = SlurmClient(config)
    if not await client.ping():
        print("slurmctld does not answer: is the platform up?", file=sys.stderr)
        raise SystemExit(2)  # as before run_bench: a platform that is not up exits 2, with nothing emitted
    name = f"ucim-bench-{uuid.uuid4().hex[:8]}"
    ids: list[int] = []
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            if size > len(ids):
                t0 = time.perf_counter()
                ids += await submit_held(client, name, size - len(ids), Path(tempfile.gettempdir()))
                print(f"# submitted {len(ids)} held jobs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            rows.append(await measure(client, ids[:size], rounds))
    finally:
        if ids:
            t0 = time.perf_counter()
            await client.cancel(ids)
            cancel_s = time.perf_counter() - t0
            print(f"# cancelled {len(ids)} jobs in one scancel: {cancel_s:.2f} s", file=sys.stderr)
    return {"job_name": name, "results": rows}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", default="0,100,1000", help="tracked-job counts, ascending")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--slurm-conf", type=Path, default=None, help="default: from the platform's env file")
    opts = parser.parse_args()
    sizes = sorted({int(s) for s in opts.sizes.split(",")})
    if sizes[-1] > MAX_JOBS:
        parser.error(f"at most {MAX_JOBS} jobs")
    config = SlurmConfig(
        slurm_conf=opts.slurm_conf or platform_slurm_conf(),
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "USER": "root"},
        timeout_seconds=120,
    )
    return run_bench(
        "slurm_poll",
        opts,
        lambda: asyncio.run(measure_sizes(config, sizes, opts.rounds)),
        lambda document: table(document["results"]),
        rounds=opts.rounds,
    )


if __name__ == "__main__":
    sys.exit(main())

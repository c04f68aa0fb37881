#!/usr/bin/env python3
"""What the account reconciler's reads cost: ``SlurmAccounts.snapshot()`` (one ``sacctmgr show assoc``) and
``usage_minutes()`` (one ``sshare``) with 0 and 1,000 workspace accounts of 2 members each.

Runs against the real Slurm of the local platform (``python3 hack/local_platform.py up``), as root, like
the bridge, and under the platform's lock (``flock /tmp/ucim-platform.lock``: slurmdbd is shared). It
creates the accounts under a parent of their own with a few bulk sacctmgr calls (``name=a1,a2,...``; ``add user
name=alice,bob account=a1,a2,...``), times the reads at each size, also times one ``ensure_account`` of an
existing account and one ``set_limits``, and deletes every account it made however it ends: the parent first,
which takes the associations of all with it in one call (deleting thousands of accounts by name renumbers the
association table once for each: minutes at 5,000), then the accounts, left without any.

    python3 -m bench accounts                        # sizes 0,1000; 10 rounds each
    python3 -m bench accounts --sizes 0,100,1000 --rounds 5 --json out.json
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_slurm_poll import platform_slurm_conf, summary, timed
from bench.report import bench_parser, run_bench
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.slurm_bridge.slurm_accounts import SlurmAccounts

MAX_ACCOUNTS = 10_000  # hard bound on what one run may create
CHUNK = 500  # accounts per bulk sacctmgr call (~15 KB of arguments)
MEMBERS = ("alice", "bob")


async def sacctmgr(client: SlurmClient, *args: str) -> None:
    result = await client.run("sacctmgr", ["-i", *args])
    if result.returncode != 0:
        raise RuntimeError(f"sacctmgr {' '.join(args)[:200]} failed: {result.stdout.strip()} {result.stderr.strip()}")


async def create(client: SlurmClient, names: list[str], parent: str) -> None:
    for start in range(0, len(names), CHUNK):
        chunk = ",".join(names[start : start + CHUNK])
        await sacctmgr(client, "create", "account", f"name={chunk}", f"parent={parent}",
                       "description=ucim bench", "organization=ucim")  # fmt: skip
        await sacctmgr(client, "add", "user", f"name={','.join(MEMBERS)}", f"account={chunk}")


async def delete(client: SlurmClient, names: list[str], parent: str) -> None:
    await sacctmgr(client, "delete", "account", "where", f"name={parent}")
    for start in range(0, len(names), CHUNK):
        await sacctmgr(client, "delete", "account", "where", f"name={','.join(names[start : start + CHUNK])}")


async def measure(accounts: SlurmAccounts, size: int, names: list[str], rounds: int) -> dict[str, Any]:
    row: dict[str, Any] = {"accounts": size}
    samples, snapshot = await timed(accounts.snapshot, rounds)
    row["snapshot"] = {**summary(samples), "accounts_seen": len(snapshot)}
    samples, usage = await timed(accounts.usage_minutes, rounds)
    row["usage_minutes"] = {**summary(samples), "accounts_seen": len(usage)}
    if names:
        one = names[0]
        assert snapshot[one].users == frozenset(MEMBERS), snapshot[one]
        assert one in usage
        samples, _ = await timed(lambda: accounts.ensure_account(one, description="x", organization="x"), rounds)
        row["ensure_account (exists)"] = summary(samples)
        samples, _ = await timed(
            lambda: accounts.set_limits(one, locked=False, quota_minutes=1000, fairshare=None), rounds
        )
        row["set_limits"] = summary(samples)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    labels = ["snapshot", "usage_minutes", "ensure_account (exists)", "set_limits"]
    header = f"{'call (median / p95 ms)':<26}" + "".join(f"{r['accounts']:>14} accounts" for r in rows)
    lines = [header, "-" * len(header)]
    for label in labels:
        cells = "".join(
            f"{r[label]['median_ms']:>12.1f} / {r[label]['p95_ms']:>6.1f}" if label in r else f"{'-':>23}" for r in rows
        )
        lines.append(f"{label:<26}{cells}")
    return "\n".join(lines)


async def measure_sizes(config: SlurmConfig, sizes: list[int], rounds: int) -> dict[str, Any]:
    """Grow the accounts to each size and measure; delete them all however it ends."""
    client = SlurmClient(config)
    accounts = SlurmAccounts(client=client)
    prefix = f"ucimbench{uuid.uuid4().hex[:8]}_"
    names: list[str] = []
    rows: list[dict[str, Any]] = []
    parent = prefix.rstrip("_")
    await sacctmgr(client, "create", "account", f"name={parent}", "description=ucim bench", "organization=ucim")
    try:
        for size in sizes:
            if size > len(names):
                more = [f"{prefix}{i:05d}" for i in range(len(names), size)]
                t0 = time.perf_counter()
                names += more
                await create(client, more, parent)
                print(f"# created {len(more)} accounts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            rows.append(await measure(accounts, size, names[:size], rounds))
    finally:
        t0 = time.perf_counter()
        await delete(client, names, parent)
        print(f"# deleted {len(names)} accounts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return {"prefix": prefix, "members": list(MEMBERS), "results": rows}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", default="0,1000", help="workspace-account counts, ascending")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--slurm-conf", type=Path, default=None, help="default: from the platform's env file")
    opts = parser.parse_args()
    sizes = sorted({int(s) for s in opts.sizes.split(",")})
    if sizes[-1] > MAX_ACCOUNTS:
        parser.error(f"at most {MAX_ACCOUNTS} accounts")
    config = SlurmConfig(
        slurm_conf=opts.slurm_conf or platform_slurm_conf(),
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "USER": "root"},
        timeout_seconds=300,
    )
    return run_bench(
        "accounts",
        opts,
        lambda: asyncio.run(measure_sizes(config, sizes, opts.rounds)),
        lambda document: table(document["results"]),
        needs_root=True,
        rounds=opts.rounds,
    )


if __name__ == "__main__":
    sys.exit(main())

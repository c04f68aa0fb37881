#!/usr/bin/env python3
"""How fast the instance browses a 10,000-entry folder.

Builds a folder of N files (default 10,000) in a temporary home and measures, for each
sort (name, size, modification time):

* **function**: ``Files.browse`` called directly (scandir + sort + page + stat of the page);
* **http**: ``POST /files/browse`` on the instance app served on a unix socket in this
  process (JSON in and out, the thread hop, aiohttp), as the bridge's ingress reaches it;

for the first page of 100 entries and for walking every page of 1,000 with ``next``.

    python -m bench browse                              # 10,000 entries, 30 rounds
    python -m bench browse --entries 50000 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
"""

from __future__ import annotations

import asyncio
import getpass
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.report import bench_parser, run_bench
from ucim.common.protocol import Drive
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.files import Files
from ucim.user_sidecar.keys import DRIVES
from ucim.user_sidecar.settings import SidecarSettings

SORTS = {"name": "PATH", "size": "SIZE", "modified": "MODIFIED_AT"}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1 if len(ordered) >= 10 else -1] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def timed(rounds: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    await call()  # warm
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def run(entries: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"entries": entries, "rounds": rounds, "cases": []}
    with tempfile.TemporaryDirectory(prefix="ucim-bench-browse-") as home:
        folder = Path(home) / "big"
        folder.mkdir()
        for i in range(entries):
            (folder / f"file-{i:06d}.dat").write_bytes(b"x" * (i % 997))
        app = init_app(SidecarSettings(user=getpass.getuser(), home=Path(home)))
        drive = Drive(id="home", provider_generated_id=f"home:{getpass.getuser()}")
        files = Files(app[DRIVES].resolve(drive))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        socket = str(Path(home) / "bench.sock")
        await web.UnixSite(runner, socket).start()
        connector = aiohttp.UnixConnector(path=socket)
        try:
            async with aiohttp.ClientSession(connector=connector, base_url="http://instance") as session:

                async def http(sort: str, per_page: int, token: str | None) -> dict[str, Any]:
                    browse = {"flags": {"path": "/home/big"}, "itemsPerPage": per_page, "next": token, "sortBy": sort}
                    body = {"resolvedCollection": drive.model_dump(by_alias=True), "Browse": browse}
                    async with session.post("/files/browse", json=body) as response:
                        assert response.status == 200, await response.text()
                        page: dict[str, Any] = await response.json()
                        return page

                for name, sort in SORTS.items():

                    async def function_first(sort: str = sort) -> None:
                        files.browse("/home/big", sort_by=sort, items_per_page=100)

                    async def function_all(sort: str = sort) -> None:
                        token = None
                        seen = 0
                        while True:
                            page = files.browse("/home/big", sort_by=sort, items_per_page=1000, next_token=token)
                            seen += len(page.items)
                            if not (token := page.next):
                                break
                        assert seen == entries

                    async def http_first(sort: str = sort) -> None:
                        await http(sort, 100, None)

                    async def http_all(sort: str = sort) -> None:
                        token = None
                        seen = 0
                        while True:
                            page = await http(sort, 1000, token)
                            seen += len(page["items"])
                            if not (token := page["next"]):
                                break
                        assert seen == entries

                    for path, what, call in [
                        ("function", "first 100", function_first),
                        ("http", "first 100", http_first),
                        ("function", "all, 1000/page", function_all),
                        ("http", "all, 1000/page", http_all),
                    ]:
                        n = rounds if what == "first 100" else max(3, rounds // 5)
                        stats = summary(await timed(n, call))
                        results["cases"].append({"sort": name, "path": path, "what": what, "rounds": n, **stats})
        finally:
            await runner.cleanup()
    return results


def table(document: dict[str, Any]) -> str:
    lines = [
        f"browse of a {document['entries']}-entry folder",
        f"{'sort':<10} {'path':<9} {'what':<16} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9}",
    ]
    for case in document["cases"]:
        lines.append(
            f"{case['sort']:<10} {case['path']:<9} {case['what']:<16} "
            f"{case['p50_ms']:>9.2f} {case['p90_ms']:>9.2f} {case['max_ms']:>9.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    opts = parser.parse_args()
    return run_bench("browse", opts, lambda: asyncio.run(run(opts.entries, opts.rounds)), table)


if __name__ == "__main__":
    sys.exit(main())

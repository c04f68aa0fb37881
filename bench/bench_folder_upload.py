#!/usr/bin/env python3
"""A folder of 10,000 small files uploaded over WEBSOCKET_V2, side by side with CHUNKED per file and ``cp -r``.

Side by side in one run, on one disk (a work folder on the filesystem of the users' homes),
every round in an order that rotates from round to round, the same sources (``bench_files``'
small files: 1 to 4 KiB each, read once before the rounds):

* (a) **cp -r** on the same disk, followed by ``sync -f`` (the instance fsyncs each file
  before it names it; ``--no-fsync`` leaves the sync out);
* (b) **CHUNKED, per file, full path**: for each file UCloud/Core's stand-in asks the gateway
  for an endpoint (``files/upload`` of type FILE) and the browser's client sends the file as
  one chunk, gateway → bridge ingress → alice's instance; ``--concurrency`` files at a time
  (default 4, as ``bench files``) — what a client without folder uploads does;
* (c) **WEBSOCKET_V2, one folder, full path**: one ``files/upload`` of type FOLDER, then the
  whole folder over one websocket as UCloud's web client sends it
  (``ucim.testing.folder_upload_client``: listings of up to 5,000 files, a file's data after
  the server's OK, at most 256 files in flight), through the same gateway and bridge. The
  figure is the time until the last FILES_COMPLETED; the table also counts those progress
  messages (the protocol's progress: the web client shows them as files done).

Files/s is the p50 over the rounds (min and max in the JSON). Targets (issue): (c) ≥ 3 x (b).
The ratio of (c) to (a) is reported. At the end each lane's copy is compared with the source.

The full path needs root (the bridge forks instances as the users) and the local platform
(``python3 hack/local_platform.py up``); it runs the whole of ucim as processes in a fresh
namespace, as ``bench files`` does.

    python -m bench folder_upload                  # 10,000 files, 2 rounds
    python -m bench folder_upload --quick          # 1 round

The table goes to stdout, followed by the JSON document (also written to --json if given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.bench_files import (
    SMALL_FOLDER,
    USER,
    Run,
    Ucim,
    cp,
    flushed,
    machine,
    make_work_folder,
    make_workload,
    rates,
    rotated,
    running_ucim,
    same_files,
)
from bench.file_transfers import FullPathContender, TransferError, each_concurrently
from bench.report import bench_parser, run_bench
from ucim.common.protocol import FilesCreateUploadResponseItem
from ucim.testing.folder_upload_client import LocalFile, files_of

TARGETS: Final = {"folder_vs_chunked": 3.0}
LANES: Final = ("cp", "chunked", "folder")
LABELS: Final = {
    "cp": "(a) cp -r, same disk",
    "chunked": "(b) CHUNKED per file, full path",
    "folder": "(c) WEBSOCKET_V2 folder, full path",
}


def progress(message: str) -> None:
    print(f"bench folder_upload [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Lanes:
    """Where each lane's copy goes, and how it makes one."""

    def __init__(self, run: Run, work: Path, ucim: Ucim | None, files: list[LocalFile]) -> None:
        self.run, self.work, self.ucim, self.files = run, work, ucim, files
        self.progress_messages: list[int] = []
        self.unavailable: dict[str, str] = {}
        account = pwd.getpwnam(USER)
        self.owner = (account.pw_uid, account.pw_gid)

    def destination(self, lane: str) -> Path:
        if lane == "cp":
            return self.work / "cp" / SMALL_FOLDER
        assert self.ucim is not None
        return self.ucim.home / lane / SMALL_FOLDER

    def fresh(self, lane: str) -> Path:
        """The lane's destination removed (and, for CHUNKED, made again empty: it needs the folder)."""
        destination = self.destination(lane)
        shutil.rmtree(destination, ignore_errors=True)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if lane != "cp":
            os.chown(destination.parent, *self.owner)
        if lane == "chunked":
            destination.mkdir()
            os.chown(destination, *self.owner)
        return destination

    def work_of(self, lane: str) -> Callable[[], Awaitable[None]]:
        if lane == "cp":
            return lambda: cp(self.run.workload.small, self.destination("cp"), durable=self.run.opts.fsync, folder=True)
        if lane == "chunked":
            return self.chunked
        return self.folder

    async def chunked(self) -> None:
        assert self.ucim is not None
        contender = FullPathContender(self.ucim.calls, self.ucim.drive, f"{self.ucim.folder_id}/chunked")
        small = self.run.workload.small

        async def upload(name: str) -> None:
            await contender.upload(small / name, f"{SMALL_FOLDER}/{name}")

        await each_concurrently(self.run.workload.small_names, upload, self.run.opts.concurrency)

    async def folder(self) -> None:
        assert self.ucim is not None
        contender = FullPathContender(self.ucim.calls, self.ucim.drive, f"{self.ucim.folder_id}/folder")
        item = {
            "id": contender.file_id(SMALL_FOLDER),
            "type": "FOLDER",
            "supportedProtocols": ["CHUNKED", "WEBSOCKET"],  # what the web client offers
            "conflictPolicy": "RENAME",  # the web client's choice for a dropped folder
        }
        created = FilesCreateUploadResponseItem.model_validate(await contender.create("upload", item))
        if created.protocol != "WEBSOCKET_V2":
            raise TransferError(f"files/upload of a folder answered the protocol {created.protocol}")
        result = await self.ucim.calls.core.upload_folder(created, self.files, session=self.ucim.calls.session)
        if not result.complete or result.skipped:
            raise TransferError(f"the folder upload ended early: {result.files_completed} of {result.listed} files")
        self.progress_messages.append(len(result.completions_seen))


async def one_round(lanes: Lanes, round_: int) -> None:
    for lane in rotated([key for key in LANES if key not in lanes.unavailable], round_):
        lanes.run.check_time("the rounds")
        lanes.fresh(lane)
        await flushed()
        progress(f"round {round_ + 1}: {LABELS[lane]}")
        started = time.perf_counter()
        try:
            await lanes.work_of(lane)()
        except (TransferError, aiohttp.ClientError, TimeoutError, OSError) as error:
            lanes.unavailable[lane] = f"{type(error).__name__}: {error}"
            continue
        lanes.run.add(f"small.upload.{lane}", time.perf_counter() - started)


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    work = make_work_folder()
    result: dict[str, Any] = {"machine": machine(work)}
    try:
        progress(f"writing {opts.small_files:,} small files in {work}")
        workload = await asyncio.to_thread(make_workload, work, 1, opts.small_files)
        files = [
            LocalFile(file.path, file.source.read_bytes(), file.modified_at)  # in memory, as a browser has them
            for file in await asyncio.to_thread(files_of, workload.small)
            if isinstance(file.source, Path)
        ]
        run = Run(opts, workload, deadline=time.monotonic() + opts.max_seconds)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=max(8, 2 * opts.concurrency))
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout, connector=connector))
            ucim: Ucim | None = None
            unavailable: dict[str, str] = {}
            if os.geteuid() != 0:
                unavailable = {lane: "needs root: the bridge forks the users' instances" for lane in LANES[1:]}
            else:
                try:
                    ucim = await stack.enter_async_context(running_ucim(run, session))
                except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError, LookupError) as error:
                    unavailable = {lane: f"{type(error).__name__}: {error}" for lane in LANES[1:]}
            (work / "cp").mkdir()
            lanes = Lanes(run, work, ucim, files)
            lanes.unavailable.update(unavailable)
            for round_ in range(opts.rounds):
                await one_round(lanes, round_)
            progress("comparing each lane's copy with the source")
            result["verified"] = {
                lane: await asyncio.to_thread(same_files, workload.small, lanes.destination(lane))
                for lane in LANES
                if lane not in lanes.unavailable
            }
            result["progress_messages_per_folder_upload"] = lanes.progress_messages
            result["unavailable"] = lanes.unavailable
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    result["workload"] = {
        "files": opts.small_files,
        "bytes": workload.small_bytes,
        "chunked_concurrency": opts.concurrency,
        "rounds": opts.rounds,
        "cp_synced": opts.fsync,
    }
    found = {key.rsplit(".", 1)[1]: rates(seconds, opts.small_files) for key, seconds in sorted(run.samples.items())}
    result["files_per_s"] = found
    result["ratios"] = {
        name: round(found[a]["p50"] / found[b]["p50"], 2) if a in found and b in found else None
        for name, (a, b) in {"folder_vs_chunked": ("folder", "chunked"), "folder_vs_cp": ("folder", "cp")}.items()
    }
    ratio = result["ratios"]["folder_vs_chunked"]
    result["verdict"] = {
        "folder_vs_chunked": {
            "measured": ratio,
            "limit": TARGETS["folder_vs_chunked"],
            "ok": None if ratio is None else ratio >= TARGETS["folder_vs_chunked"],
        }
    }
    return result


def table(result: dict[str, Any]) -> str:
    m, w = result["machine"], result["workload"]
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['filesystem']} on {m['device']};"
        f" load {m['load_average_1_5_15'][0]} at the start, {m['load_average_at_end'][0]} at the end",
        f"{w['files']:,} small files ({w['bytes'] / 1e6:.1f} MB), files/s, p50 [min-max] of {w['rounds']} rounds",
    ]
    for lane in LANES:
        figure = result["files_per_s"].get(lane)
        if figure is None:
            lines.append(f"  {LABELS[lane]:40} not available ({result['unavailable'].get(lane, 'no figures')})")
        else:
            lines.append(f"  {LABELS[lane]:40} {figure['p50']:9.1f} [{figure['min']:.0f}-{figure['max']:.0f}]")
    ratios = result["ratios"]
    lines.append(f"  (c) / (b): {ratios['folder_vs_chunked']}x (goal ≥ {TARGETS['folder_vs_chunked']}x);"
                 f" (c) / (a): {ratios['folder_vs_cp']}x")  # fmt: skip
    counts = result["progress_messages_per_folder_upload"]
    if counts:
        lines.append(f"  FILES_COMPLETED progress messages per folder upload: {counts}")
    bad = [lane for lane, same in result["verified"].items() if not same]
    lines.append(f"copies compared with the source: {'all identical' if not bad else f'DIFFERENT: {bad}'}")
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__, keep_logs=True)
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--small-files", type=int, default=10_000, help="how many small files (default 10,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="CHUNKED files in flight (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false", help="cp is not followed by sync -f")
    parser.add_argument("--max-seconds", type=float, default=900, help="give up after this long (default 900)")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds = 1
    if opts.small_files < 1 or opts.concurrency < 1 or opts.rounds < 1:
        parser.error("--small-files, --concurrency and --rounds must be ≥ 1")
    return run_bench("folder_upload", opts, lambda: asyncio.run(bench(opts)), table, targets=TARGETS)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Moving files: a large file and many small ones up and down, side by side with cp and nginx; browsing.

Side by side in one run, on one disk (a work folder on the filesystem of the users' homes;
the table says which), every round in an order that rotates from round to round:

* (a) **cp** on the same disk: ``cp --reflink=never`` of the large file, ``cp -r`` of the
  folder of small files; one copy stands for both directions;
* (b) **nginx → plain endpoint**: nginx (the Debian package, its own process and config,
  ``bench/nginx.py``) proxying without buffering to ``bench/plain_endpoint.py``, which
  writes POSTed chunks to disk as they arrive and serves GETs with sendfile;
* (c) **the full path**: UCloud/Core's stand-in asks the gateway for an endpoint
  (``files/upload``, ``files/download``, one item per file; Core's time is part of each
  transfer), then the transfer goes gateway → bridge ingress → alice's instance, which
  writes in alice's home.

(b) and (c) share one client (``bench/file_transfers.py``): CHUNKED uploads in chunks of
16,000,000 bytes like UCloud's web client, downloads written to disk as they arrive; it moves
the bytes with sendfile and splice, so that the client's own copying does not take the CPU
the servers are timed on (a browser has a machine of its own). Small
files go ``--concurrency`` at a time (default 4) for (b) and (c); cp copies them one by one.
The baselines keep what they store as safe as the instance does (it answers a file's last
chunk once the file and its folder are fsynced, as the CHUNKED rules ask): the plain
endpoint does the same, and cp is followed by ``sync`` of the copy (``sync -f`` of the file
system for the folder of small files). ``--no-fsync`` leaves that out of the baselines.
The sources are made once and read once before the rounds (a warm page cache; caches are
never dropped, which would take root from everyone else on the machine); before each timed
transfer its destination is removed and ``sync`` flushes what earlier transfers left dirty,
so that no transfer pays for another's write-back. The large file first goes one round per lane
untimed (``--warm-up-rounds``): on a VM the guest's first use of memory it never touched costs
more than later ones (this one sets up its memory lazily, as it first needs it), which is the
host's cost, not the contender's. Every writer into the page cache here writes at most
256 KiB per call, as cp (128 KiB) and the instance do (``ucim.common.file_writes`` says why:
on a VM that hands free memory back to its host, 1 GiB in 1 MiB calls took 1.8 s, not 0.2 s).
Throughput is MB/s with MB = 10^6 bytes;
each figure is the p50 over the rounds (min and max in the JSON). At the end every stored and
downloaded copy is compared with its source.

**Browse**: the first 100 entries (by name) of a 10,000-entry folder in alice's home,
``--browse-calls`` times (≥ 200) each way, rotating: through the gateway (as Core calls it),
through the bridge ingress, on the instance's unix socket, and through two bare aiohttp relays
in front of that socket (``bench/bare_relays.py``: what any two Python hops add on this
machine, the floor for the gateway and the bridge); p50/p99, and what the gateway adds.

Targets (issue): for the large file, full path ≥ 0.7 x nginx and ≥ 0.5 x cp, in both
directions; browsing 100 entries through the gateway adds ≤ 2 ms p50 over the instance itself.

The full path needs root (the bridge forks instances as the users) and the local platform
(``python3 hack/local_platform.py up``); it runs the whole of ucim as processes
(``ucim.testing.stack.running_stack``) in a fresh namespace ``ucim-bench-<rand>``. Whatever of
it does not work yet is reported as "not available (why)" and the rest still runs.

    python -m bench files                    # 1 GiB x 5 rounds, 10,000 small files x 2, 300 browse calls
    python -m bench files --quick            # 1 round each, 200 browse calls
    python -m bench files --no-full-path     # the baselines only (no root needed)

The table goes to stdout, followed by the JSON document (also written to --json if given).
Everything the run made (files, processes, namespace) is removed at the end, however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.bare_relays import bare_relays
from bench.bench_job_path import release_leftovers
from bench.file_transfers import (
    Contender,
    FullPathContender,
    PlainContender,
    ProviderCalls,
    TransferError,
    each_concurrently,
)
from bench.nginx import NginxUnavailableError, let_workers_connect, running_nginx
from bench.report import bench_parser, run_bench
from ucim.common.conditions import is_true
from ucim.common.instance_api import FILES_BROWSE_PATH
from ucim.common.kube import Kube
from ucim.common.protocol import Drive
from ucim.common.resources import UserInstance
from ucim.common.transfer_contract import WEB_CLIENT_CHUNK_BYTES
from ucim.slurm_bridge.instances import socket_path
from ucim.testing.core_drives import browse_body
from ucim.testing.core_standin import CoreStandIn
from ucim.testing.stack import CLUSTER, Stack, platform_kubectl, read_platform_env, running_stack

USER: Final = "alice"
REPO: Final = Path(__file__).resolve().parents[1]
BIG_NAME: Final = "big.dat"
SMALL_FOLDER: Final = "small"
BROWSE_FOLDER: Final = "browse"
BROWSE_PAGE: Final = 100
BROWSE_WARM_UP: Final = 10
MB: Final = 1_000_000
TARGETS: Final = {
    "large_full_vs_nginx": 0.7,
    "large_full_vs_cp": 0.5,
    "browse_added_p50_ms": 2.0,
}
LANES: Final = ("cp", "nginx", "full")
LABELS: Final = {
    "cp": "(a) cp, same disk",
    "nginx": "(b) nginx → plain endpoint",
    "full": "(c) full path (gateway → bridge → instance)",
    "socket": "instance, on its unix socket",
    "ingress": "instance, through the bridge ingress",
    "gateway": "gateway, as Core calls it",
    "bare": "two bare aiohttp relays (the floor)",
}


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Workload:
    """The sources: one large file and a folder of small ones, in the bench's work folder."""

    big: Path
    big_bytes: int
    small: Path
    small_names: list[str]
    small_bytes: int


def make_workload(folder: Path, size_mib: int, count: int) -> Workload:
    """Write the sources once and read them once (the page cache holds them from then on)."""
    block = os.urandom(64 << 20)
    big = folder / "source" / BIG_NAME
    big.parent.mkdir()
    with big.open("wb") as out:
        left = size_mib << 20
        while left:
            left -= out.write(block[: min(left, len(block))])
    small = folder / "source" / SMALL_FOLDER
    small.mkdir()
    names = [f"file-{i:05d}.dat" for i in range(count)]
    total = 0
    for i, name in enumerate(names):
        size = 1024 + (i * 7919) % 3073  # 1 to 4 KiB, spread evenly
        start = (i * 4099) % (len(block) - size)
        (small / name).write_bytes(block[start : start + size])
        total += size
    with big.open("rb") as warm:
        while warm.read(16 << 20):
            pass
    return Workload(big, size_mib << 20, small, names, total)


def work_root() -> Path:
    """A temporary folder on the filesystem of the users' homes (so that every contender writes the same disk)."""
    home = Path(pwd.getpwnam(USER).pw_dir) if _user_exists(USER) else Path.home()
    for candidate in (Path("/var/tmp"), Path(tempfile.gettempdir()), home.parent):  # noqa: S108 (a bench's temp)
        with contextlib.suppress(OSError):
            if candidate.stat().st_dev == home.stat().st_dev and os.access(candidate, os.W_OK):
                return candidate
    return Path(tempfile.gettempdir())


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_work_folder() -> Path:
    work = Path(tempfile.mkdtemp(prefix="ucim-bench-files-", dir=work_root()))
    work.chmod(0o711)  # nginx's workers (www-data) reach the plain endpoint's socket below it
    return work


def machine(folder: Path) -> dict[str, Any]:
    found = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(folder)], capture_output=True, text=True, check=False
    ).stdout.split()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    home = Path(pwd.getpwnam(USER).pw_dir) if _user_exists(USER) else None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "work_folder": str(folder),
        "device": found[0] if found else "?",
        "filesystem": found[1] if len(found) > 1 else "?",
        "free_gib": round(shutil.disk_usage(folder).free / 2**30, 1),
        "same_filesystem_as_home": home is not None and home.stat().st_dev == folder.stat().st_dev,
        # Others may share the machine (and its 2 CPUs): the load when the run started.
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
    }


# --------------------------------------------------------------------------- lanes and samples


@dataclass
class Lane:
    """One contender: where its uploads land (a local folder) and where its downloads go."""

    key: str
    store: Path
    downloads: Path
    contender: Contender | None = None  # None for cp
    owner: tuple[int, int] | None = None  # who must own the store's folders (the full path: alice)
    failed: str | None = None

    def fresh_folder(self, path: Path) -> None:
        """``path`` removed and made again, empty, owned as the store must be."""
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        if self.owner is not None:
            os.chown(path, *self.owner)


@dataclass
class Run:
    opts: argparse.Namespace
    workload: Workload
    lanes: dict[str, Lane] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # "<workload>.<direction>.<lane>" → seconds
    deadline: float = 0.0

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"--max-seconds reached during {what}")


async def flushed() -> None:
    """Write back what earlier transfers left dirty, so that the next one does not pay for it."""
    await asyncio.to_thread(os.sync)


async def timed(call: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def command(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed: {err.decode().strip()}")


async def cp(source: Path, destination: Path, *, durable: bool, folder: bool = False) -> None:
    """``cp`` (``-r`` for a folder), then, if ``durable``, ``sync`` of the copy (a folder: its file system)."""
    await command("cp", "--reflink=never", *(["-r"] if folder else []), str(source), str(destination))
    if durable:
        await command("sync", *(["-f"] if folder else []), str(destination))


def rotated(keys: Sequence[str], round_: int) -> list[str]:
    shift = round_ % len(keys) if keys else 0
    return [*keys[shift:], *keys[:shift]]


def progress(message: str) -> None:
    """Where a long run is, on stderr (stdout carries only the table and the JSON)."""
    print(f"bench files [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def guarded(run: Run, lane: Lane, what: str, call: Callable[[], Awaitable[None]]) -> float | None:
    """Time ``call``; a failure takes the lane out of the run (with why) instead of ending it."""
    progress(f"{LABELS[lane.key]}: {what}")
    try:
        return await timed(call)
    except (TransferError, aiohttp.ClientError, TimeoutError, OSError) as error:
        lane.failed = f"{what}: {error}"
        run.unavailable[lane.key] = lane.failed
        return None


# --------------------------------------------------------------------------- the rounds


async def large_round(run: Run, round_: int) -> None:
    for key in rotated([k for k in LANES if k in run.lanes], round_):
        lane = run.lanes[key]
        if not lane.failed:
            run.check_time("the large-file rounds")
            await (large_copy(run, lane) if lane.contender is None else large_transfers(run, lane, lane.contender))


async def large_copy(run: Run, lane: Lane) -> None:
    stored = lane.store / BIG_NAME
    stored.unlink(missing_ok=True)
    await flushed()
    seconds = await guarded(run, lane, "cp", lambda: cp(run.workload.big, stored, durable=run.opts.fsync))
    if seconds is not None:
        run.add(f"large.copy.{lane.key}", seconds)


async def large_transfers(run: Run, lane: Lane, contender: Contender) -> None:
    stored, downloaded = lane.store / BIG_NAME, lane.downloads / BIG_NAME
    stored.unlink(missing_ok=True)
    await flushed()
    seconds = await guarded(run, lane, "upload", lambda: contender.upload(run.workload.big, BIG_NAME))
    if seconds is None:
        return
    run.add(f"large.upload.{lane.key}", seconds)
    downloaded.unlink(missing_ok=True)
    await flushed()
    seconds = await guarded(run, lane, "download", lambda: contender.download(BIG_NAME, downloaded))
    if seconds is not None:
        run.add(f"large.download.{lane.key}", seconds)


async def small_round(run: Run, round_: int) -> None:
    for key in rotated([k for k in LANES if k in run.lanes], round_):
        lane = run.lanes[key]
        if not lane.failed:
            run.check_time("the small-file rounds")
            await (small_copy(run, lane) if lane.contender is None else small_transfers(run, lane, lane.contender))


async def small_copy(run: Run, lane: Lane) -> None:
    stored = lane.store / SMALL_FOLDER
    shutil.rmtree(stored, ignore_errors=True)
    await flushed()
    seconds = await guarded(
        run, lane, "cp -r", lambda: cp(run.workload.small, stored, durable=run.opts.fsync, folder=True)
    )
    if seconds is not None:
        run.add(f"small.copy.{lane.key}", seconds)


async def small_transfers(run: Run, lane: Lane, contender: Contender) -> None:
    workload, concurrency = run.workload, run.opts.concurrency
    stored, downloaded = lane.store / SMALL_FOLDER, lane.downloads / SMALL_FOLDER

    async def upload(name: str) -> None:
        await contender.upload(workload.small / name, f"{SMALL_FOLDER}/{name}")

    async def download(name: str) -> None:
        await contender.download(f"{SMALL_FOLDER}/{name}", downloaded / name)

    lane.fresh_folder(stored)
    await flushed()
    seconds = await guarded(
        run, lane, "small-file upload", lambda: each_concurrently(workload.small_names, upload, concurrency)
    )
    if seconds is None:
        return
    run.add(f"small.upload.{lane.key}", seconds)
    shutil.rmtree(downloaded, ignore_errors=True)
    downloaded.mkdir(parents=True)
    await flushed()
    seconds = await guarded(
        run, lane, "small-file download", lambda: each_concurrently(workload.small_names, download, concurrency)
    )
    if seconds is not None:
        run.add(f"small.download.{lane.key}", seconds)


def same_files(left: Path, right: Path) -> bool:
    """Byte-for-byte the same (a file, or a folder and everything in it)."""
    argv = ["diff", "-rq"] if left.is_dir() else ["cmp", "-s"]
    return subprocess.run([*argv, str(left), str(right)], capture_output=True, check=False).returncode == 0


def verify(run: Run) -> dict[str, dict[str, bool]]:
    """Compare what each lane stored and downloaded in its last round with the sources."""
    checked: dict[str, dict[str, bool]] = {}
    sources = {BIG_NAME: run.workload.big, SMALL_FOLDER: run.workload.small}
    for key, lane in run.lanes.items():
        for name, source in sources.items():
            for where, folder in (("stored", lane.store), ("downloaded", lane.downloads)):
                copy = folder / name
                if copy.exists() and not (lane.contender is None and where == "downloaded"):
                    checked.setdefault(key, {})[f"{name} {where}"] = same_files(source, copy)
    return checked


# --------------------------------------------------------------------------- the contenders


async def wait_for_socket(socket: Path, process: asyncio.subprocess.Process, seconds: float = 10) -> None:
    """Until the plain endpoint answers on its socket."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as session:
        while time.monotonic() < deadline and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get("http://plain/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise NginxUnavailableError(f"the plain endpoint did not start (exit status {process.returncode})")


@contextlib.asynccontextmanager
async def plain_behind_nginx(work: Path, fsync: bool) -> AsyncIterator[PlainContender]:
    """bench.plain_endpoint on a unix socket, nginx in front of it."""
    store, socket = work / "nginx" / "store", work / "nginx" / "plain.sock"
    store.mkdir(parents=True)
    endpoint = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.plain_endpoint", "--socket", str(socket), "--root", str(store),
        *(["--fsync"] if fsync else []), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        await wait_for_socket(socket, endpoint)
        let_workers_connect(socket)
        async with running_nginx(work / "nginx" / "server", socket) as url:
            yield PlainContender(url)
    finally:
        if endpoint.returncode is None:
            endpoint.terminate()
            await endpoint.wait()


@dataclass
class Ucim:
    """What the full path and the browse calls need of a running ucim."""

    stack: Stack
    calls: ProviderCalls
    drive: Drive
    home: Path  # alice's bench folder, locally
    folder_id: str  # the same folder as a UCloud file id
    endpoint: str  # alice's instance through the bridge ingress
    socket: str  # alice's instance's own unix socket
    ingress_token: str


async def home_drive(core: CoreStandIn, seconds: float = 10) -> Drive:
    """Alice's home drive as the gateway registered it at Core (when she connected)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return core.home_of(USER)
        except LookupError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def instance_of(kube: Kube, namespace: str, calls: ProviderCalls, seconds: float = 60) -> UserInstance:
    """Alice's instance, Ready with an endpoint: Core's integration/init starts it (auto-connect)."""
    name = UserInstance.name_for(USER, CLUSTER)
    deadline = time.monotonic() + seconds
    await calls.core.call_provider("POST", "integration/init", {"username": USER}, USER)
    while time.monotonic() < deadline:
        instance = await kube.get(UserInstance, namespace, name)
        if instance is not None and instance.status.endpoint and is_true(instance.status.conditions, "Ready"):
            return instance
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{USER}'s instance did not become Ready within {seconds} s")


@contextlib.asynccontextmanager
async def running_ucim(run: Run, session: aiohttp.ClientSession) -> AsyncIterator[Ucim]:
    """The whole of ucim in a fresh namespace, alice's instance up and a bench folder in her home."""
    # The components import ucim from this checkout, whatever the installed one points at.
    env = {**read_platform_env(), "PYTHONPATH": str(REPO)}
    tag = uuid.uuid4().hex[:6]
    namespace = f"ucim-bench-{tag}"
    kubectl = platform_kubectl(env)
    await asyncio.to_thread(kubectl, "create", "namespace", namespace)
    account = pwd.getpwnam(USER)
    home = Path(account.pw_dir) / f"ucim-bench-files-{tag}"
    started = time.time()
    stack: Stack | None = None
    try:
        async with running_stack(env, namespace) as stack, await Kube.connect(env["KUBECONFIG"]) as kube:
            stack.keep_logs = run.opts.keep_logs
            try:
                calls = ProviderCalls(stack.core, session, USER)
                instance = await instance_of(kube, namespace, calls)
                drive = await home_drive(stack.core)
                home.mkdir()
                os.chown(home, account.pw_uid, account.pw_gid)
                bridge = stack.envs["ucim-bridge"]
                yield Ucim(
                    stack=stack,
                    calls=calls,
                    drive=drive,
                    home=home,
                    folder_id=f"/{drive.id}/{home.name}",
                    endpoint=str(instance.status.endpoint).rstrip("/"),
                    socket=socket_path(Path(bridge["UCIM_BRIDGE_SOCKET_DIR"]), namespace, instance.metadata.name),
                    ingress_token=bridge["UCIM_BRIDGE_INGRESS_TOKEN"],
                )
            except BaseException:
                print(stack.logs(), file=sys.stderr)
                raise
    finally:
        shutil.rmtree(home, ignore_errors=True)
        forget_transfer_sessions(Path(account.pw_dir), since=started)
        await asyncio.to_thread(release_leftovers, env, namespace)
        if stack is not None and stack.keep_logs:
            print(f"the components' logs: {stack.workdir}", file=sys.stderr)


def forget_transfer_sessions(user_home: Path, since: float) -> None:
    """The run's upload and download sessions in the user's instance folder (``~/.ucim/transfers``).

    A finished upload's session stays for 30 minutes (its progress can still be asked), and an
    instance reads them all when it starts: thousands left by a run would slow the next start.
    """
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(user_home / ".ucim" / "transfers"):
            with contextlib.suppress(FileNotFoundError):
                if entry.name.endswith(".json") and entry.stat(follow_symlinks=False).st_mtime >= since:
                    Path(entry.path).unlink()


async def full_path_lane(ucim: Ucim, work: Path) -> Lane:
    """The full path's lane, once a small file went up and came back intact through it."""
    contender = FullPathContender(ucim.calls, ucim.drive, ucim.folder_id)
    account = pwd.getpwnam(USER)
    lane = Lane("full", ucim.home, work / "full" / "downloads", contender, (account.pw_uid, account.pw_gid))
    lane.downloads.mkdir(parents=True)
    probe = work / "full" / "probe.txt"
    probe.write_bytes(b"probe\n" * 1000)
    await contender.upload(probe, probe.name)
    await contender.download(probe.name, lane.downloads / probe.name)
    if (lane.downloads / probe.name).read_bytes() != probe.read_bytes():
        raise TransferError("a probe file came back different from what went up")
    return lane


# --------------------------------------------------------------------------- browse


async def browse(run: Run, ucim: Ucim, session: aiohttp.ClientSession) -> dict[str, Any]:
    """First page of 100 of a 10,000-entry folder: gateway vs ingress vs the unix socket, and two bare relays."""
    folder = ucim.home / BROWSE_FOLDER
    await asyncio.to_thread(fill_browse_folder, run.workload, folder)
    request = browse_body(
        ucim.drive,
        f"{ucim.folder_id}/{BROWSE_FOLDER}",
        items_per_page=BROWSE_PAGE,
        sort_by="PATH",
        sort_direction="ascending",
    )
    body = json.dumps(request).encode()
    json_type = {"Content-Type": "application/json"}
    ingress = {"Authorization": f"Bearer {ucim.ingress_token}", **json_type}
    result: dict[str, Any] = {"entries": len(run.workload.small_names), "page": BROWSE_PAGE, "ways": {}}
    async with contextlib.AsyncExitStack() as stack:
        unix = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=ucim.socket), timeout=aiohttp.ClientTimeout(total=30)
            )
        )
        try:
            bare = await stack.enter_async_context(bare_relays(ucim.socket))
        except (OSError, ValueError, TimeoutError) as error:
            bare = None
            result["ways"]["bare"] = {"available": False, "why": f"{type(error).__name__}: {error}"}

        async def post(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            async with client.post(url, data=body, headers=headers) as response:
                return response.status, await response.read()

        ways: dict[str, Callable[[], Awaitable[tuple[int, bytes]]]] = {
            "socket": lambda: post(unix, f"http://instance{FILES_BROWSE_PATH}", json_type),
            "ingress": lambda: post(session, f"{ucim.endpoint}{FILES_BROWSE_PATH}", ingress),
            "gateway": lambda: post(
                session, ucim.calls.core.provider_endpoint("files/browse"), {**ucim.calls.headers(), **json_type}
            ),
        }
        if bare is not None:
            ways["bare"] = lambda: post(session, f"{bare}{FILES_BROWSE_PATH}", json_type)
        working = {}
        for way, call in ways.items():
            status, answer = await call()
            why = browse_refusal(status, answer)
            if why is None:
                working[way] = call
            else:
                result["ways"][way] = {"available": False, "why": why}
        samples: dict[str, list[float]] = {way: [] for way in working}
        for i in range(BROWSE_WARM_UP + run.opts.browse_calls):
            for way in rotated(list(working), i):
                started = time.perf_counter()
                status, _ = await working[way]()
                seconds = time.perf_counter() - started
                if status != 200:
                    raise TransferError(f"browse through the {way} answered {status}")
                if i >= BROWSE_WARM_UP:
                    samples[way].append(seconds * 1000)
    for way, values in samples.items():
        result["ways"][way] = {"available": True, **latency(values)}
    return {**result, **added_p50(result["ways"])}


def added_p50(ways_ms: dict[str, Any]) -> dict[str, float]:
    """What the gateway adds over the ingress and the socket, and what the bare relays add over the socket."""
    added = {}
    for name, way, base in (
        ("gateway_adds_p50_ms_over_socket", "gateway", "socket"),
        ("gateway_adds_p50_ms_over_ingress", "gateway", "ingress"),
        ("bare_relays_add_p50_ms_over_socket", "bare", "socket"),
    ):
        if ways_ms.get(way, {}).get("available") and ways_ms.get(base, {}).get("available"):
            added[name] = round(ways_ms[way]["p50"] - ways_ms[base]["p50"], 3)
    return added


def browse_refusal(status: int, answer: bytes) -> str | None:
    """Why a first browse answer is not a page of BROWSE_PAGE entries (None: it is)."""
    if status != 200:
        return f"answered {status}: {answer[:300].decode(errors='replace')}"
    try:
        items = json.loads(answer).get("items", [])
    except (ValueError, AttributeError):
        return f"answered something else than a page: {answer[:300].decode(errors='replace')}"
    return None if len(items) == BROWSE_PAGE else f"answered {len(items)} entries, not {BROWSE_PAGE}"


def fill_browse_folder(workload: Workload, folder: Path) -> None:
    """A copy of the small files in alice's home, owned by her: the 10,000-entry folder."""
    account = pwd.getpwnam(USER)
    shutil.copytree(workload.small, folder)
    for path in (folder, *folder.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)


def latency(values_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "mean": round(statistics.fmean(ordered), 3),
        "max": round(ordered[-1], 3),
    }


# --------------------------------------------------------------------------- the run


def rates(seconds: Sequence[float], amount: float) -> dict[str, float]:
    """p50 (and min, max) over the rounds of ``amount`` per second."""
    per_second = sorted(amount / s for s in seconds)
    return {
        "p50": round(statistics.median(per_second), 1),
        "min": round(per_second[0], 1),
        "max": round(per_second[-1], 1),
        "rounds": len(per_second),
    }


def figures(run: Run) -> dict[str, Any]:
    workload = run.workload
    amounts = {"large": workload.big_bytes / MB, "small": len(workload.small_names)}
    found: dict[str, Any] = {"large_mb_per_s": {}, "small_files_per_s": {}}
    for key, seconds in sorted(run.samples.items()):
        kind, direction, lane = key.split(".")
        table = found["large_mb_per_s" if kind == "large" else "small_files_per_s"]
        table.setdefault(lane, {})[direction] = rates(seconds, amounts[kind])
    for table in found.values():  # one copy stands for both directions
        if "cp" in table:
            table["cp"]["upload"] = table["cp"]["download"] = table["cp"].pop("copy")
    return found


def verdict(found: dict[str, Any], browsing: dict[str, Any] | None) -> dict[str, Any]:
    large = found["large_mb_per_s"]
    checks: dict[str, Any] = {}
    for direction in ("upload", "download"):
        for base, target in (("nginx", "large_full_vs_nginx"), ("cp", "large_full_vs_cp")):
            name = f"large_{direction}_full_vs_{base}"
            full, other = large.get("full", {}).get(direction), large.get(base, {}).get(direction)
            if full is None or other is None:
                checks[name] = {"measured": None, "limit": TARGETS[target], "ok": None}
                continue
            ratio = round(full["p50"] / other["p50"], 3)
            checks[name] = {"measured": ratio, "limit": TARGETS[target], "ok": ratio >= TARGETS[target]}
    for base in ("socket", "ingress"):
        added = (browsing or {}).get(f"gateway_adds_p50_ms_over_{base}")
        limit = TARGETS["browse_added_p50_ms"]
        checks[f"browse_gateway_adds_p50_ms_over_{base}"] = {
            "measured": added, "limit": limit, "ok": None if added is None else added <= limit,
        }  # fmt: skip
    return checks


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    work = make_work_folder()
    result: dict[str, Any] = {"machine": machine(work)}
    try:
        progress(f"writing the sources: {opts.size_mib} MiB and {opts.small_files:,} small files in {work}")
        workload = await asyncio.to_thread(make_workload, work, opts.size_mib, opts.small_files)
        run = Run(opts, workload, deadline=time.monotonic() + opts.max_seconds)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=max(8, 2 * opts.concurrency))
        async with (
            contextlib.AsyncExitStack() as lanes,
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        ):
            run.lanes["cp"] = Lane("cp", work / "cp", work / "cp")
            run.lanes["cp"].store.mkdir()
            try:
                plain = await lanes.enter_async_context(plain_behind_nginx(work, opts.fsync))
                run.lanes["nginx"] = Lane("nginx", work / "nginx" / "store", work / "nginx" / "downloads", plain)
                run.lanes["nginx"].downloads.mkdir()
            except (NginxUnavailableError, OSError) as error:
                run.unavailable["nginx"] = str(error)
            ucim: Ucim | None = None
            if opts.no_full_path:
                run.unavailable["full"] = "left out (--no-full-path)"
            elif os.geteuid() != 0:
                run.unavailable["full"] = "needs root: the bridge forks the users' instances"
            else:
                try:
                    ucim = await lanes.enter_async_context(running_ucim(run, session))
                    run.lanes["full"] = await full_path_lane(ucim, work)
                except (TransferError, aiohttp.ClientError, OSError, TimeoutError, RuntimeError, LookupError) as error:
                    run.unavailable["full"] = f"{type(error).__name__}: {error}"
            for round_ in range(opts.warm_up_rounds):
                progress(f"large file, warm-up round {round_ + 1} of {opts.warm_up_rounds} (not counted)")
                await large_round(run, round_)
            run.samples.clear()
            for round_ in range(opts.rounds):
                progress(f"large file, round {round_ + 1} of {opts.rounds}")
                await large_round(run, round_)
            for round_ in range(opts.small_rounds):
                progress(f"small files, round {round_ + 1} of {opts.small_rounds}")
                await small_round(run, round_)
            progress("comparing every stored and downloaded copy with its source")
            result["verified"] = await asyncio.to_thread(verify, run)
            progress("browsing")
            result["browse"] = (
                await browse(run, ucim, session)
                if ucim is not None
                else {"available": False, "why": run.unavailable.get("full", "?")}
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    result["workload"] = {
        "large_file_bytes": run.workload.big_bytes,
        "small_files": opts.small_files,
        "small_files_bytes": run.workload.small_bytes,
        "small_file_concurrency": opts.concurrency,
        "chunk_bytes": WEB_CLIENT_CHUNK_BYTES,
        "rounds": opts.rounds,
        "warm_up_rounds": opts.warm_up_rounds,
        "small_rounds": opts.small_rounds,
    }
    found = figures(run)
    result.update(found)
    result["unavailable"] = run.unavailable
    result["verdict"] = verdict(found, result["browse"] if result["browse"].get("ways") else None)
    return result


# --------------------------------------------------------------------------- output


def rate_cell(table: dict[str, Any], lane: str, direction: str) -> str:
    figure = table.get(lane, {}).get(direction)
    if figure is None:
        return f"{'-':>22}"
    return f"{figure['p50']:>9.1f} [{figure['min']:.0f}-{figure['max']:.0f}]".rjust(22)


def table(result: dict[str, Any]) -> str:
    m, w = result["machine"], result["workload"]
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['filesystem']} on {m['device']}"
        f" ({'same filesystem as' if m['same_filesystem_as_home'] else 'NOT the filesystem of'} /home);"
        f" load {m['load_average_1_5_15'][0]} at the start, {m['load_average_at_end'][0]} at the end",
        "",
    ]
    unavailable = result["unavailable"]
    sections = [
        (
            "large_mb_per_s",
            f"large file ({w['large_file_bytes'] / 2**20:.0f} MiB), MB/s, p50 [min-max] of {w['rounds']}",
        ),
        (
            "small_files_per_s",
            f"{w['small_files']:,} small files ({w['small_files_bytes'] / MB:.1f} MB;"
            f" {w['small_file_concurrency']} at a time over HTTP), files/s, p50 [min-max] of {w['small_rounds']}",
        ),
    ]
    for key, title in sections:
        lines += [title, f"  {'':46} {'upload':>22} {'download':>22}"]
        for lane in LANES:
            if lane in result[key]:
                note = "  (one copy: both directions)" if lane == "cp" else ""
                cells = rate_cell(result[key], lane, "upload") + " " + rate_cell(result[key], lane, "download")
                lines.append(f"  {LABELS[lane]:46} {cells}{note}")
            else:
                lines.append(f"  {LABELS[lane]:46} not available ({unavailable.get(lane, 'no figures')})")
        lines.append("")
    browsing = result["browse"]
    if browsing.get("ways"):
        lines += [
            f"browse: first {browsing['page']} of a {browsing['entries']:,}-entry folder, ms",
            f"  {'':46} {'p50':>9} {'p99':>9} {'n':>5}",
        ]
        for way in ("socket", "ingress", "gateway", "bare"):
            figure = browsing["ways"].get(way, {"available": False, "why": "?"})
            if figure["available"]:
                lines.append(f"  {LABELS[way]:46} {figure['p50']:9.2f} {figure['p99']:9.2f} {figure['n']:5}")
            else:
                lines.append(f"  {LABELS[way]:46} not available ({figure['why']})")
        floor = browsing.get("bare_relays_add_p50_ms_over_socket")
        if floor is not None:
            lines.append(f"  (two bare relays add {floor:.2f} ms p50 over the socket here: the floor for two hops)")
    else:
        lines.append(f"browse: not available ({browsing.get('why')})")
    lines += ["", "targets"]
    for name, check in result["verdict"].items():
        state = "n/a" if check["ok"] is None else "ok" if check["ok"] else "MISSED"
        relation = "≤" if "browse" in name else "≥"
        measured = "-" if check["measured"] is None else check["measured"]
        lines.append(f"  {name:46} {measured!s:>9} {relation} {check['limit']:<6} {state}")
    bad = {lane: checks for lane, checks in result["verified"].items() if not all(checks.values())}
    lines.append(f"copies compared with their sources: {'all identical' if not bad else f'DIFFERENT: {bad}'}")
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__, keep_logs=True)
    parser.add_argument("--quick", action="store_true", help="1 round of each, 200 browse calls")
    parser.add_argument("--size-mib", type=int, default=1024, help="the large file (default 1024 MiB)")
    parser.add_argument("--small-files", type=int, default=10_000, help="how many small files (default 10,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="small files in flight over HTTP (default 4)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="large-file rounds (default 5: on a VM rounds of the same copy vary by up to ±40%%)",
    )
    parser.add_argument("--small-rounds", type=int, default=2, help="small-file rounds (default 2)")
    parser.add_argument(
        "--warm-up-rounds",
        type=int,
        default=1,
        help="large-file rounds run first and not counted (default 1): on a VM the first touch of fresh memory is slow",
    )
    parser.add_argument("--browse-calls", type=int, default=300, help="browse calls each way (default 300)")
    parser.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="baselines do not flush (by default they do, as the instance does: cp + sync, fsync at a file's end)",
    )
    parser.add_argument("--no-full-path", action="store_true", help="only the baselines: no ucim, no root needed")
    parser.add_argument("--max-seconds", type=float, default=600, help="give up after this long (default 600)")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.small_rounds, opts.browse_calls = 1, 1, min(opts.browse_calls, 200)
    if opts.size_mib < 1 or opts.small_files < BROWSE_PAGE or opts.concurrency < 1 or opts.browse_calls < 1:
        parser.error(f"--size-mib, --concurrency and --browse-calls must be ≥ 1, --small-files ≥ {BROWSE_PAGE}")
    if opts.rounds < 1 or opts.small_rounds < 1 or opts.warm_up_rounds < 0:
        parser.error("--rounds and --small-rounds must be ≥ 1, --warm-up-rounds ≥ 0")
    return run_bench("files", opts, lambda: asyncio.run(bench(opts)), table, targets=TARGETS)


if __name__ == "__main__":
    sys.exit(main())

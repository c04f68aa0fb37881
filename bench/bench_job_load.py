#!/usr/bin/env python3
"""The job path at scale: N UCloud jobs created through Core, what they cost while created and while tracked.

Runs the whole of ucim as processes (``ucim.testing.stack.running_stack``: gateway, operator,
bridge, with UCloud/Core's stand-in in this process) against the local platform
(``python3 hack/local_platform.py up``), as root, in a fresh namespace ``ucim-bench-<rand>``.
It is the before/after figure of issue 14 (the gateway polling the apiserver every 20 ms for a
submission; the bridge's monitor listing every UCloudJob of the namespace each second), so it
measures, side by side in one run:

* **creation**: a root job holds every node (``--exclusive``), so nothing the bench creates
  runs; the users' instances are made Ready first (``integration/init``); then ``--jobs`` UCloud
  jobs (``sleep-exit``, 10 minutes) go through ``CoreStandIn.create_jobs``, ``--concurrency`` at a
  time, round-robin over ``--users``. Per job: the create call's latency at Core, and the time
  from the call's start until the stand-in received the job's IN_QUEUE update. The creation
  window runs from the first call until every job is IN_QUEUE at Core and the bridge has written
  every job's Slurm state (a settled queue);
* **steady**: a ``--steady-seconds`` window in which all N jobs are tracked and nothing changes.
  Slurm revises the pending reasons of a long queue for a while after it was submitted (most jobs
  go from ``Resources`` to ``Priority`` on a backfill pass, every 30 s), and the bridge writes
  each revision; so the window starts only once squeue's state and reason of every job have not
  changed for ``--quiet-seconds`` (default 35; bounded: after 150 s it starts anyway, and says
  so), plus ``--settle-seconds`` for the bridge to write the last of them;
* in both, the **CPU seconds** (``/proc/<pid>/stat`` utime+stime, children excluded) of the
  gateway, operator and bridge processes the stack started, of the users' instances
  (``UserInstance.status.pid``) and of the platform's kube-apiserver, etcd and slurmctld (their
  pid files), as ms per created job and as ms per second / µs per tracked job per second; the
  reaped children's CPU (cutime+cstime: the bridge's squeue, the instances' sbatch) beside it;
* in the steady window, the **apiserver's requests** (its ``/metrics``: ``apiserver_request_total``
  by verb, for ucloudjobs and for every resource; the bytes it answered on ucloudjobs, as sent:
  gzip'd above 128 KiB; the watch events it sent about UCloudJobs) per second, the bridge's
  monitor cycles and the changes (JobUpdates at Core, PATCH requests) that did happen in it; the
  same requests per created job over the creation window;
* the components' warnings and errors (counted by message, from their logs) and their log sizes;
* afterwards, as part of the cleanup: every Slurm job cancelled at once (one ``scancel``) → the
  time until Core received each job's final state (**cancel burst**).

    python -m bench job_load                         # 1000 jobs (alice and bob), 8 at a time, 30 s steady
    python -m bench job_load --jobs 100 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
The run is bounded: ``--jobs`` ≤ 2000 and ``--max-seconds`` (default 420) for everything up to
the end of the steady window; the cancel burst and the cleanup add at most about four more
minutes. Every Slurm job the run made is cancelled, its job folder removed, the namespace
deleted, however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_job_path import command, sbatch_id
from bench.report import bench_parser, run_bench, summary
from ucim.common.conditions import is_true
from ucim.common.kube import Kube
from ucim.common.protocol import Job, JobState, SimpleDuration
from ucim.common.reasons import READY
from ucim.common.resources import UCloudJob, UserInstance
from ucim.testing.stack import CLUSTER, Stack, read_platform_env, running_stack

MAX_JOBS: Final = 2000
COMPONENTS: Final = ("ucim-gateway", "ucim-operator", "ucim-bridge")
PLATFORM: Final = ("kube-apiserver", "etcd", "slurmctld")
VERBS: Final = ("list", "watch", "get", "patch", "post", "put", "delete")
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
CORE_CALL_TIMEOUT: Final = 30.0  # the stand-in's 5 s would turn a slow answer into an error, not a figure
APPLICATION: Final = ("sleep-exit", "1")


def parse_ticks(stat: str) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) in clock ticks from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    utime, stime, cutime, cstime = (int(fields[i]) for i in range(11, 15))
    return utime + stime, cutime + cstime


def cpu_seconds(pids: Mapping[str, Sequence[int]]) -> dict[str, tuple[float, float]]:
    """(own, reaped children's) CPU seconds of each named group of processes; a gone process counts 0."""
    found: dict[str, tuple[float, float]] = {}
    for name, group in pids.items():
        own = children = 0
        for pid in group:
            with contextlib.suppress(OSError):
                ticks = parse_ticks(Path(f"/proc/{pid}/stat").read_text())
                own, children = own + ticks[0], children + ticks[1]
        found[name] = (own / CLK_TCK, children / CLK_TCK)
    return found


@dataclass
class CpuWindow:
    """CPU seconds of each process group between two readings, and the wall time between them."""

    pids: dict[str, list[int]]
    started: float = 0.0
    before: dict[str, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0
    used: dict[str, tuple[float, float]] = field(default_factory=dict)

    def start(self) -> None:
        self.before, self.started = cpu_seconds(self.pids), time.monotonic()

    def stop(self) -> None:
        after, self.seconds = cpu_seconds(self.pids), time.monotonic() - self.started
        self.used = {name: (a[0] - self.before[name][0], a[1] - self.before[name][1]) for name, a in after.items()}


def is_ucloudjobs(labels: Mapping[str, str]) -> bool:
    """A watch-event sample about UCloudJobs: labelled by resource (Kubernetes ≥ 1.32) or by kind (older)."""
    return labels.get("resource") == "ucloudjobs" or "ucloudjob" in labels.get("kind", "").lower()


def parse_apiserver_metrics(text: str) -> dict[str, float]:
    """The apiserver counters the benches read, flattened: ``requests/<resource or *>/<verb>``, ..."""
    found: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_request_total":
                verb = labels.get("verb", "").lower()
                found[f"requests/*/{verb}"] += sample.value
                found[f"requests/{labels.get('resource') or '-'}/{verb}"] += sample.value
            elif sample.name in ("apiserver_request_duration_seconds_sum", "apiserver_request_duration_seconds_count"):
                what = "seconds" if sample.name.endswith("_sum") else "timed"
                found[f"{what}/{labels.get('resource') or '-'}/{labels.get('verb', '').lower()}"] += sample.value
            elif sample.name == "apiserver_response_sizes_sum" and labels.get("resource") == "ucloudjobs":
                found[f"bytes/ucloudjobs/{labels.get('verb', '').lower()}"] += sample.value
            elif sample.name == "apiserver_watch_events_total" and is_ucloudjobs(labels):
                found["watch_events/ucloudjobs"] += sample.value
            elif sample.name == "apiserver_watch_events_sizes_sum" and is_ucloudjobs(labels):
                found["watch_event_bytes/ucloudjobs"] += sample.value
            elif (
                sample.name == "apiserver_longrunning_requests"
                and labels.get("verb") == "WATCH"
                and labels.get("resource") == "ucloudjobs"
                and labels.get("scope") == "namespace"  # ucim's; the garbage collector watches cluster-wide
            ):
                found["open_watches/ucloudjobs"] += sample.value
    return dict(found)


def parse_bridge_metrics(text: str) -> dict[str, float]:
    found: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ucim_slurm_tracked_jobs":
                found["tracked"] = sample.value
            elif sample.name == "ucim_slurm_poll_duration_seconds_count":
                found["poll_cycles"] += sample.value
            elif sample.name == "ucim_slurm_poll_duration_seconds_sum":
                found["poll_seconds"] += sample.value
            elif sample.name == "ucim_slurm_poll_errors_total":
                found["poll_errors"] += sample.value
    return dict(found)


@dataclass
class Run:
    """What one run made (so that cleanup finds all of it) and measured."""

    env: dict[str, str]
    namespace: str
    tag: str
    users: list[str]
    deadline: float
    blocker: int | None = None
    jobs: list[Job] = field(default_factory=list)
    started_at: dict[str, float] = field(default_factory=dict)  # job id → epoch seconds its create call began
    create_ms: list[float] = field(default_factory=list)
    create_errors: list[str] = field(default_factory=list)
    slurm_ids: set[int] = field(default_factory=set)
    slurm_names: set[str] = field(default_factory=set)  # ucim-<uid>: what the operator names a job in Slurm
    job_folders: set[Path] = field(default_factory=set)

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"--max-seconds reached during {what}")

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    @property
    def slurm_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    @property
    def kubectl(self) -> list[str]:
        return [str(Path(self.env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", self.env["KUBECONFIG"]]


async def slurm(run: Run, *argv: str, check: bool = True) -> str:
    rc, out, err = await command(argv, run.slurm_env)
    if check and rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc}): {err.strip()}")
    return out.strip()


async def apiserver_metrics(run: Run) -> tuple[dict[str, float], float]:
    """The apiserver's counters (``kubectl get --raw /metrics``) and when they were read."""
    rc, out, err = await command([*run.kubectl, "get", "--raw", "/metrics"], run.slurm_env)
    if rc != 0:
        raise RuntimeError(f"reading the apiserver's /metrics failed: {err.strip()}")
    return await asyncio.to_thread(parse_apiserver_metrics, out), time.monotonic()


async def bridge_metrics(session: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    url = f"http://127.0.0.1:{stack.envs['ucim-bridge']['UCIM_BRIDGE_METRICS_PORT']}/metrics"
    async with session.get(url) as response:
        return parse_bridge_metrics(await response.text())


# --------------------------------------------------------------------------- setting up


async def start_blocker(run: Run, minutes: int) -> None:
    """A root job that takes every node of the partition, so that what the bench creates stays pending."""
    nodes = await slurm(run, "sinfo", "-h", "--partition=normal", "-o", "%D")
    out = await slurm(
        run, "sbatch", "--parsable", "--exclusive", f"--nodes={nodes}", "--partition=normal", f"--time={minutes}",
        "--job-name=ucim-bench-blocker", "--output=/dev/null", "--chdir=/tmp", "--wrap", f"sleep {minutes * 60}",
    )  # fmt: skip
    run.blocker = sbatch_id(out)
    for _ in range(300):
        if await slurm(run, "squeue", "-h", "-j", str(run.blocker), "-o", "%T", check=False) == "RUNNING":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the nodes are busy: the bench's blocker job did not start within 30 s")


async def ready_instances(run: Run, stack: Stack, kube: Kube) -> dict[str, int]:
    """Each user's instance Ready (integration/init, as Core calls it); their pids."""
    pids: dict[str, int] = {}
    for user in run.users:
        deadline = time.monotonic() + 60
        while True:
            response = await stack.core.call_provider("POST", "integration/init", {"username": user}, user)
            response.raise_for_status()
            instance = await kube.get(UserInstance, run.namespace, UserInstance.name_for(user, CLUSTER))
            if instance is not None and is_true(instance.status.conditions, READY) and instance.status.pid:
                pids[user] = instance.status.pid
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{user}'s instance did not become Ready within 60 s")
            await asyncio.sleep(0.5)
    return pids


def platform_pids(env: Mapping[str, str]) -> dict[str, list[int]]:
    """The platform daemons' pids, from ``<run dir>/pids``; a daemon without a live pid is left out."""
    found: dict[str, list[int]] = {}
    for name in PLATFORM:
        with contextlib.suppress(OSError, ValueError):
            pid = int((Path(env["UCIM_RUN_DIR"]) / "pids" / f"{name}.pid").read_text().strip())
            if Path(f"/proc/{pid}").exists():
                found[name] = [pid]
    return found


def make_jobs(run: Run, stack: Stack, count: int) -> None:
    prefix = int(run.tag, 16) % 10**6
    for i in range(count):
        user = run.users[i % len(run.users)]
        job_id = f"{prefix}{i:05d}"
        run.jobs.append(
            stack.core.make_job(job_id, user, APPLICATION, {"seconds": 600}, time_allocation=SimpleDuration(minutes=10))
        )
        run.job_folders.add(Path(f"/home/{user}/ucloud-jobs/{job_id}"))


# --------------------------------------------------------------------------- creation


async def create_all(run: Run, stack: Stack, concurrency: int) -> None:
    """Every job through Core, ``concurrency`` calls at a time; latencies and errors into ``run``."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in run.jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            run.check_time("the creation")
            run.started_at[job.id] = time.time()
            started = time.perf_counter()
            try:
                await stack.core.create_jobs([job])
            except Exception as error:  # counted and reported: the run goes on
                run.create_errors.append(f"{job.id}: {type(error).__name__}: {error}"[:300])
                continue
            run.create_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def in_queue_arrivals(stack: Stack) -> dict[str, float]:
    """When the stand-in received each job's first IN_QUEUE update (epoch seconds), by job id."""
    record = stack.core.record
    found: dict[str, float] = {}
    for at, item in zip(record.job_update_received_at, record.job_updates, strict=True):
        if item.update.state == JobState.IN_QUEUE and item.id not in found:
            found[item.id] = at
    return found


def settled(jobs: Iterable[UCloudJob]) -> bool:
    """Every job submitted, its Slurm state written by the bridge, and all its transitions reported."""
    return all(
        job.status.slurm_job_id is not None
        and job.status.slurm_state is not None
        and job.status.reported_transitions >= len(job.status.transitions)
        for job in jobs
    )


async def wait_settled(run: Run, stack: Stack, kube: Kube, created: set[str]) -> dict[str, Any]:
    """Until every created job is IN_QUEUE at Core and settled (bounded); what was seen."""
    names = {UCloudJob.name_for(job_id) for job_id in created}
    deadline = time.monotonic() + min(180.0, run.remaining())
    while True:
        arrived = in_queue_arrivals(stack)
        if created <= arrived.keys():
            mine = [job for job in await kube.list(UCloudJob, run.namespace) if job.metadata.name in names]
            remember(run, mine)
            if len(mine) == len(names) and settled(mine):
                return {"complete": True, "in_queue": len(created)}
        if time.monotonic() > deadline:
            missing = len(created - arrived.keys())
            print(f"warning: {missing} jobs not IN_QUEUE at Core / not settled in time", file=sys.stderr)
            return {"complete": False, "in_queue": len(created) - missing}
        await asyncio.sleep(0.25 if not created <= arrived.keys() else 1.0)


def remember(run: Run, jobs: Iterable[UCloudJob]) -> None:
    """The Slurm side of these jobs, for the cleanup."""
    for job in jobs:
        if job.status.slurm_job_id is not None:
            run.slurm_ids.add(job.status.slurm_job_id)
        if job.metadata.uid:
            run.slurm_names.add(f"ucim-{job.metadata.uid}")
        if job.status.job_folder:
            run.job_folders.add(Path(job.status.job_folder))


# --------------------------------------------------------------------------- steady window


async def wait_quiet(run: Run, quiet_seconds: float) -> dict[str, Any]:
    """Until squeue's state and reason of every job stay the same for ``quiet_seconds`` (bounded)."""
    ids = ",".join(str(i) for i in sorted(run.slurm_ids))
    started = time.monotonic()
    bound = min(150.0, run.remaining())
    previous, changed, changes = "", started, -1
    while True:
        listing = await slurm(run, "squeue", "-h", "-t", "all", "-o", "%i %T %r", "-j", ids, check=False)
        view, now = "\n".join(sorted(listing.splitlines())), time.monotonic()
        if view != previous:
            previous, changed, changes = view, now, changes + 1
        elif now - changed >= quiet_seconds:
            return {"quiet": True, "seconds": round(now - started, 1), "changes_seen": changes}
        if now - started > bound:
            print(f"warning: Slurm's view of the jobs still changed after {bound:.0f} s", file=sys.stderr)
            return {"quiet": False, "seconds": round(now - started, 1), "changes_seen": changes}
        await asyncio.sleep(2)


def rates(before: Mapping[str, float], after: Mapping[str, float], seconds: float, prefix: str) -> dict[str, float]:
    """How much each counter under ``prefix`` grew, divided by ``seconds`` (or by a job count)."""
    keys = {k for k in (*before, *after) if k.startswith(prefix)}
    return {k.removeprefix(prefix): round((after.get(k, 0) - before.get(k, 0)) / seconds, 3) for k in sorted(keys)}


async def slurm_view(run: Run, kube: Kube) -> dict[str, tuple[str | None, str | None]]:
    """Each UCloudJob's Slurm state and pending reason, as the bridge last wrote them."""
    return {
        job.metadata.name: (job.status.slurm_state, job.status.reason)
        for job in await kube.list(UCloudJob, run.namespace)
    }


def census(view: Mapping[str, tuple[str | None, str | None]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for state, reason in view.values():
        counts[f"{state}/{reason}"] += 1
    return dict(sorted(counts.items()))


async def steady_window(run: Run, stack: Stack, kube: Kube, cpu: CpuWindow, seconds: float) -> dict[str, Any]:
    # What Slurm says about the jobs, at both ends (read outside the measured windows): the
    # pending reasons Slurm keeps revising are the changes the bridge still writes in the window.
    view_before = await slurm_view(run, kube)
    api_before, api_started = await apiserver_metrics(run)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        bridge_before = await bridge_metrics(session, stack)
        updates_before = len(stack.core.record.job_updates)
        cpu.start()
        await asyncio.sleep(seconds)
        cpu.stop()
        updates_after = len(stack.core.record.job_updates)
        bridge_after = await bridge_metrics(session, stack)
    api_after, api_ended = await apiserver_metrics(run)
    view_after = await slurm_view(run, kube)
    api_seconds = api_ended - api_started
    cycles = bridge_after.get("poll_cycles", 0) - bridge_before.get("poll_cycles", 0)
    poll_seconds = bridge_after.get("poll_seconds", 0) - bridge_before.get("poll_seconds", 0)
    per_second = {
        prefix: rates(api_before, api_after, api_seconds, prefix) for prefix in ("watch_events/", "watch_event_bytes/")
    }
    return {
        "seconds": round(cpu.seconds, 2),
        "apiserver_seconds": round(api_seconds, 2),
        "apiserver_requests_per_second": {
            "ucloudjobs": rates(api_before, api_after, api_seconds, "requests/ucloudjobs/"),
            "all": rates(api_before, api_after, api_seconds, "requests/*/"),
        },
        "apiserver_ucloudjobs_bytes_per_second": rates(api_before, api_after, api_seconds, "bytes/ucloudjobs/"),
        "apiserver_ucloudjob_watch_events_per_second": per_second["watch_events/"].get("ucloudjobs", 0.0),
        "apiserver_ucloudjob_watch_event_bytes_per_second": per_second["watch_event_bytes/"].get("ucloudjobs", 0.0),
        "apiserver_open_ucloudjob_watches": api_after.get("open_watches/ucloudjobs", 0),
        "bridge_tracked_jobs": [bridge_before.get("tracked"), bridge_after.get("tracked")],
        "bridge_poll_cycles_per_second": round(cycles / cpu.seconds, 3),
        "bridge_slurm_query_ms_mean": round(poll_seconds / cycles * 1000, 1) if cycles else None,
        "bridge_poll_errors": bridge_after.get("poll_errors", 0) - bridge_before.get("poll_errors", 0),
        "core_job_updates_in_window": updates_after - updates_before,
        "slurm_view_changed_jobs": sum(view_after.get(name) != seen for name, seen in view_before.items()),
        "slurm_view_before": census(view_before),
        "slurm_view_after": census(view_after),
    }


# --------------------------------------------------------------------------- cleanup


async def cancel_burst(run: Run, stack: Stack, kube: Kube) -> dict[str, Any]:
    """scancel every job at once; until Core has each one's final state (bounded): the cancel burst."""
    ids = sorted(run.slurm_ids)
    if not ids:
        return {"n": 0}
    started = time.time()
    await slurm(run, "scancel", *(str(i) for i in ids), check=False)
    wanted = {job_id for job_id in run.started_at if job_id not in {e.split(":")[0] for e in run.create_errors}}
    record = stack.core.record
    deadline = time.monotonic() + 90
    final: dict[str, float] = {}
    seen = 0
    while wanted - final.keys() and time.monotonic() < deadline:
        updates = list(zip(record.job_update_received_at, record.job_updates, strict=True))
        for at, item in updates[seen:]:
            if item.update.state is not None and item.update.state.is_final and item.id not in final:
                final[item.id] = at
        seen = len(updates)
        await asyncio.sleep(0.25)
    remember(run, await kube.list(UCloudJob, run.namespace))
    latencies = [(final[job_id] - started) * 1000 for job_id in wanted if job_id in final]
    return {
        **summary(latencies),
        "jobs": len(wanted),
        "final_at_core": len(final.keys() & wanted),
        "all_final_s": round(max(latencies) / 1000, 2) if latencies else None,
    }


async def delete_jobs(run: Run, kube: Kube) -> None:
    """Delete every UCloudJob while the operator runs (it lets them go), 16 at a time; bounded."""
    jobs = await kube.list(UCloudJob, run.namespace)
    remember(run, jobs)
    gate = asyncio.Semaphore(16)

    async def delete(name: str) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await kube.delete(UCloudJob, run.namespace, name)

    await asyncio.gather(*(delete(job.metadata.name) for job in jobs))
    for _ in range(90):  # the operator cancels what is not final, tells Core and lets go: bounded
        if not await kube.list(UCloudJob, run.namespace):
            break
        await asyncio.sleep(1)


async def sweep_slurm(run: Run) -> None:
    """Cancel whatever of ours is still in Slurm: known ids, the blocker, and jobs named after our UCloudJobs."""
    ids = {str(i) for i in run.slurm_ids} | ({str(run.blocker)} if run.blocker else set())
    listing = await slurm(run, "squeue", "-h", "-o", "%i %j", check=False)
    for line in listing.splitlines():
        slurm_id, _, name = line.strip().partition(" ")
        if name in run.slurm_names:
            ids.add(slurm_id)
    for chunk in range(0, len(ids), 500):
        await slurm(run, "scancel", *sorted(ids)[chunk : chunk + 500], check=False)


async def release_leftovers(run: Run) -> None:
    """After the operator stopped: drop the finalizers of anything left, then delete the namespace."""
    async with await Kube.connect(run.env["KUBECONFIG"]) as kube:
        for kind in (UCloudJob, UserInstance):
            with contextlib.suppress(Exception):
                left = await kube.list(kind, run.namespace)
                remember(run, [job for job in left if isinstance(job, UCloudJob)])
                for obj in left:
                    with contextlib.suppress(Exception):
                        await kube.patch(kind, run.namespace, obj.metadata.name, {"metadata": {"finalizers": None}})
    await command([*run.kubectl, "delete", "namespace", run.namespace, "--wait=false"], run.slurm_env)


# --------------------------------------------------------------------------- the run


def cpu_figures(creation: CpuWindow, steady: CpuWindow, jobs: int, tracked: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in creation.pids:
        made, held = creation.used.get(name, (0.0, 0.0)), steady.used.get(name, (0.0, 0.0))
        per_second = held[0] / steady.seconds if steady.seconds else 0.0
        figures[name] = {
            "creation_cpu_s": round(made[0], 2),
            "creation_ms_per_job": round(made[0] * 1000 / jobs, 3) if jobs else None,
            "steady_ms_per_s": round(per_second * 1000, 2),
            "steady_us_per_job_per_s": round(per_second * 1e6 / tracked, 2) if tracked else None,
            "children_creation_ms_per_job": round(made[1] * 1000 / jobs, 3) if jobs else None,
            "children_steady_ms_per_s": round(held[1] * 1000 / steady.seconds, 2) if steady.seconds else None,
        }
    return figures


async def measure(run: Run, stack: Stack, kube: Kube, opts: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    stack.core.call_timeout = CORE_CALL_TIMEOUT
    minutes = math.ceil(opts.max_seconds / 60) + 10
    await start_blocker(run, minutes)
    instance_pids = await ready_instances(run, stack, kube)
    pids = {name: [stack.components[name].process.pid] for name in COMPONENTS}
    pids["instances"] = list(instance_pids.values())
    pids.update(platform_pids(run.env))
    make_jobs(run, stack, opts.jobs)

    creation = CpuWindow(pids)
    api_before, _ = await apiserver_metrics(run)
    creation.start()
    started = time.time()
    await create_all(run, stack, opts.concurrency)
    calls_done = time.time() - started
    created = {job_id for job_id in run.started_at if job_id not in {e.split(":")[0] for e in run.create_errors}}
    result["settle"] = await wait_settled(run, stack, kube, created)
    creation.stop()
    api_after, _ = await apiserver_metrics(run)
    count = max(1, len(created))
    result["creation_apiserver_per_job"] = {
        "requests": {scope: rates(api_before, api_after, count, f"requests/{scope}/") for scope in ("ucloudjobs", "*")},
        "ucloudjobs_bytes": rates(api_before, api_after, count, "bytes/ucloudjobs/"),
    }
    arrivals = in_queue_arrivals(stack)
    in_queue_ms = [(arrivals[j] - run.started_at[j]) * 1000 for j in created if j in arrivals]
    result["creation"] = {
        "calls_s": round(calls_done, 2),
        "window_s": round(creation.seconds, 2),
        "jobs_per_s": round(len(created) / calls_done, 2) if calls_done else None,
        # After the last call returned: until the last IN_QUEUE reached Core and the bridge wrote every Slurm state.
        "settle_after_calls_s": round(creation.seconds - calls_done, 2),
        "errors": len(run.create_errors),
        "first_errors": run.create_errors[:5],
    }
    result["create_ms"] = summary(run.create_ms)
    result["in_queue_ms"] = summary(in_queue_ms)

    run.check_time("the settling")
    result["quiet"] = await wait_quiet(run, opts.quiet_seconds)
    await asyncio.sleep(min(opts.settle_seconds, run.remaining()))
    steady = CpuWindow(pids)
    result["steady"] = await steady_window(run, stack, kube, steady, opts.steady_seconds)
    tracked = int(result["steady"]["bridge_tracked_jobs"][1] or len(created))
    result["cpu"] = cpu_figures(creation, steady, len(created), tracked)
    result["pids"] = pids
    return result


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    env = read_platform_env()
    tag = uuid.uuid4().hex[:6]
    run = Run(
        env=env, namespace=f"ucim-bench-{tag}", tag=tag, users=opts.users,
        deadline=time.monotonic() + opts.max_seconds,
    )  # fmt: skip
    if (await command([*run.kubectl, "create", "namespace", run.namespace], run.slurm_env))[0] != 0:
        raise RuntimeError(f"cannot create the namespace {run.namespace}")
    result: dict[str, Any] = {"namespace": run.namespace}
    stack: Stack | None = None
    try:
        async with running_stack(env, run.namespace) as stack, await Kube.connect(env["KUBECONFIG"]) as kube:
            stack.keep_logs = opts.keep_logs
            try:
                result.update(await measure(run, stack, kube, opts))
                result["cancel_burst_ms"] = await cancel_burst(run, stack, kube)
            except BaseException:
                print(stack.logs(), file=sys.stderr)
                raise
            finally:
                cleanup_started = time.monotonic()
                await sweep_slurm(run)
                await delete_jobs(run, kube)
                result["cleanup_s"] = round(time.monotonic() - cleanup_started, 1)
                result["log_problems"] = log_problems(stack)
    finally:
        await sweep_slurm(run)
        await release_leftovers(run)
        for folder in run.job_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if stack is not None and stack.keep_logs:
            result["logs"] = str(stack.workdir)
    return result


def log_problems(stack: Stack) -> dict[str, Any]:
    """The components' warning and error log lines by message: how many, the first one's time; log sizes."""
    found: dict[str, Any] = {}
    for name, component in stack.components.items():
        problems: dict[str, dict[str, Any]] = {}
        text = component.log.read_text(errors="replace") if component.log.exists() else ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            level = str(entry.get("severity", entry.get("level", ""))).upper()
            if level in ("WARNING", "ERROR", "CRITICAL"):
                seen = problems.setdefault(
                    f"{level}: {str(entry.get('message', ''))[:120]}", {"count": 0, "first": entry.get("timestamp")}
                )
                seen["count"] += 1
        found[name] = {"log_bytes": len(text.encode()), "problems": problems}
    return found


# --------------------------------------------------------------------------- output


def num(value: float | None, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{decimals}f}"


def table(document: dict[str, Any]) -> str:
    creation, steady = document["creation"], document["steady"]
    lines = [
        f"job load: {document['jobs']} jobs from {', '.join(document['users'])}, {document['concurrency']} at a time; "
        f"calls {creation['calls_s']} s ({creation['jobs_per_s']} jobs/s), {creation['errors']} errors; "
        f"creation window {creation['window_s']} s (settled {creation['settle_after_calls_s']} s after the last call)",
        "",
        f"{'latency (ms)':44} {'p50':>9} {'p99':>9} {'max':>9} {'n':>5}",
    ]
    for label, key in (("create call at Core", "create_ms"), ("create start → IN_QUEUE at Core", "in_queue_ms")):
        s = document[key]
        lines.append(f"{label:44} {s.get('p50', 0):9.1f} {s.get('p99', 0):9.1f} {s.get('max', 0):9.1f} {s['n']:5}")
    tracked = steady["bridge_tracked_jobs"]
    lines += [
        "",
        f"CPU, children excluded (steady: {steady['seconds']} s, {tracked[1]} jobs tracked); [reaped children]",
        f"{'':20} {'creation ms/job':>16} {'steady ms/s':>12} {'µs/job/s':>10}  {'[ms/job':>9} {'ms/s]':>7}",
    ]
    for name, c in document["cpu"].items():
        lines.append(
            f"{name:20} {num(c['creation_ms_per_job'], 16, 3)} {num(c['steady_ms_per_s'], 12, 2)} "
            f"{num(c['steady_us_per_job_per_s'], 10, 2)}  {num(c['children_creation_ms_per_job'], 9, 3)} "
            f"{num(c['children_steady_ms_per_s'], 7, 2)}"
        )
    verbs = f"{'':30}" + "".join(f"{v:>9}" for v in VERBS)
    per_job = document["creation_apiserver_per_job"]["requests"]
    lines += ["", "apiserver requests per created job (creation window)", verbs]
    for scope, label in (("ucloudjobs", "ucloudjobs"), ("*", "all resources")):
        lines.append(f"{label:30}" + "".join(f"{per_job[scope].get(v, 0):9.2f}" for v in VERBS))
    requests = steady["apiserver_requests_per_second"]
    lines += ["", "apiserver requests/s (steady window; a watch is counted when it ends)", verbs]
    for scope, label in (("ucloudjobs", "ucloudjobs"), ("all", "all resources")):
        lines.append(f"{label:30}" + "".join(f"{requests[scope].get(v, 0):9.2f}" for v in VERBS))
    sizes = steady["apiserver_ucloudjobs_bytes_per_second"]
    lines += [
        "apiserver answers on ucloudjobs: "
        + ", ".join(f"{verb} {value / 1e6:.2f} MB/s" for verb, value in sizes.items() if value)
        + f"; UCloudJob watch events {steady['apiserver_ucloudjob_watch_events_per_second']}/s "
        f"({steady['apiserver_ucloudjob_watch_event_bytes_per_second'] / 1e3:.1f} kB/s), "
        f"{steady['apiserver_open_ucloudjob_watches']:.0f} open watches",
        f"bridge: {steady['bridge_poll_cycles_per_second']} monitor cycles/s, Slurm query "
        f"{steady['bridge_slurm_query_ms_mean']} ms mean, {steady['bridge_poll_errors']:.0f} poll errors; "
        f"changes in the window: {steady['core_job_updates_in_window']} JobUpdates at Core, "
        f"{requests['ucloudjobs'].get('patch', 0)} ucloudjob patches/s",
        f"before the window, Slurm's view became quiet after {document['quiet']['seconds']} s "
        f"({document['quiet']['changes_seen']} changes seen; quiet: {document['quiet']['quiet']})",
        f"Slurm's view (state/reason) of {steady['slurm_view_changed_jobs']} jobs changed across the window: "
        f"{steady['slurm_view_before']} → {steady['slurm_view_after']}",
    ]
    burst = document.get("cancel_burst_ms", {})
    if burst.get("n"):
        lines.append(
            f"cancel burst: {burst['jobs']} jobs scancelled at once → final at Core: p50 {burst['p50']:.0f} ms, "
            f"p99 {burst['p99']:.0f} ms, all {burst['all_final_s']} s ({burst['final_at_core']} arrived)"
        )
    logs = document.get("log_problems", {})
    lines.append(
        "logs: "
        + ", ".join(f"{name} {found['log_bytes'] / 1e6:.2f} MB" for name, found in logs.items())
        + "; warnings/errors: "
        + (
            "; ".join(
                f"{name}: {text} ({seen['count']}x)"
                for name, found in logs.items()
                for text, seen in found["problems"].items()
            )
            or "none"
        )
    )
    lines.append(f"cleanup {document.get('cleanup_s')} s; run {document['duration_s']} s")
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__, keep_logs=True)
    parser.add_argument("--jobs", type=int, default=1000, help=f"UCloud jobs to create (default 1000, ≤ {MAX_JOBS})")
    parser.add_argument("--concurrency", type=int, default=8, help="create calls at a time (default 8)")
    parser.add_argument("--users", default="alice,bob", help="comma-separated owners, round-robin (default alice,bob)")
    parser.add_argument(
        "--quiet-seconds", type=float, default=35, help="Slurm's view unchanged this long first (default 35)"
    )
    parser.add_argument("--settle-seconds", type=float, default=5, help="then this pause (default 5)")
    parser.add_argument("--steady-seconds", type=float, default=30, help="the steady window (default 30)")
    parser.add_argument("--max-seconds", type=float, default=420, help="give up after this long (default 420)")
    opts = parser.parse_args()
    opts.users = [user for user in opts.users.split(",") if user]
    if not 1 <= opts.jobs <= MAX_JOBS:
        parser.error(f"--jobs must be between 1 and {MAX_JOBS}")
    if not 1 <= opts.concurrency <= 64:
        parser.error("--concurrency must be between 1 and 64")
    if not opts.users:
        parser.error("--users names no user")
    if not 1 <= opts.steady_seconds <= 300:
        parser.error("--steady-seconds must be between 1 and 300")
    fields = {"jobs": opts.jobs, "concurrency": opts.concurrency, "users": opts.users}
    return run_bench("job_load", opts, lambda: asyncio.run(bench(opts)), table, needs_root=True, **fields)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The job path: warm submit latency against raw sbatch, and state change → JobUpdate at Core.

Runs the whole of ucim as processes (``ucim.testing.stack.running_stack``: gateway, operator,
bridge, with UCloud/Core's stand-in in this process) against the local platform
(``python3 hack/local_platform.py up``), as root, in a fresh namespace ``ucim-bench-<rand>``.

**Warm submit**, side by side in one run: ``--count`` rounds, each submitting one job in every
one of these ways, in an order that rotates from round to round:

* (a1) ``runuser -u alice -- sbatch --parsable <trivial script>``, timed here (runuser's own
  PAM session set-up included);
* (a2) the same ``sbatch`` started by a Python process that already runs as alice (a helper
  started once with runuser), timed by that process: the raw cost of sbatch as the user;
* (b) ``POST <UserInstance.status.endpoint>/jobs/submit`` with the ingress token, over a kept-alive
  connection, timed here: bridge ingress → alice's instance → render, job folder, sbatch; the job is
  the stand-in's ``sleep-exit`` (a two-line template), as the operator would send it;
* (b2) the same for the example of PROTOCOL-APPS §11 (``hello-py``: a load instruction resolved through
  the site's applications/, an input file opened as alice, ``srun()``, ``flag``), so (b2) - (b) is what
  rendering a real Core application adds to a submission;
* (c) ``core.create_jobs`` (Core → gateway → UCloudJob → operator → instance → Submitted), timed
  here, for reference;

and (a3), the sbatch call inside the instance as the instance logs it (``Slurm job submitted``),
which (b) minus (a3) turns into what ucim itself adds to each submission. The first Core job
(which starts alice's instance) and three rounds of each kind come first and are not counted.
While they are submitted a root job holds every node (``--exclusive``, 30-minute limit, cancelled
when the nodes are wanted), so none of them runs and no job start competes for the two CPUs; every
job goes to the same pending queue.

**State change → JobUpdate received by Core**, with the Slurm hook and with the poll alone, side
by side, at each number of ``--active-jobs``: first the run grows the number of jobs the bridge
tracks to that many (Core jobs, ``sleep-exit`` 600 s, created 8 at a time while the nodes are held,
then ``scontrol hold``: they stay pending, tracked, for the rest of the run); then, for each of
``--modes`` (``hook``: the bridge listens for the platform's PrologSlurmctld/EpilogSlurmctld hook
and polls at its adaptive interval; ``poll``: the hook listener off, the poll every second), the
bridge is restarted with that setting, ``--state-changes`` fresh Core jobs are created, held
(``scontrol hold``) and the nodes freed; then, one job at a time, after a random pause
(so that the change lands at a random point of the bridge's 1 s poll cycle): ``scontrol release``
→ the job turns RUNNING; after another pause, ``scancel`` → it turns CANCELLED (UCloud SUCCESS).
The instant of each Slurm change is found by asking squeue about that one job every ~10 ms
(its uncertainty is reported); the instant Core received the update is recorded by the
stand-in; the bridge's transition timestamp splits the latency into detection (Slurm → the
bridge) and delivery (→ operator → Core). The bridge's own Slurm calls are counted from
its ``/metrics`` (``ucim_slurm_command_seconds_count``: squeue, sacct, ...;
``ucim_slurm_poll_duration_seconds_count``: queries of the monitor, polls and hook batches;
``ucim_slurm_hook_queries_total``: the hook batches alone) over a window that starts and ends
right after one of its queries.

Poll only, job *starts* are not at a random point of the bridge's cycle, whatever the pauses:
slurmctld starts jobs on its own once-a-second tick, whose phase drifts only slowly (a few ms
per second) against the bridge's 1 s poll. Within one run the RUNNING latency is therefore nearly
constant, somewhere between ~0.05 and ~1.05 s depending on that phase; averaged over a long time
it is ~0.5 s like any other change. Cancellations (and job ends) happen at any moment. With the
hook, a change is noticed when slurmctld runs the hook (~30 ms *before* squeue shows it: the job
is CONFIGURING or COMPLETING meanwhile, and the bridge asks again until it is not).

    python3 -m bench job_path                           # 30 submit rounds; 20 jobs' changes at 100 jobs, both modes
    python3 -m bench job_path --count 10 --active-jobs 100,1000 --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
Every job the run made is cancelled, its job folder removed, the namespace deleted, however
the run ends. The run is bounded: ``--count`` ≤ 200, ``--active-jobs`` ≤ 2000 and ``--max-seconds`` (default 900).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.report import bench_parser, run_bench, summary
from ucim.common.instance_api import SUBMIT_PATH
from ucim.common.kube import Kube
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.protocol import AppParameterValue, JobState, SimpleDuration
from ucim.common.resources import UCloudJob, UserInstance
from ucim.gateway.jobs import to_ucloud_job
from ucim.operator.jobs import submit_request
from ucim.testing.metrics import scrape
from ucim.testing.stack import CLUSTER, PROVIDER, Stack, read_platform_env, running_stack

USER: Final = "alice"
# The input file of the hello-py submissions, in alice's home.
BENCH_INPUT: Final = "ucim-bench-input.txt"
RUNUSER: Final = shutil.which("runuser") or "/usr/sbin/runuser"
# The helper that runs as alice needs an interpreter alice can execute (not root's own, perhaps).
SYSTEM_PYTHON: Final = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
MAX_COUNT: Final = 200
MAX_ACTIVE: Final = 2000
CREATE_CONCURRENCY: Final = 8
HOLD_CHUNK: Final = 200  # ids per scontrol hold
MODES: Final = ("hook", "poll")
WARM_UP_ROUNDS: Final = 3
SLURM_POLL_PERIOD: Final = 0.01  # how often this bench asks squeue about the one job that is changing
# Slurm state change → JobUpdate at Core (ms), by mode.
LATENCY_TARGETS: Final = {"hook": {"p50": 100.0, "p99": 300.0}, "poll": {"p50": 1000.0, "p99": 2000.0}}
# The poll's queries: at most one a second, whatever the number of jobs.
POLL_QUERIES_PER_SECOND: Final = 1.0
TARGETS: Final = {
    "warm_submit": "instance /jobs/submit <= 1.3 x raw sbatch + 20 ms (p50 and p99)",
    "state_change_ms": LATENCY_TARGETS,
    "bridge_poll_queries_per_second": POLL_QUERIES_PER_SECOND,
}
# sbatch of the raw rounds: as small as the instance's script, with the same kind of directives.
TRIVIAL_SCRIPT: Final = """#!/bin/bash
#SBATCH --job-name=ucim-bench-raw
#SBATCH --output=/dev/null
#SBATCH --time=1
#SBATCH --mem=100
#SBATCH --partition=normal
sleep 0
"""
# Runs as alice: one JSON argv per line in, one JSON result per line out; times each command itself.
HELPER: Final = r"""
import json, subprocess, sys, time
for line in sys.stdin:
    request = json.loads(line)
    started = time.perf_counter()
    done = subprocess.run(request["argv"], cwd=request["cwd"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr, "seconds": seconds}), flush=True)
"""


@dataclass
class Run:
    """What one run made (so that cleanup finds all of it) and measured."""

    env: dict[str, str]
    tag: str
    workdir: Path
    deadline: float
    rng: random.Random
    blocker: int | None = None
    slurm_ids: set[int] = field(default_factory=set)
    job_folders: list[Path] = field(default_factory=list)
    core_jobs: dict[str, int] = field(default_factory=dict)  # UCloud job id → Slurm id
    background: set[int] = field(default_factory=set)  # held Core jobs: tracked, never changing
    instance_submits: dict[int, float] = field(default_factory=dict)  # Slurm id → (b) seconds, warm rounds
    samples: dict[str, list[float]] = field(default_factory=dict)
    sequence: list[tuple[str, float]] = field(default_factory=list)

    serial: int = 0

    def next_job_id(self) -> str:
        self.serial += 1
        return f"{int(self.tag, 16) % 10**6}{self.serial:04d}"

    def add(self, kind: str, seconds: float) -> None:
        self.samples.setdefault(kind, []).append(seconds * 1000)

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"--max-seconds reached during {what}")

    @property
    def slurm_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


async def command(argv: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def slurm(run: Run, *argv: str, check: bool = True) -> str:
    rc, out, err = await command(argv, run.slurm_env)
    if check and rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc}): {err.strip()}")
    return out.strip()


def sbatch_id(output: str) -> int:
    return int(output.strip().splitlines()[-1].split(";")[0])


class AliceHelper:
    """A process that already runs as alice and runs commands for us, timing them itself."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, run: Run) -> AliceHelper:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": f"/home/{USER}",
            "USER": USER,
            "LOGNAME": USER,
            "LANG": "C.UTF-8",
            "SLURM_CONF": run.env["SLURM_CONF"],
        }
        proc = await asyncio.create_subprocess_exec(
            RUNUSER, "-u", USER, "--", SYSTEM_PYTHON, "-u", "-c", HELPER,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=run.workdir,
        )  # fmt: skip
        return cls(proc)

    async def run(self, argv: Sequence[str], cwd: Path) -> tuple[int, str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"argv": list(argv), "cwd": str(cwd)}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 60))
        if answer["rc"] != 0:
            raise RuntimeError(f"{' '.join(argv)} as {USER} failed: {answer['err'].strip()}")
        return int(answer["rc"]), str(answer["out"]), float(answer["seconds"])

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def metrics(url: str) -> dict[str, float]:
    """The bridge's Slurm counters: commands by tool and monitor cycles that queried Slurm."""
    found: dict[str, float] = defaultdict(float)
    for sample in await scrape(url):
        if sample.name == "ucim_slurm_command_seconds_count":
            found[sample.labels["command"]] += sample.value
        elif sample.name == "ucim_slurm_poll_duration_seconds_count":
            found["poll_cycles"] += sample.value
        elif sample.name == "ucim_slurm_hook_queries_total":
            found["hook_queries"] += sample.value
        elif sample.name == "ucim_slurm_hook_notifications_total":
            found[f"hook_{sample.labels['result']}"] += sample.value
        elif sample.name == "ucim_slurm_tracked_jobs":
            found["tracked"] = sample.value
    return dict(found)


# --------------------------------------------------------------------------- warm submit


async def start_blocker(run: Run) -> None:
    """A root job that takes every node of the partition, so that what the bench submits stays pending."""
    nodes = await slurm(run, "sinfo", "-h", "--partition=normal", "-o", "%D")
    out = await slurm(
        run, "sbatch", "--parsable", "--exclusive", f"--nodes={nodes}", "--partition=normal", "--time=30",
        "--job-name=ucim-bench-blocker", "--output=/dev/null", f"--chdir={run.workdir}", "--wrap", "sleep 1800",
    )  # fmt: skip
    run.blocker = sbatch_id(out)
    run.slurm_ids.add(run.blocker)  # cancelled by the cleanup whatever happens
    for _ in range(300):
        if await slurm(run, "squeue", "-h", "-j", str(run.blocker), "-o", "%T", check=False) == "RUNNING":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the nodes are busy: the bench's blocker job did not start within 30 s")


def submit_body(stack: Stack, job_id: str, name: str, app: tuple[str, str], parameters: dict[str, Any]) -> Any:
    """What the operator sends alice's instance for this Core job (the gateway's UCloudJob, then the request)."""
    job = stack.core.make_job(job_id, USER, app, parameters, time_allocation=SimpleDuration(minutes=1))
    home = stack.core.home_of(USER)
    resource = to_ucloud_job(
        job, namespace=stack.namespace, cluster=CLUSTER, provider_id=PROVIDER, machines=list(DEFAULT_MACHINE_TYPES),
        drives={home.id: home.provider_generated_id},
    )  # fmt: skip
    resource.metadata.uid = name.removeprefix("ucim-")
    return submit_request(resource).model_dump(mode="json", by_alias=True, exclude_none=True)


async def core_create(run: Run, stack: Stack, kube: Kube) -> float:
    """One Core job (sleep-exit 600 s) created and Submitted; how long Core's create took."""
    core = stack.core
    job_id = run.next_job_id()
    job = core.make_job(job_id, USER, ("sleep-exit", "1"), {"seconds": 600}, time_allocation=SimpleDuration(minutes=10))
    started = time.perf_counter()
    await core.create_jobs([job])
    seconds = time.perf_counter() - started
    run.job_folders.append(Path(f"/home/{USER}/ucloud-jobs/{job_id}"))
    created = await kube.get(UCloudJob, stack.namespace, UCloudJob.name_for(job_id))
    if created is None or created.status.slurm_job_id is None:
        raise RuntimeError(f"Core job {job_id} was not submitted when create_jobs answered")
    run.core_jobs[job_id] = created.status.slurm_job_id
    run.slurm_ids.add(created.status.slurm_job_id)
    return seconds


@dataclass
class Submitters:
    """The four ways of submitting a job; each returns how long its submission took, in seconds."""

    run: Run
    stack: Stack
    kube: Kube
    helper: AliceHelper
    session: aiohttp.ClientSession
    sbatch: list[str]
    submit_url: str = ""

    async def raw_runuser(self) -> float:
        run = self.run
        started = time.perf_counter()
        rc, out, err = await command([RUNUSER, "-u", USER, "--", *self.sbatch], run.slurm_env, run.workdir)
        seconds = time.perf_counter() - started
        if rc != 0:
            raise RuntimeError(f"runuser sbatch failed: {err.strip()}")
        run.slurm_ids.add(sbatch_id(out))
        return seconds

    async def raw_as_alice(self) -> float:
        _, out, seconds = await self.helper.run(self.sbatch, self.run.workdir)
        self.run.slurm_ids.add(sbatch_id(out))
        return seconds

    async def instance_submit(self) -> float:
        return await self._instance_submit(("sleep-exit", "1"), {"seconds": 0})

    async def instance_submit_core_app(self) -> float:
        home = self.stack.core.home_of(USER).id
        parameters = {"input": AppParameterValue.file(f"/{home}/{BENCH_INPUT}"), "verbose": True}
        return await self._instance_submit(("hello-py", "3.11"), parameters)

    async def _instance_submit(self, app: tuple[str, str], parameters: dict[str, Any]) -> float:
        run = self.run
        job_id = run.next_job_id()
        body = submit_body(self.stack, job_id, f"ucim-bench-{run.tag}-{job_id}", app, parameters)
        headers = {"Authorization": f"Bearer {self.stack.envs['ucim-bridge']['UCIM_BRIDGE_INGRESS_TOKEN']}"}
        started = time.perf_counter()
        async with self.session.post(self.submit_url, json=body, headers=headers) as response:
            answer = await response.json()
        seconds = time.perf_counter() - started
        run.job_folders.append(Path(f"/home/{USER}/ucloud-jobs/{job_id}"))
        if response.status != 200:
            raise RuntimeError(f"/jobs/submit answered {response.status}: {answer}")
        run.slurm_ids.add(answer["slurmJobId"])
        if app[0] == "sleep-exit":
            run.instance_submits[answer["slurmJobId"]] = seconds
        return seconds

    async def core_create(self) -> float:
        return await core_create(self.run, self.stack, self.kube)

    async def find_instance(self) -> None:
        """The first Core job brings alice's instance up (449, integration/init, retry): not a warm submit."""
        await self.core_create()
        instance = await self.kube.get(UserInstance, self.stack.namespace, UserInstance.name_for(USER, CLUSTER))
        if instance is None or instance.status.endpoint is None:
            raise RuntimeError(f"{USER}'s instance has no endpoint")
        self.submit_url = instance.status.endpoint.rstrip("/") + SUBMIT_PATH


async def measure_submits(run: Run, stack: Stack, kube: Kube, count: int) -> None:
    script = run.workdir / "trivial.sbatch"
    script.write_text(TRIVIAL_SCRIPT)
    script.chmod(0o644)
    run.workdir.chmod(0o755)
    helper = await AliceHelper.start(run)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            submitters = Submitters(run, stack, kube, helper, session, ["sbatch", "--parsable", str(script)])
            await submitters.find_instance()
            # hello-py's input file, alice's own.
            await helper.run(["sh", "-c", f"printf 'words\\n' > ~/{BENCH_INPUT}"], run.workdir)
            kinds: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                ("a1_runuser_sbatch", submitters.raw_runuser),
                ("a2_sbatch_as_alice", submitters.raw_as_alice),
                ("b_instance_submit", submitters.instance_submit),
                ("b2_instance_submit_core_app", submitters.instance_submit_core_app),
                ("c_core_create", submitters.core_create),
            ]
            for round_ in range(WARM_UP_ROUNDS + count):
                run.check_time("the submit rounds")
                shift = round_ % len(kinds)
                for kind, submit in kinds[shift:] + kinds[:shift]:
                    seconds = await submit()
                    if round_ >= WARM_UP_ROUNDS:
                        run.add(kind, seconds)
                        run.sequence.append((kind, round(seconds * 1000, 2)))
    finally:
        await helper.close()
    # The instance's own timings of the warm-up submissions are not wanted either.
    for slurm_id in list(run.instance_submits)[:WARM_UP_ROUNDS]:
        del run.instance_submits[slurm_id]


def sbatch_in_instance(log: Path, slurm_ids: set[int]) -> dict[int, float]:
    """The instance's own sbatch times (``Slurm job submitted``, in the bridge's log) for these jobs."""
    seconds = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("message") == "Slurm job submitted" and entry.get("slurm_job_id") in slurm_ids:
                seconds[int(entry["slurm_job_id"])] = float(entry["seconds"])
    return seconds


# --------------------------------------------------------------------------- state changes


async def slurm_change(run: Run, slurm_id: int, wanted: str, since: float) -> tuple[float, float]:
    """When squeue first shows ``wanted`` for the job: (estimate, ± uncertainty), epoch seconds."""
    previous = since
    for _ in range(3000):
        started = time.time()
        state = await slurm(run, "squeue", "-h", "-t", "all", "-j", str(slurm_id), "-o", "%T", check=False)
        ended = time.time()
        if state == wanted:
            return (previous + ended) / 2, (ended - previous) / 2
        previous = started
        await asyncio.sleep(SLURM_POLL_PERIOD)
    raise RuntimeError(f"Slurm job {slurm_id} did not become {wanted}")


async def core_received(stack: Stack, job_id: str, state: JobState) -> tuple[float, int]:
    """(when Core received the job's first update to ``state``, epoch seconds; the update's timestamp, ms)."""
    await stack.core.wait_for_update(job_id, state, timeout=30)
    at, update = next((at, u) for at, u in stack.core.record.received(job_id) if u.state == state)
    return at, update.timestamp


def slurm_queries(counts: dict[str, float]) -> float:
    return sum(counts.get(tool, 0) for tool in ("squeue", "sacct", "scontrol", "sinfo"))


async def right_after_a_poll(url: str) -> tuple[dict[str, float], float]:
    """The bridge's counters just after its next Slurm query (±20 ms), and when: a window edge."""
    first = slurm_queries(await metrics(url))
    deadline = time.monotonic() + 5  # without tracked jobs the bridge asks Slurm nothing
    while True:
        await asyncio.sleep(0.02)
        counts, now = await metrics(url), time.time()
        if slurm_queries(counts) != first or time.monotonic() > deadline:
            return counts, now


async def measure_state_changes(run: Run, stack: Stack, probes: dict[str, int], bridge_metrics: str) -> dict[str, Any]:
    """Hold the probes, free the nodes, then start and cancel one probe at a time; the latencies and Slurm calls."""
    await slurm(run, "scontrol", "hold", ",".join(str(i) for i in probes.values()))
    if run.blocker is not None:
        await slurm(run, "scancel", str(run.blocker), check=False)
        run.blocker = None
    await asyncio.sleep(3)  # the nodes are free, the monitor has seen the holds
    before, started = await right_after_a_poll(bridge_metrics)
    events: list[dict[str, Any]] = []
    for job_id, slurm_id in probes.items():
        for action, slurm_state, ucloud_state in (
            ("scontrol release", "RUNNING", JobState.RUNNING),
            ("scancel", "CANCELLED", JobState.SUCCESS),
        ):
            run.check_time("the state changes")
            # A random moment of the bridge's poll cycle (job starts still come at slurmctld's own tick).
            await asyncio.sleep(run.rng.uniform(0.0, 1.0))
            since = time.time()
            await slurm(run, *action.split(), str(slurm_id))
            (changed, plus_minus), (received, stamp) = await asyncio.gather(
                slurm_change(run, slurm_id, slurm_state, since), core_received(stack, job_id, ucloud_state)
            )
            events.append({
                "job": job_id, "slurmJobId": slurm_id, "action": action, "state": ucloud_state.value,
                "slurmChangedAt": round(changed, 3), "uncertaintyMs": round(plus_minus * 1000, 1),
                "bridgeTransitionAt": stamp / 1000, "coreReceivedAt": round(received, 3),
            })  # fmt: skip
    after, ended = await right_after_a_poll(bridge_metrics)
    seconds = ended - started
    queries = slurm_queries(after) - slurm_queries(before)
    hook_queries = after.get("hook_queries", 0) - before.get("hook_queries", 0)
    cycles = after.get("poll_cycles", 0) - before.get("poll_cycles", 0)

    def part(state: str | None, start: str, end: str) -> dict[str, float]:
        chosen = [e for e in events if state in (None, e["state"])]
        return summary([(e[end] - e[start]) * 1000 for e in chosen])

    return {
        "tracked_jobs_at_start": int(before.get("tracked", 0)),
        "window_seconds": round(seconds, 2),
        "state_change_to_core_ms": {
            state or "all": part(state, "slurmChangedAt", "coreReceivedAt") for state in ("RUNNING", "SUCCESS", None)
        },
        "slurm_to_bridge_ms": {
            state or "all": part(state, "slurmChangedAt", "bridgeTransitionAt")
            for state in ("RUNNING", "SUCCESS", None)
        },
        "bridge_to_core_ms": part(None, "bridgeTransitionAt", "coreReceivedAt"),
        "slurm_change_uncertainty_ms": summary([e["uncertaintyMs"] for e in events]),
        "bridge_slurm_commands": {
            k: v - before.get(k, 0) for k, v in sorted(after.items()) if k in ("squeue", "sacct", "scontrol", "sinfo")
        },
        "bridge_slurm_queries_per_second": round(queries / seconds, 3),
        # The poll's own: every monitor query but the hook's batches.
        "bridge_poll_queries_per_second": round((cycles - hook_queries) / seconds, 3),
        "bridge_hook_queries_per_second": round(hook_queries / seconds, 3),
        "hook_notifications": {
            k.removeprefix("hook_"): after[k] - before.get(k, 0)
            for k in sorted(after)
            if k.startswith("hook_") and k != "hook_queries"
        },
        "events": events,
    }


# --------------------------------------------------------------------------- active jobs and modes


async def hold_all(run: Run, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), HOLD_CHUNK):
        await slurm(run, "scontrol", "hold", ",".join(str(i) for i in ids[start : start + HOLD_CHUNK]), check=False)


async def create_core_jobs(run: Run, stack: Stack, kube: Kube, count: int) -> dict[str, int]:
    """``count`` Core jobs (sleep-exit 600 s), a few at a time, while the blocker holds the nodes."""
    before = set(run.core_jobs)
    queue: asyncio.Queue[None] = asyncio.Queue()
    for _ in range(count):
        queue.put_nowait(None)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            run.check_time("creating jobs")
            await core_create(run, stack, kube)

    await asyncio.gather(*(worker() for _ in range(CREATE_CONCURRENCY)))
    return {job: slurm_id for job, slurm_id in run.core_jobs.items() if job not in before}


async def grow_background(run: Run, stack: Stack, kube: Kube, active: int, probes: int) -> None:
    """As many held, tracked Core jobs that ``active`` are tracked while ``probes`` jobs are measured."""
    wanted = max(0, active - probes - len(run.background))
    if wanted:
        if run.blocker is None:
            await start_blocker(run)
        created = await create_core_jobs(run, stack, kube, wanted)
        await hold_all(run, sorted(created.values()))
        run.background |= set(created.values())


async def use_mode(stack: Stack, mode: str) -> None:
    """Restart the bridge with the hook listener on (``hook``) or off (``poll``), unless it runs so already."""
    env = stack.envs["ucim-bridge"]
    wanted = "true" if mode == "hook" else "false"
    if env.get("UCIM_BRIDGE_HOOK__ENABLED") == wanted:
        return
    env["UCIM_BRIDGE_HOOK__ENABLED"] = wanted
    process = stack.components["ucim-bridge"].process
    process.terminate()
    await asyncio.wait_for(process.wait(), 30)
    await stack.start("ucim-bridge")


async def measure_mode(
    run: Run, stack: Stack, kube: Kube, mode: str, *, changes: int, metrics_url: str
) -> dict[str, Any]:
    await use_mode(stack, mode)
    if run.blocker is None:
        await start_blocker(run)
    probes = await create_core_jobs(run, stack, kube, changes)
    return {"mode": mode, **await measure_state_changes(run, stack, probes, metrics_url)}


# --------------------------------------------------------------------------- the run


async def cleanup(run: Run, stack: Stack | None, kube: Kube | None, namespace: str) -> None:
    """Cancel every job, let the operator release the UCloudJobs, remove the job folders."""
    ids = sorted(run.slurm_ids | ({run.blocker} if run.blocker else set()))
    if ids:
        await slurm(run, "scancel", *(str(i) for i in ids), check=False)
    if kube is not None and stack is not None:
        for job in await kube.list(UCloudJob, namespace):
            with contextlib.suppress(Exception):
                await kube.delete(UCloudJob, namespace, job.metadata.name)
        for _ in range(150):  # the operator cancels, tells Core and lets go: bounded
            if not await kube.list(UCloudJob, namespace):
                break
            await asyncio.sleep(0.2)
    for folder in run.job_folders:
        shutil.rmtree(folder, ignore_errors=True)


def release_leftovers(env: dict[str, str], namespace: str) -> None:
    """After the operator stopped: drop the finalizers of anything left, then delete the namespace."""
    kubectl = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"], "-n", namespace]
    full_env = {**os.environ, **env}
    for kind in ("ucloudjobs", "userinstances"):
        names = subprocess.run(
            [*kubectl, "get", kind, "-o", "name"], capture_output=True, text=True, env=full_env, check=False
        ).stdout.split()
        for name in names:
            subprocess.run(
                [*kubectl, "patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'],
                capture_output=True, env=full_env, check=False,
            )  # fmt: skip
    delete = [*kubectl[:-2], "delete", "namespace", namespace, "--wait=false"]
    subprocess.run(delete, capture_output=True, env=full_env, check=False)


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    env = read_platform_env()
    tag = uuid.uuid4().hex[:6]
    namespace = f"ucim-bench-{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="ucim-bench-job-path-"))
    run = Run(
        env=env, tag=tag, workdir=workdir, deadline=time.monotonic() + opts.max_seconds, rng=random.Random(opts.seed)
    )
    kubectl = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    if (await command([*kubectl, "create", "namespace", namespace], run.slurm_env))[0] != 0:
        raise RuntimeError(f"cannot create the namespace {namespace}")
    result: dict[str, Any] = {"namespace": namespace}
    stack: Stack | None = None
    cleaned = False
    try:
        async with running_stack(env, namespace) as stack, await Kube.connect(env["KUBECONFIG"]) as kube:
            stack.keep_logs = opts.keep_logs
            bridge_metrics = f"http://127.0.0.1:{stack.envs['ucim-bridge']['UCIM_BRIDGE_METRICS_PORT']}/metrics"
            try:
                await start_blocker(run)
                await measure_submits(run, stack, kube, opts.count)
                bridge_log = stack.components["ucim-bridge"].log
                in_instance = sbatch_in_instance(bridge_log, set(run.instance_submits))
                for slurm_id, seconds in in_instance.items():
                    run.add("a3_sbatch_in_instance", seconds)
                    # What ucim adds to sbatch: ingress, instance, script and folder, per submission.
                    run.add("b_minus_a3_ucim_overhead", run.instance_submits[slurm_id] - seconds)
                # Only the Core jobs are tracked by the bridge; the others go now, and these stay, held.
                others = run.slurm_ids - set(run.core_jobs.values()) - {run.blocker}
                await slurm(run, "scancel", *(str(i) for i in sorted(others)), check=False)
                await hold_all(run, sorted(run.core_jobs.values()))
                run.background |= set(run.core_jobs.values())
                result["state_changes"] = []
                for active in opts.active_jobs:
                    await grow_background(run, stack, kube, active, opts.state_changes)
                    for mode in opts.modes:
                        measured = await measure_mode(
                            run, stack, kube, mode, changes=opts.state_changes, metrics_url=bridge_metrics
                        )
                        result["state_changes"].append({"active_jobs": active, **measured})
            except BaseException:
                print(stack.logs(), file=sys.stderr)
                raise
            finally:
                await cleanup(run, stack, kube, namespace)
                cleaned = True
    finally:
        if not cleaned:
            await cleanup(run, None, None, namespace)
        await asyncio.to_thread(release_leftovers, env, namespace)
        shutil.rmtree(workdir, ignore_errors=True)
        if stack is not None and stack.keep_logs:
            result["logs"] = str(stack.workdir)
    result["submit_ms"] = {kind: summary(samples) for kind, samples in sorted(run.samples.items())}
    result["verdict"] = verdict(result)
    result["submit_sequence"] = run.sequence
    return result


def check(measured: float, limit: float) -> dict[str, Any]:
    return {"measured": measured, "limit": limit, "ok": measured <= limit}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    submit = result["submit_ms"]
    b = submit["b_instance_submit"]
    checks: dict[str, Any] = {}
    for raw in ("a2_sbatch_as_alice", "a1_runuser_sbatch"):
        for p in ("p50", "p99"):
            checks[f"submit_{p}_vs_{raw}"] = check(b[p], round(1.3 * submit[raw][p] + 20, 2))
    for measured in result["state_changes"]:
        where = f"{measured['mode']}@{measured['active_jobs']}"
        latency = measured["state_change_to_core_ms"]["all"]
        for p in ("p50", "p99"):
            checks[f"state_change_{p} {where}"] = check(latency[p], LATENCY_TARGETS[measured["mode"]][p])
        rate = measured["bridge_poll_queries_per_second"]
        checks[f"poll_queries_per_second {where}"] = check(rate, POLL_QUERIES_PER_SECOND)
    return checks


LABELS: Final = {
    "a1_runuser_sbatch": "(a1) runuser -u alice -- sbatch",
    "a2_sbatch_as_alice": "(a2) sbatch from a process as alice",
    "a3_sbatch_in_instance": "(a3) sbatch inside the instance",
    "b_minus_a3_ucim_overhead": "(b)-(a3) what ucim adds, per submission",
    "b_instance_submit": "(b) /jobs/submit via the ingress",
    "b2_instance_submit_core_app": "(b2) the same, §11's hello-py",
    "c_core_create": "(c) Core create_jobs → Submitted",
    "IN_QUEUE": "",
    "RUNNING": "→ RUNNING (scontrol release)",
    "SUCCESS": "→ SUCCESS (scancel)",
    "all": "all state changes",
}


def table(result: dict[str, Any]) -> str:
    def row(label: str, s: dict[str, float]) -> str:
        return f"{label:44} {s['p50']:9.1f} {s['p99']:9.1f} {s['max']:9.1f} {s['n']:5}"

    header = f"{'':44} {'p50':>9} {'p99':>9} {'max':>9} {'n':>5}"
    lines = ["warm submit (ms)", header]
    lines += [row(LABELS[kind], s) for kind, s in result["submit_ms"].items()]
    for changes in result["state_changes"]:
        tracked, mode = changes["tracked_jobs_at_start"], changes["mode"]
        title = "the Slurm hook" if mode == "hook" else "the poll alone"
        lines += ["", f"state change → JobUpdate received by Core (ms), {title}, {tracked} jobs tracked", header]
        lines += [row(LABELS[kind], s) for kind, s in changes["state_change_to_core_ms"].items()]
        for kind in ("RUNNING", "SUCCESS", "all"):
            lines.append(row(f"  of which Slurm → bridge's transition, {kind}", changes["slurm_to_bridge_ms"][kind]))
        lines.append(row("  of which bridge's transition → Core", changes["bridge_to_core_ms"]))
        lines.append(row("  (± when squeue showed the change)", changes["slurm_change_uncertainty_ms"]))
        lines.append(
            f"bridge Slurm calls: {changes['bridge_slurm_commands']} in {changes['window_seconds']} s = "
            f"{changes['bridge_slurm_queries_per_second']}/s (poll {changes['bridge_poll_queries_per_second']}/s, "
            f"hook batches {changes['bridge_hook_queries_per_second']}/s); "
            f"hook datagrams {changes['hook_notifications']}"
        )
    lines += ["", "targets"]
    for name, verdict in result["verdict"].items():
        lines.append(
            f"  {name:44} {verdict['measured']:>9} ≤ {verdict['limit']:<9} {'ok' if verdict['ok'] else 'MISSED'}"
        )
    return "\n".join(lines)


def sizes(text: str) -> list[int]:
    return sorted({int(word) for word in text.split(",")})


def modes(text: str) -> list[str]:
    chosen = [word.strip() for word in text.split(",")]
    if not chosen or any(mode not in MODES for mode in chosen):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}")
    return chosen


def main() -> int:
    parser = bench_parser(__doc__, keep_logs=True)
    parser.add_argument("--count", type=int, default=30, help="submit rounds (default 30)")
    parser.add_argument(
        "--state-changes", type=int, default=20, help="jobs whose two state changes are timed, per mode and size"
    )
    parser.add_argument(
        "--active-jobs", type=sizes, default=[100], help="jobs the bridge tracks meanwhile, e.g. 100,1000 (default 100)"
    )
    parser.add_argument(
        "--modes", type=modes, default=list(MODES), help="hook, poll or hook,poll (default: both, side by side)"
    )
    parser.add_argument("--max-seconds", type=float, default=900, help="give up after this long (default 900)")
    parser.add_argument("--seed", type=int, default=None, help="of the random pauses")
    opts = parser.parse_args()
    if not 1 <= opts.count <= MAX_COUNT:
        parser.error(f"--count must be between 1 and {MAX_COUNT}")
    if not 1 <= opts.state_changes <= MAX_COUNT:
        parser.error(f"--state-changes must be between 1 and {MAX_COUNT}")
    if max(opts.active_jobs) > MAX_ACTIVE:
        parser.error(f"--active-jobs must be at most {MAX_ACTIVE}")
    return run_bench(
        "job_path", opts, lambda: asyncio.run(bench(opts)), table, needs_root=True, count=opts.count, targets=TARGETS
    )


if __name__ == "__main__":
    sys.exit(main())

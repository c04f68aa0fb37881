"""Fault drills: a stream of short jobs, a crash in the middle of it, and what every job saw.

A drill reads as what it does::

    drill = Drill(stack)
    async with drill.stream(jobs=8, over_seconds=4):
        await drill.outage(component(stack, "ucim-bridge"), after=1.5, down_for=3)
    report = await drill.finish()
    report.check()

``stream`` creates short ``sleep-exit`` jobs as Core does (``CoreStandIn.create_jobs``: the
449 → ``integration/init`` → retry loop included), spread over ``over_seconds`` and over the
users; a create that got no answer (the gateway was down) or a 449/503 after Core's retries is
made again, with the same job, as Core's retry would be. ``outage`` kills something (a ucim
component, a platform daemon, Core itself) and starts it again after ``down_for`` seconds,
whatever happens in between. ``finish`` waits (bounded) until Core has a final state for
every job, gives late duplicates a moment to arrive, then looks the jobs up in Slurm by their
job names (``ucim-<UCloudJob uid>``) and returns a :class:`DrillReport`.

The invariants ``DrillReport.violations`` checks, for every job:

* **created**: Core's create was answered 200 in the end, and every answer came within Core's
  budget (``budget_seconds``, ~5 s) as a 200, a 449 or a 503 with a readable ``why``; "no
  answer" only while the gateway was down;
* **nothing lost, in order**: the states Core received are IN_QUEUE, RUNNING (it may be missed
  when a job is short) and exactly one final state, in that order, with non-decreasing
  timestamps;
* **nothing duplicated**: no state twice, and exactly one Slurm job with the job's name (none
  is allowed for a job that Core was told Slurm lost: a slurmctld killed before it saved its
  state forgets the jobs it accepted last, and the bridge fails them, saying so).

The same harness runs the seeded chaos soak (``bench/soak.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from ucim.common.protocol import JobState, JobUpdate
from ucim.slurm_bridge.monitor import LOST_MESSAGE, VANISHED_MESSAGE
from ucim.testing.core_standin import CoreStandIn, ProviderCall, ProviderCallError
from ucim.testing.platform_daemons import PlatformDaemons
from ucim.testing.stack import Stack

# Core gives a provider call about 5 s before it records a failure (docs/protocol.md).
CORE_BUDGET_SECONDS: Final = 5.0
# Answers after which Core tries again: the user's instance is not ready, or the provider is busy.
RETRIED_STATUSES: Final = frozenset({449, 503})
ORDER: Final = {JobState.IN_QUEUE: 0, JobState.RUNNING: 1}
GATEWAY: Final = "ucim-gateway"


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """Something a drill crashes: ``kill`` it, later ``start`` it again."""

    name: str
    kill: Callable[[], Awaitable[Any]]
    start: Callable[[], Awaitable[Any]]
    # While it is down, Core's calls find nobody listening (a create without an answer is expected then).
    silences_gateway: bool = False


def component(stack: Stack, name: str) -> Fault:
    """A ucim component (``ucim-gateway``, ``ucim-operator``, ``ucim-bridge``), SIGKILLed."""
    short = name.removeprefix("ucim-")
    return Fault(short, lambda: stack.kill(name), lambda: stack.start(name), silences_gateway=name == GATEWAY)


def daemons(platform: PlatformDaemons, *names: str) -> Fault:
    """Platform daemons (``slurmctld``; ``etcd`` and ``kube-apiserver``), SIGKILLed together, started in order."""
    return Fault("+".join(names), lambda: platform.kill(*names), lambda: platform.start(*names))


def core_unreachable(core: CoreStandIn, *, failing_seconds: float) -> Fault:
    """Core answers 503 to every call for ``failing_seconds``, then does not listen at all until started again."""

    async def kill() -> None:
        core.fail_requests(None, status=503)
        await asyncio.sleep(failing_seconds)
        await core.go_offline()

    async def start() -> None:
        await core.go_online()
        core.clear_failures()

    return Fault("core", kill, start)


@dataclass
class Outage:
    """When a fault's kill began and its start ended (``time.time()``), and how long each took."""

    name: str
    killed_at: float
    started_at: float = 0.0
    kill_seconds: float = 0.0
    start_seconds: float = 0.0
    silences_gateway: bool = False

    def covers(self, moment: float, slack: float = 1.0) -> bool:
        return self.killed_at - slack <= moment <= (self.started_at or time.time()) + slack


# --------------------------------------------------------------------------- what each job saw


@dataclass
class JobRun:
    """One job of a drill, and everything it saw."""

    job_id: str
    owner: str
    seconds: int
    created: bool = False
    refusal: str | None = None  # the last answer of a create that did not succeed
    creates: list[ProviderCall] = field(default_factory=list)
    updates: list[tuple[float, JobUpdate]] = field(default_factory=list)  # (arrival, update) at Core
    slurm_name: str | None = None
    slurm_ids: list[int] = field(default_factory=list)

    @property
    def states(self) -> list[JobState]:
        return [update.state for _, update in self.updates if update.state is not None]

    @property
    def final(self) -> JobState | None:
        return next((state for state in self.states if state.is_final), None)

    def violations(self, outages: Sequence[Outage], budget: float) -> list[str]:
        """What went wrong for this job; empty when nothing did."""
        found = [*self._create_violations(outages, budget), *self._order_violations()]
        # A job Slurm lost (slurmctld killed before it saved the job) is no Slurm job any more.
        expected = (0, 1) if self.lost_by_slurm else (1,)
        if self.created and len(self.slurm_ids) not in expected:
            found.append(f"{len(self.slurm_ids)} Slurm jobs named {self.slurm_name}: {self.slurm_ids}")
        return found

    @property
    def lost_by_slurm(self) -> bool:
        """Core was told the job failed because Slurm forgot it (``ucim.slurm_bridge.monitor``)."""
        ends = [update.status for _, update in self.updates if update.state == JobState.FAILURE]
        return any(end in (LOST_MESSAGE, VANISHED_MESSAGE) for end in ends)

    def _create_violations(self, outages: Sequence[Outage], budget: float) -> list[str]:
        found = []
        if not self.created:
            found.append(f"never created: {self.refusal}")
        for call in self.creates:
            if call.seconds > budget:
                found.append(f"create answered after {call.seconds:.1f} s (> {budget:g} s): {call.status} {call.why}")
            if call.status is None:
                if not any(o.silences_gateway and o.covers(call.started_at) for o in outages):
                    found.append(f"create without an answer while the gateway ran: {call.why}")
            elif call.status != 200 and (call.status not in RETRIED_STATUSES or not call.why):
                found.append(f"create answered {call.status} {call.why!r}: not a 200, nor a readable 449/503")
        return found

    def _order_violations(self) -> list[str]:
        if not self.created:
            return []
        states = self.states
        found = []
        if self.final is None:
            found.append(f"no final state at Core (saw {_names(states)})")
        if len(set(states)) != len(states):
            found.append(f"a state reached Core twice: {_names(states)}")
        ranks = [ORDER.get(state, 2) for state in states]
        if not states or states[0] != JobState.IN_QUEUE or ranks != sorted(ranks):
            found.append(f"states out of order at Core: {_names(states)}")
        stamps = [update.timestamp for _, update in self.updates]
        if stamps != sorted(stamps):
            found.append(f"timestamps go backwards: {stamps}")
        return found

    def row(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "owner": self.owner,
            "creates": [{"status": c.status, "seconds": round(c.seconds, 3), "why": c.why} for c in self.creates],
            "states": [
                {"state": str(u.state), "timestamp": u.timestamp, "arrived": round(at, 3)}
                for at, u in self.updates
                if u.state is not None
            ],
            "slurmJobs": self.slurm_ids,
        }


def _names(states: Sequence[JobState]) -> str:
    return " ".join(str(state) for state in states) or "nothing"


@dataclass
class DrillReport:
    """What a drill saw: its jobs, its outages, and the invariants they broke."""

    name: str
    jobs: list[JobRun]
    outages: list[Outage]
    started_at: float
    ended_at: float
    budget_seconds: float = CORE_BUDGET_SECONDS

    def violations(self) -> dict[str, list[str]]:
        """Per job id, what went wrong (only jobs with something wrong)."""
        found = {job.job_id: job.violations(self.outages, self.budget_seconds) for job in self.jobs}
        return {job_id: problems for job_id, problems in found.items() if problems}

    def totals(self) -> dict[str, Any]:
        created = [job for job in self.jobs if job.created]
        latencies = [call.seconds for job in self.jobs for call in job.creates]
        statuses = Counter(
            str(call.status) if call.status is not None else "none" for j in self.jobs for call in j.creates
        )
        violations = [problem for problems in self.violations().values() for problem in problems]
        arrivals = [at for job in self.jobs for at, _ in job.updates]
        restarted = max((o.started_at for o in self.outages), default=self.started_at)
        return {
            "jobs": len(self.jobs),
            "created": len(created),
            "lost": sum(1 for job in created if job.final is None),
            "lost_by_slurm": sum(1 for job in created if job.lost_by_slurm),
            "duplicated": sum(
                1 for job in created if len(set(job.states)) != len(job.states) or len(job.slurm_ids) > 1
            ),
            "out_of_order": sum(1 for v in violations if "out of order" in v or "backwards" in v),
            "creates_over_budget": sum(1 for s in latencies if s > self.budget_seconds),
            "create_statuses": dict(sorted(statuses.items())),
            "create_seconds_p50": round(statistics.median(latencies), 3) if latencies else None,
            "create_seconds_max": round(max(latencies), 3) if latencies else None,
            "update_lag_seconds_max": round(max(self._lags(), default=0.0), 3),
            "settled_seconds_after_restart": round(max(arrivals, default=restarted) - restarted, 1),
            "wall_seconds": round(self.ended_at - self.started_at, 1),
            "violations": len(violations),
        }

    def _lags(self) -> list[float]:
        """Seconds from each state change (its timestamp) to its arrival at Core."""
        return [at - update.timestamp / 1000 for job in self.jobs for at, update in job.updates]

    def table(self) -> str:
        """One line per job, then the outages and the totals."""
        start = self.started_at
        lines = [f"drill {self.name}: {len(self.jobs)} jobs", f"{'job':>10} {'owner':<10} creates / states at Core"]
        for job in self.jobs:
            creates = ", ".join(f"{c.status or 'none'} {c.seconds:.2f}s" for c in job.creates)
            states = " ".join(f"{u.state}@{at - start:.1f}" for at, u in job.updates if u.state is not None)
            lines.append(f"{job.job_id:>10} {job.owner:<10} [{creates}] {states} slurm={job.slurm_ids}")
        for outage in self.outages:
            lines.append(
                f"outage {outage.name}: killed at {outage.killed_at - start:.1f} s ({outage.kill_seconds:.1f} s), "
                f"started at {outage.started_at - start:.1f} s ({outage.start_seconds:.1f} s to healthy)"
            )
        lines.append(f"totals: {json.dumps(self.totals())}")
        for job_id, problems in self.violations().items():
            lines.extend(f"VIOLATION {job_id}: {problem}" for problem in problems)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "drill": self.name,
            "totals": self.totals(),
            "outages": [vars(o) | {"killed_at": o.killed_at - self.started_at} for o in self.outages],
            "jobs": [job.row() for job in self.jobs],
            "violations": self.violations(),
        }

    def check(self) -> None:
        """AssertionError with the table when any invariant is broken."""
        if self.violations():
            raise AssertionError(self.table())


# --------------------------------------------------------------------------- the drill


class Drill:
    """A stream of short jobs against ``stack``, faults injected in the middle of it; see the module docstring."""

    def __init__(
        self,
        stack: Stack,
        name: str = "drill",
        *,
        users: Sequence[str] = ("alice", "bob"),
        job_seconds: Sequence[int] = (1, 2),
        budget_seconds: float = CORE_BUDGET_SECONDS,
        create_retry_seconds: float = 1.0,
        create_deadline_seconds: float = 180.0,
        rng: random.Random | None = None,
    ) -> None:
        self.stack = stack
        self.name = name
        self.users = list(users)
        self.job_seconds = list(job_seconds)
        self.budget_seconds = budget_seconds
        self.create_retry_seconds = create_retry_seconds
        self.create_deadline_seconds = create_deadline_seconds
        self.rng = rng or random.Random(0)  # noqa: S311 (drills are reproducible, not secret)
        self.jobs: dict[str, JobRun] = {}
        self.outages: list[Outage] = []
        self.started_at = time.time()
        self._creates: list[asyncio.Task[None]] = []
        # Which jobs Core has a final state of, from the first ``_read`` of Core's updates on.
        self._final: set[str] = set()
        self._read = 0

    # --- the stream ---

    @contextlib.asynccontextmanager
    async def stream(self, jobs: int, over_seconds: float) -> AsyncIterator[None]:
        """Start ``jobs`` jobs evenly over ``over_seconds`` while the block runs; then wait for their creates."""
        feeder = asyncio.create_task(self._feed(jobs, over_seconds / max(jobs, 1)), name="drill-stream")
        try:
            yield
            await feeder
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            await asyncio.gather(*self._creates, return_exceptions=True)

    async def _feed(self, count: int, interval: float) -> None:
        for index in range(count):
            self.submit(self.users[index % len(self.users)])
            await asyncio.sleep(interval)

    def submit(self, owner: str, seconds: int | None = None) -> JobRun:
        """Start one job of ``owner`` now (its create runs in the background); the record of it."""
        job = JobRun(
            job_id=str(uuid.uuid4().int % 10**9),
            owner=owner,
            seconds=seconds if seconds is not None else self.rng.choice(self.job_seconds),
        )
        self.jobs[job.job_id] = job
        self._creates.append(asyncio.create_task(self._create(job), name=f"create-{job.job_id}"))
        return job

    async def _create(self, job: JobRun) -> None:
        """Create the job as Core would: again (the same job) after no answer, or a 449/503 after Core's own retries."""
        core = self.stack.core
        spec = core.make_job(job.job_id, job.owner, ("sleep-exit", "1"), {"seconds": job.seconds, "exitCode": 0})
        deadline = time.monotonic() + self.create_deadline_seconds
        while True:
            try:
                await core.create_jobs([spec])
            except ProviderCallError as error:
                job.refusal = f"{error.status} {error}"
                if error.status not in RETRIED_STATUSES:
                    return
            except (aiohttp.ClientError, TimeoutError) as error:
                job.refusal = f"no answer: {error!r}"
            else:
                job.created, job.refusal = True, None
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(self.create_retry_seconds)

    # --- faults ---

    async def outage(self, fault: Fault, *, after: float = 0.0, down_for: float) -> Outage:
        """After ``after`` seconds, kill ``fault``; start it again ``down_for`` seconds later, whatever happens."""
        await asyncio.sleep(after)
        outage = Outage(fault.name, killed_at=time.time(), silences_gateway=fault.silences_gateway)
        self.outages.append(outage)
        try:
            began = time.monotonic()
            await fault.kill()
            outage.kill_seconds = time.monotonic() - began
            await asyncio.sleep(down_for)
        finally:
            began = time.monotonic()
            await fault.start()
            outage.start_seconds = time.monotonic() - began
            outage.started_at = time.time()
        return outage

    # --- the end ---

    async def finish(self, timeout: float = 120.0, quiet_seconds: float = 2.0) -> DrillReport:  # noqa: ASYNC109
        """Wait (at most ``timeout`` s) for a final state of every created job at Core; what each job saw."""
        await asyncio.gather(*self._creates, return_exceptions=True)
        record = self.stack.core.record
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), record.changed:
                await record.changed.wait_for(self._all_final)
        await asyncio.sleep(quiet_seconds)  # a duplicate arrives after the final state, if at all
        ended_at = time.time()
        for job in self.jobs.values():
            job.updates = list(self.stack.core.record.received(job.job_id))
            job.creates = [
                c for c in self.stack.core.record.provider_calls if c.path == "jobs" and job.job_id in c.job_ids
            ]
        await asyncio.to_thread(self._find_in_slurm)
        return DrillReport(
            self.name, list(self.jobs.values()), self.outages, self.started_at, ended_at, self.budget_seconds
        )

    def _all_final(self) -> bool:
        """Whether Core has a final state of every created job (reading only the updates that came since last time)."""
        updates = self.stack.core.record.job_updates
        for item in updates[self._read :]:
            if item.update.state is not None and item.update.state.is_final:
                self._final.add(item.id)
        self._read = len(updates)
        return all(job.job_id in self._final for job in self.jobs.values() if job.created)

    def _find_in_slurm(self) -> None:
        """Each job's Slurm name (from its UCloudJob's uid) and the Slurm jobs of that name (squeue and sacct)."""
        names = {}
        for item in self.stack.kubectl.json("get", "ucloudjobs", "--namespace", self.stack.namespace)["items"]:
            names[item["spec"]["jobId"]] = f"ucim-{item['metadata']['uid']}"
        ids: dict[str, set[int]] = {}
        for line in self._slurm_listing():
            job_id, _, name = line.partition("|")
            if name.startswith("ucim-") and job_id.isdigit():
                ids.setdefault(name, set()).add(int(job_id))
        for job in self.jobs.values():
            job.slurm_name = names.get(job.job_id)
            job.slurm_ids = sorted(ids.get(job.slurm_name or "", set()))

    def _slurm_listing(self) -> list[str]:
        """``<id>|<name>`` of every job squeue still shows, and of every job accounting has since the drill began."""
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started_at - 60))
        frontend = self.stack.frontend
        queue = frontend.run("squeue", "-a", "-h", "-t", "all", "-o", "%i|%j").stdout.splitlines()
        accounting = frontend.run("sacct", "-a", "-n", "-X", "-P", "-S", since, "-o", "JobID,JobName", check=False)
        return [*queue, *accounting.stdout.splitlines()]

"""The Slurm hook end to end: slurmctld's PrologSlurmctld/EpilogSlurmctld → the bridge → Core.

The platform installs ``deploy/controller/ucim-slurm-hook`` in its slurm.conf and the stack's bridge
listens where it sends (``UCIM_SLURM_HOOK_PORT``). With the poll slowed to 30 s, a job's RUNNING and
SUCCESS can reach Core's stand-in within seconds only through the hook; with the hook off, the poll
alone still brings every job to its end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import datetime

import pytest

from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.testing.metrics import scrape
from ucim.testing.stack import Stack

SLOW_POLL = {"UCIM_BRIDGE_MONITOR_INTERVAL_SECONDS": "30", "UCIM_BRIDGE_MONITOR_IDLE_INTERVAL_SECONDS": "30"}
NO_HOOK = {"UCIM_BRIDGE_HOOK__ENABLED": "false"}

pytestmark = [pytest.mark.e2e, pytest.mark.local_platform]


def job_id() -> str:
    return str(uuid.uuid4().int % 10**9)


async def bridge_metrics(stack: Stack) -> dict[str, float]:
    """The bridge's hook and poll counters, summed over their labels."""
    found: dict[str, float] = defaultdict(float)
    for sample in await scrape(f"http://{stack.metrics_targets()['ucim-bridge']}/metrics"):
        if sample.name == "ucim_slurm_hook_notifications_total":
            found[f"hook_{sample.labels['result']}"] += sample.value
        elif sample.name in ("ucim_slurm_hook_queries_total", "ucim_slurm_poll_duration_seconds_count"):
            found[sample.name] += sample.value
    return dict(found)


def received_at(stack: Stack, job: str, state: JobState) -> float:
    return next(at for at, update in stack.core.record.received(job) if update.state == state)


@pytest.mark.stack_settings({"ucim-bridge": SLOW_POLL})
async def test_the_hook_brings_start_and_end_to_core_long_before_the_poll(stack: Stack) -> None:
    job = job_id()
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 3})])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    status = UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job)}")).status
    assert status.started_at is not None and status.ended_at is not None
    # Slurm's times are whole seconds: the latency read here is at most a second longer than it was.
    for state, changed in ((JobState.RUNNING, status.started_at), (JobState.SUCCESS, status.ended_at)):
        latency = received_at(stack, job, state) - datetime.fromisoformat(str(changed)).timestamp()
        assert latency < 3.0, f"{state} reached Core {latency:.2f} s after Slurm's change; the poll is every 30 s"
    metrics = await bridge_metrics(stack)
    assert metrics["hook_accepted"] >= 2  # the start and the end, at least (other jobs of the platform too)
    assert metrics["ucim_slurm_hook_queries_total"] >= 2
    assert metrics["hook_refused"] == 0


@pytest.mark.stack_settings({"ucim-bridge": NO_HOOK})
async def test_without_the_hook_the_poll_finishes_every_job(stack: Stack) -> None:
    jobs = [job_id() for _ in range(3)]
    await stack.core.create_jobs(
        [stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 1 + n}) for n, job in enumerate(jobs)]
    )
    await asyncio.gather(*(stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60) for job in jobs))
    for job in jobs:
        assert [u.state for u in stack.core.updates_for(job) if u.state is not None] == [
            JobState.IN_QUEUE,
            JobState.RUNNING,
            JobState.SUCCESS,
        ]
    metrics = await bridge_metrics(stack)
    assert metrics.get("hook_accepted", 0) == 0
    assert metrics.get("ucim_slurm_hook_queries_total", 0) == 0
    assert metrics["ucim_slurm_poll_duration_seconds_count"] >= 3

"""A job behind a full partition: its position and Slurm's estimated start reach its UCloudJob and Core.

bob fills every node of the partition with plain sbatch jobs (another user, outside UCloud); alice's job
comes through Core's stand-in and waits behind them. The bridge's one listing of the pending queue gives it
a position and, once Slurm's backfill scheduler has run, an estimate: both land in the UCloudJob's status
(and its printer columns) and reach Core as a status line without a state. When bob's jobs go, alice's job
starts, and the fields are removed.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from ucim.common.protocol import JobState, JobUpdate
from ucim.common.resources import UCloudJob, UCloudJobStatus
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e
T = TypeVar("T")

PARTITION = "normal"  # the partition of the stand-in's default product, cpu-1
LINE = re.compile(
    rf"^Waiting in queue: position (\d+) of (\d+) in partition {PARTITION}; "
    r"Slurm estimates the start at \d{4}-\d\d-\d\d \d\d:\d\d UTC$"
)


async def _until(what: str, probe: Callable[[], T | None], timeout: float = 30) -> T:  # noqa: ASYNC109
    """``probe()``'s first answer that is not None, asked every 0.25 s; a readable failure after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.25)
    return found


def _status(stack: Stack, name: str) -> UCloudJobStatus:
    return UCloudJob.from_obj(stack.get(f"ucj/{name}")).status


def _fill_partition(stack: Stack) -> list[str]:
    """One exclusive job of bob's on each node of the partition, running; their Slurm ids."""
    nodes = set(stack.run_as("bob", "sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N").stdout.split())
    assert nodes, f"no nodes in partition {PARTITION}"
    argv = ["sbatch", "--parsable", "-p", PARTITION, "-N1", "--exclusive", "-t", "5", "-J", "queue-filler"]
    return [
        stack.run_as("bob", *argv, "-o", "/dev/null", "--wrap", "sleep 300").stdout.strip().split(";")[0] for _ in nodes
    ]


def _all_running(stack: Stack, ids: list[str]) -> bool | None:
    states = stack.run_as("bob", "squeue", "-h", "-j", ",".join(ids), "-o", "%T").stdout.split()
    return True if states == ["RUNNING"] * len(ids) else None


def _queue_line(stack: Stack, job: str) -> JobUpdate | None:
    lines = [u for u in stack.core.updates_for(job) if u.state is None and LINE.match(u.status or "")]
    return lines[-1] if lines else None


async def test_a_job_behind_a_full_partition_shows_its_place_and_loses_it_when_it_starts(stack: Stack) -> None:
    job = str(uuid.uuid4().int % 10**9)
    name = UCloudJob.name_for(job)
    fillers = _fill_partition(stack)
    try:
        await _until("bob's jobs fill the partition", lambda: _all_running(stack, fillers))
        await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 1})])
        await stack.core.wait_for_update(job, JobState.IN_QUEUE, timeout=60)

        # The estimate comes with Slurm's backfill scheduler, which runs every 30 s (bf_interval).
        waiting = await _until(
            "a position and an estimate in the UCloudJob",
            lambda: s if (s := _status(stack, name)).queue_position and s.estimated_start_at else None,
            timeout=60,
        )
        assert waiting.state == JobState.IN_QUEUE and waiting.slurm_state == "PENDING"
        position, length = waiting.queue_position, waiting.queue_length
        assert position is not None and length is not None and 1 <= position <= length
        line = await _until("the queue line at Core", lambda: _queue_line(stack, job), timeout=10)
        match = LINE.match(line.status or "")
        assert match is not None and int(match[1]) == position
        assert waiting.estimated_start_at is not None
        assert waiting.estimated_start_at.strftime("%Y-%m-%d %H:%M UTC") in (line.status or "")
        table = stack.kubectl("get", "ucj", name, "--namespace", stack.namespace).stdout
        header, row = table.splitlines()[:2]
        assert "QUEUE" in header.split() and "EST-START" in header.split()
        assert waiting.estimated_start_at.strftime("%Y-%m-%dT%H:%M") in row

        stack.run_as("bob", "scancel", *fillers)
        await stack.core.wait_for_update(job, JobState.RUNNING, timeout=60)
        started = await _until(
            "the queue fields removed", lambda: s if (s := _status(stack, name)).state != JobState.IN_QUEUE else None
        )
        assert (started.queue_position, started.queue_length, started.estimated_start_at) == (None, None, None)
        await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
        states = [str(u.state) for u in stack.core.updates_for(job) if u.state is not None]
        assert states == ["IN_QUEUE", "RUNNING", "SUCCESS"]  # the queue lines changed no state
    finally:
        stack.run_as("bob", "scancel", *fillers, check=False)
        _cancel_slurm_job(stack, "alice", name)


def _cancel_slurm_job(stack: Stack, user: str, name: str) -> None:
    """Cancel the Slurm job of the UCloudJob ``name``, if there is one (by its Slurm job name, as ``user``)."""
    found = stack.kubectl(
        "get", "ucj", name, "--namespace", stack.namespace, "-o", "jsonpath={.metadata.uid}", check=False
    )
    if found.returncode == 0 and found.stdout.strip():
        stack.run_as(user, "scancel", "-n", f"ucim-{found.stdout.strip()}", check=False)

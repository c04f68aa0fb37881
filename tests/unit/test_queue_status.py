"""Queue positions and estimated starts: the listing's parser, the ranking, the "meaningful change" rule, the writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_monitor import QUEUED_AT, info, informer_of, job
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmUnavailableError
from ucim.common.slurm_parsing import PendingJob, SlurmJobInfo, parse_pending
from ucim.slurm_bridge.monitor import SlurmMonitor, with_queue
from ucim.slurm_bridge.queue_status import (
    MAX_QUEUE_LINES,
    QueuePlace,
    QueueReader,
    is_meaningful,
    partitions_of,
    places,
    queue_line,
    queue_update,
)

NOW = datetime(2026, 12, 8, 3, 10, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SOON = datetime(2026, 12, 8, 3, 11, 26, tzinfo=UTC)


def pending(reason: str | None = "Priority") -> SlurmJobInfo:
    return info("PENDING", reason=reason)


def place(position: int = 2, of: int = 2, start: datetime | None = SOON) -> QueuePlace:
    return QueuePlace("normal", position, of, start)


# --- the listing ---

# `squeue -h -a -P -t PENDING -O JobID:|,Partition:|,PriorityLong:|,StartTime:|` with SLURM_TIME_FORMAT=%s, from the
# local platform: both nodes full of bob's jobs, then alice's job (normal; 13 there, 42 here, the monitor tests' job),
# bob's 14 (short) and 15 (normal,short), a held array (one record, its job id, priority 0), and a line from before
# the backfill scheduler ran (N/A).
LISTING = """\
15|normal|6666|1796699486|
42|normal|3333|1796699520|
14|short|6666|1796699486|
15|short|6666|1796699486|
19|normal|0|N/A|
16|short|6666|N/A|
garbage line
"""


def test_the_listing_is_parsed_line_by_line_and_a_line_it_cannot_read_is_left_out() -> None:
    jobs = parse_pending(LISTING)
    assert jobs[:2] == [
        PendingJob(15, "normal", 6666, datetime.fromtimestamp(1796699486, UTC)),
        PendingJob(42, "normal", 3333, datetime.fromtimestamp(1796699520, UTC)),
    ]
    assert jobs[4] == PendingJob(19, "normal", 0, None)
    assert jobs[5].estimated_start is None
    assert len(jobs) == 6


def test_an_array_record_counts_as_one_waiting_job_and_is_never_ours() -> None:
    (array,) = parse_pending("123_[4-100]|normal|10|N/A|\n")
    assert array == PendingJob(None, "normal", 10, None)


def test_positions_follow_priority_then_job_id_within_each_partition() -> None:
    listing = [
        PendingJob(30, "normal", 100, None),
        PendingJob(20, "normal", 500, None),
        PendingJob(10, "normal", 100, None),
        PendingJob(None, "normal", 100, None),  # an array's tasks: after the jobs of the same priority
        PendingJob(40, "other", 900, None),
    ]
    found = places(listing, {10, 30, 99})
    assert found == {10: QueuePlace("normal", 2, 4, None), 30: QueuePlace("normal", 3, 4, None)}


def test_a_job_in_several_partitions_takes_the_place_nearest_the_front() -> None:
    found = places(parse_pending(LISTING), {15, 42})
    assert found[15] == QueuePlace("normal", 1, 3, datetime.fromtimestamp(1796699486, UTC))
    assert found[42] == QueuePlace("normal", 2, 3, datetime.fromtimestamp(1796699520, UTC))


def test_the_listing_is_limited_to_the_jobs_partitions_unless_one_names_none() -> None:
    named = job()
    assert partitions_of([named]) == {"normal"}
    unnamed = job()
    unnamed.spec.slurm = None
    assert partitions_of([named, unnamed]) is None


# --- what Core reads ---


def test_the_line_says_position_partition_and_estimate_in_utc() -> None:
    assert queue_line(QueuePlace("batch", 3, 12, datetime(2026, 12, 8, 14, 5, 59, tzinfo=UTC))) == (
        "Waiting in queue: position 3 of 12 in partition batch; Slurm estimates the start at 2026-12-08 14:05 UTC"
    )
    assert queue_line(QueuePlace("batch", 1, 1, None)) == (
        "Waiting in queue: position 1 of 1 in partition batch; Slurm has no estimate of the start yet"
    )


# --- the "meaningful change" rule ---


def told(position: int, start: datetime | None) -> Any:
    return job(queuePosition=position, queueLength=50, estimatedStartAt=start.isoformat() if start else None).status


def test_the_first_place_is_always_told() -> None:
    assert is_meaningful(job().status, place(), NOW)


@pytest.mark.parametrize(
    ("before", "after", "meaningful"),
    [
        (3, 3, False),
        (3, 2, True),  # every step counts up to 10
        (10, 9, True),
        (15, 14, False),  # 10 % of 15 is 1.5
        (15, 13, True),
        (200, 181, False),
        (200, 180, True),  # steps of 20 at 200
        (200, 220, True),  # backwards too (a job of higher priority came)
    ],
)
def test_a_position_counts_when_it_moved_by_a_tenth_and_at_least_one(before: int, after: int, meaningful: bool) -> None:
    assert is_meaningful(told(before, SOON), place(after, start=SOON), NOW) is meaningful


@pytest.mark.parametrize(
    ("wait", "move", "meaningful"),
    [
        (timedelta(minutes=30), timedelta(minutes=5), False),  # 5 minutes is the least that counts...
        (timedelta(minutes=30), timedelta(minutes=5, seconds=1), True),
        (timedelta(minutes=30), -timedelta(minutes=6), True),  # ...earlier or later
        (timedelta(hours=10), timedelta(minutes=59), False),  # a tenth of 10 hours left: an hour
        (timedelta(hours=10), timedelta(minutes=61), True),
        (-timedelta(hours=1), timedelta(minutes=4), False),  # an estimate that passed: 5 minutes still
    ],
)
def test_an_estimate_counts_when_it_moved_by_more_than_5_minutes_or_a_tenth_of_the_wait(
    wait: timedelta, move: timedelta, meaningful: bool
) -> None:
    before = NOW + wait
    assert is_meaningful(told(4, before), place(4, start=before + move), NOW) is meaningful


def test_an_estimate_that_appears_or_goes_counts() -> None:
    assert is_meaningful(told(4, None), place(4, start=SOON), NOW)
    assert is_meaningful(told(4, SOON), place(4, start=None), NOW)
    assert not is_meaningful(told(4, None), place(4, start=None), NOW)


# --- what is written ---


def test_a_waiting_job_gets_its_place_and_a_line_without_a_state() -> None:
    waiting = job(reason="Priority")
    update = queue_update(waiting, pending(), place(), NOW)
    assert update is not None
    patch = with_queue(waiting, None, update, NOW_MS)
    assert patch == {
        "queuePosition": 2,
        "queueLength": 2,
        "estimatedStartAt": "2026-12-08T03:11:26Z",
        "transitions": [
            {"state": "IN_QUEUE", "timestamp": QUEUED_AT, "message": "submitted"},
            {"timestamp": NOW_MS, "message": queue_line(place())},
        ],
    }
    # The same place again, as the status now holds it: nothing to write.
    again = job(reason="Priority", **{k: v for k, v in patch.items() if k != "transitions"})
    assert queue_update(again, pending(), place(), NOW) is None


def test_a_job_slurm_has_not_looked_at_yet_or_without_a_listing_this_cycle_gets_nothing() -> None:
    assert queue_update(job(), pending(reason=None), place(), NOW) is None
    assert queue_update(job(), pending(), None, NOW) is None


def test_a_job_that_started_or_ended_or_vanished_loses_its_place_without_a_line() -> None:
    waited = job(queuePosition=1, queueLength=3, estimatedStartAt="2026-12-08T03:11:26Z")
    for now_known in (info("RUNNING"), info("CANCELLED"), None):
        update = queue_update(waited, now_known, None, NOW)
        assert update is not None and update.line is None
        assert update.fields == {"queuePosition": None, "queueLength": None, "estimatedStartAt": None}
    assert queue_update(job(), info("RUNNING"), None, NOW) is None


def test_the_line_follows_a_state_change_of_the_same_patch() -> None:
    waiting = job(reason="Priority")
    state_change = {"state": "IN_QUEUE", "transitions": [{"state": "IN_QUEUE", "timestamp": QUEUED_AT + 9_000}]}
    patch = with_queue(waiting, state_change, queue_update(waiting, pending(), place(), NOW), NOW_MS)
    assert patch is not None
    assert patch["transitions"][0] == {"state": "IN_QUEUE", "timestamp": QUEUED_AT + 9_000}
    assert patch["transitions"][1]["message"].startswith("Waiting in queue")


def test_after_its_budget_of_lines_a_job_still_gets_its_place_but_core_keeps_the_last_line() -> None:
    lines = [{"timestamp": QUEUED_AT + i, "message": queue_line(place(90 - i))} for i in range(MAX_QUEUE_LINES)]
    targets = [{"timestamp": QUEUED_AT, "message": 'Target: {"rank": 0}'}]  # not a queue line: not counted
    full = job(
        reason="Priority",
        queuePosition=90,
        transitions=[{"state": "IN_QUEUE", "timestamp": QUEUED_AT}, *targets, *lines],
    )
    update = queue_update(full, pending(), place(3), NOW)
    assert update is not None and update.line is None and update.fields["queuePosition"] == 3
    assert "transitions" not in (with_queue(full, None, update, NOW_MS) or {})


# --- in the monitor: one listing, and only while jobs wait ---


class _Slurm(SlurmClient):
    def __init__(self, state: SlurmJobInfo, listing: str = LISTING, *, broken: bool = False) -> None:
        super().__init__(SlurmConfig())
        self.state = state
        self.listing = listing
        self.broken = broken
        self.listings: list[set[str] | None] = []

    async def poll(self, job_ids: Any) -> dict[int, SlurmJobInfo]:
        return {self.state.job_id: self.state}

    async def pending(self, partitions: Any = None) -> list[PendingJob]:
        self.listings.append(None if partitions is None else set(partitions))
        if self.broken:
            raise SlurmUnavailableError("squeue failed")
        return parse_pending(self.listing)


class _Recorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str | None, dict[str, Any]]] = []

    async def patch_status(
        self, kind: object, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None
    ) -> None:
        self.patches.append((resource_version, status))


def monitor_of(slurm: SlurmClient, tracked: UCloudJob, clock: list[float]) -> tuple[SlurmMonitor, _Recorder]:
    kube = _Recorder()
    monitor = SlurmMonitor(kube, slurm, informer_of(tracked), clock=lambda: clock[0])  # type: ignore[arg-type]
    monitor.queue = QueueReader(slurm, 5.0, clock=lambda: clock[0])
    return monitor, kube


async def test_a_waiting_job_makes_one_listing_of_its_partition_every_interval_and_its_line_is_guarded() -> None:
    clock = [NOW.timestamp()]
    waiting = job(reason="Priority")
    waiting.metadata.resource_version = "7"
    slurm = _Slurm(pending())
    monitor, kube = monitor_of(slurm, waiting, clock)
    assert await monitor.run_once() == 1
    assert slurm.listings == [{"normal"}]
    version, patch = kube.patches[0]
    assert version == "7"  # it appends to the transitions the operator writes too
    assert (patch["queuePosition"], patch["queueLength"]) == (2, 3)
    assert patch["transitions"][-1]["message"].startswith("Waiting in queue: position 2 of 3 in partition normal")
    clock[0] += 4  # within the interval: no listing, nothing new
    assert await monitor.run_once() == 0
    assert len(slurm.listings) == 1
    clock[0] += 1
    await monitor.run_once()
    assert len(slurm.listings) == 2


async def test_no_job_waits_no_listing() -> None:
    slurm = _Slurm(info("RUNNING", node_list="localhost"))
    monitor, _ = monitor_of(slurm, job(JobState.RUNNING, slurmState="RUNNING", nodeList="localhost"), [NOW.timestamp()])
    await monitor.run_once()
    slurm.state = pending(reason=None)  # pending, but Slurm has not looked at it yet
    await monitor.run_once()
    assert slurm.listings == []


async def test_a_failed_listing_leaves_the_cycles_other_writes_alone() -> None:
    slurm = _Slurm(info("PENDING", reason="Resources"), broken=True)
    monitor, kube = monitor_of(slurm, job(reason="Priority"), [NOW.timestamp()])
    assert await monitor.run_once() == 1
    assert kube.patches == [(None, {"reason": "Resources"})]

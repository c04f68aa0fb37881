"""Batching job updates of many jobs into few requests to Core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY, generate_latest

from ucim.common.core_client import CoreRejectedError, CoreUnavailableError
from ucim.common.protocol import JobState, JobUpdate, JobUpdateItem
from ucim.operator.delivery import Backlog, DeliveryQueue, _Group, pack


def items(job_id: str, count: int) -> list[JobUpdateItem]:
    return [
        JobUpdateItem(id=job_id, update=JobUpdate(state=JobState.RUNNING, status=str(n), timestamp=n))
        for n in range(count)
    ]


class FakeCore:
    """Records each request; fails as told."""

    def __init__(self) -> None:
        self.requests: list[list[JobUpdateItem]] = []
        self.fail: Callable[[list[JobUpdateItem]], Exception | None] = lambda _: None

    async def send(self, batch: list[JobUpdateItem]) -> None:
        self.requests.append(batch)
        error = self.fail(batch)
        if error is not None:
            raise error


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
async def queue(core: FakeCore) -> AsyncIterator[DeliveryQueue]:
    delivery = DeliveryQueue(core.send, interval=0.01, max_items=100)
    task = asyncio.create_task(delivery.run())
    yield delivery
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_pack_takes_whole_groups_up_to_the_limit() -> None:
    groups = [_Group(items(str(n), size)) for n, size in enumerate([40, 40, 30, 5])]
    batch, rest = pack(groups, 100)
    assert [len(g.items) for g in batch] == [40, 40]
    assert [len(g.items) for g in rest] == [30, 5]
    oversized = [_Group(items("big", 150)), _Group(items("small", 1))]
    batch, rest = pack(oversized, 100)
    assert [len(g.items) for g in batch] == [150]
    assert [len(g.items) for g in rest] == [1]


async def test_updates_of_many_jobs_share_requests_of_at_most_100(queue: DeliveryQueue, core: FakeCore) -> None:
    await asyncio.gather(*(queue.deliver(items(f"job-{n}", 3)) for n in range(50)))
    assert [len(r) for r in core.requests] == [99, 51]
    # Each job's updates travel together and in order.
    for request in core.requests:
        by_job: dict[str, list[str | None]] = {}
        for item in request:
            by_job.setdefault(item.id, []).append(item.update.status)
        assert all(statuses == ["0", "1", "2"] for statuses in by_job.values())


async def test_a_lone_update_goes_at_once_and_a_burst_after_it_waits_for_the_interval(core: FakeCore) -> None:
    delivery = DeliveryQueue(core.send, interval=0.3, max_items=100)
    task = asyncio.create_task(delivery.run())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(0.2):  # far less than the interval: nothing held it back
            await delivery.deliver(items("first", 1))
        # Right behind it: gathered, and sent one interval after the first request.
        await asyncio.gather(delivery.deliver(items("second", 1)), delivery.deliver(items("third", 2)))
        assert loop.time() - started >= 0.25
        assert [[i.id for i in r] for r in core.requests] == [["first"], ["second", "third", "third"]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_core_unavailable_fails_every_caller_in_the_batch(queue: DeliveryQueue, core: FakeCore) -> None:
    core.fail = lambda _: CoreUnavailableError("down")
    results = await asyncio.gather(queue.deliver(items("a", 1)), queue.deliver(items("b", 2)), return_exceptions=True)
    assert all(isinstance(r, CoreUnavailableError) for r in results)
    core.fail = lambda _: None
    await queue.deliver(items("a", 1))


async def test_a_rejected_job_does_not_hold_back_the_others(queue: DeliveryQueue, core: FakeCore) -> None:
    def reject_bad(batch: list[JobUpdateItem]) -> Exception | None:
        return CoreRejectedError(404, "Unknown job") if any(i.id == "bad" for i in batch) else None

    core.fail = reject_bad
    results = await asyncio.gather(
        queue.deliver(items("good-1", 2)),
        queue.deliver(items("bad", 1)),
        queue.deliver(items("good-2", 1)),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], CoreRejectedError)
    assert [[i.id for i in r] for r in core.requests] == [
        ["good-1", "good-1", "bad", "good-2"],
        ["good-1", "good-1"],
        ["bad"],
        ["good-2"],
    ]


async def test_a_caller_that_gave_up_is_not_sent(queue: DeliveryQueue, core: FakeCore) -> None:
    waiting = asyncio.create_task(queue.deliver(items("gone", 1)))
    await asyncio.sleep(0)
    waiting.cancel()
    await queue.deliver(items("here", 1))
    assert [[i.id for i in r] for r in core.requests] == [["here"]]


async def test_nothing_to_deliver_sends_nothing(queue: DeliveryQueue, core: FakeCore) -> None:
    await queue.deliver([])
    assert core.requests == []


def test_backlog_counts_pending_changes_per_job() -> None:
    backlog = Backlog()
    backlog.set("a", 3)
    backlog.set("b", 2)
    backlog.set("a", 1)
    assert backlog.total == 3
    assert REGISTRY.get_sample_value("ucim_core_delivery_backlog") == 3
    backlog.forget("b")
    backlog.set("a", 0)
    assert backlog.total == 0


def test_the_operators_metrics_are_exposed() -> None:
    from ucim.operator import metrics  # noqa: PLC0415 - imported here to show where they live

    metrics.JOB_SUBMISSIONS.labels(result="accepted")
    metrics.JOB_STATE_TRANSITIONS.labels(state="RUNNING")
    metrics.CORE_UPDATE_FAILURES.labels(reason="unavailable")
    text = generate_latest(REGISTRY).decode()
    for line in [
        "# TYPE ucim_job_submissions_total counter",
        "# TYPE ucim_job_state_transitions_total counter",
        "# TYPE ucim_core_updates_delivered_total counter",
        "# TYPE ucim_core_update_failures_total counter",
        "# TYPE ucim_core_delivery_backlog gauge",
        "# TYPE ucim_core_delivery_latency_seconds histogram",
        'ucim_job_submissions_total{result="accepted"}',
        'ucim_job_state_transitions_total{state="RUNNING"}',
        'ucim_core_update_failures_total{reason="unavailable"}',
    ]:
        assert line in text

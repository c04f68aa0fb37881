"""The monitor's status computation and its writes (no Slurm, no apiserver)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from ucim.common.informer import Informer
from ucim.common.kube import ConflictError
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_parsing import SlurmJobInfo
from ucim.slurm_bridge.hook_batches import EPILOG, PROLOG, HookBatches
from ucim.slurm_bridge.monitor import (
    LOST_MESSAGE,
    UNSUBMITTED,
    VANISHED_MESSAGE,
    SlurmMonitor,
    count_by_state,
    status_patch,
    vanished_patch,
)
from ucim.slurm_bridge.poll_interval import PollInterval

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "valid" / "ucloudjob.yaml"
QUEUED_AT = 1_700_000_000_000
NOW = QUEUED_AT + 5_000
STARTED = datetime(2026, 11, 25, 3, 50, tzinfo=UTC)
ENDED = datetime(2026, 11, 25, 3, 51, 30, tzinfo=UTC)


def job(state: JobState = JobState.IN_QUEUE, **status: Any) -> UCloudJob:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["status"] = {
        "state": state.value,
        "slurmJobId": 42,
        "slurmState": "PENDING",
        "transitions": [{"state": "IN_QUEUE", "timestamp": QUEUED_AT, "message": "submitted"}],
        **status,
    }
    return UCloudJob.from_obj(obj)


def info(state: str, **fields: Any) -> SlurmJobInfo:
    return SlurmJobInfo(job_id=42, state=state, **fields)


def test_start_appends_running_and_fills_nodes_and_times() -> None:
    patch = status_patch(job(reason="Priority"), info("RUNNING", node_list="node1", start_time=STARTED), NOW)
    assert patch == {
        "slurmState": "RUNNING",
        "reason": None,  # Slurm's pending reason is gone: the merge patch deletes it
        "nodeList": "node1",
        "startedAt": "2026-11-25T03:50:00Z",
        "state": "RUNNING",
        "transitions": [
            {"state": "IN_QUEUE", "timestamp": QUEUED_AT, "message": "submitted"},
            {"state": "RUNNING", "timestamp": NOW, "message": "running"},
        ],
    }


def test_nothing_changed_is_no_patch() -> None:
    running = job(JobState.RUNNING, slurmState="RUNNING", nodeList="node1", startedAt="2026-11-25T03:50:00Z")
    assert status_patch(running, info("RUNNING", node_list="node1", start_time=STARTED), NOW) is None
    assert status_patch(job(), info("PENDING"), NOW) is None


def test_same_state_new_slurm_detail_patches_without_transition() -> None:
    patch = status_patch(job(), info("PENDING", reason="Resources"), NOW)
    assert patch == {"reason": "Resources"}


def test_non_zero_exit_is_failure_with_exit_code() -> None:
    running = job(JobState.RUNNING, slurmState="RUNNING", nodeList="node1", startedAt="2026-11-25T03:50:00Z")
    done = info(
        "FAILED", reason="NonZeroExitCode", node_list="node1", exit_code=3, signal=0, start_time=STARTED, end_time=ENDED
    )
    patch = status_patch(running, done, NOW)
    assert patch is not None
    assert patch["state"] == "FAILURE"
    assert patch["exitCode"] == 3
    assert patch["endedAt"] == "2026-11-25T03:51:30Z"
    assert "startedAt" not in patch  # unchanged
    assert patch["transitions"][-1] == {"state": "FAILURE", "timestamp": NOW, "message": "exited with code 3"}
    assert len(patch["transitions"]) == 2


@pytest.mark.parametrize(
    ("slurm_state", "state", "message"),
    [
        ("TIMEOUT", JobState.EXPIRED, "time limit reached"),
        ("CANCELLED", JobState.SUCCESS, "cancelled"),
        ("COMPLETED", JobState.SUCCESS, "completed"),
    ],
)
def test_final_slurm_states(slurm_state: str, state: JobState, message: str) -> None:
    patch = status_patch(job(JobState.RUNNING), info(slurm_state, exit_code=0, signal=0), NOW)
    assert patch is not None
    assert patch["state"] == state.value
    assert patch["transitions"][-1] == {"state": state.value, "timestamp": NOW, "message": message}


def test_final_state_is_never_left() -> None:
    failed = job(JobState.FAILURE, slurmState="FAILED")
    assert status_patch(failed, info("FAILED"), NOW) is None
    patch = status_patch(failed, info("RUNNING"), NOW)
    assert patch == {"slurmState": "RUNNING"}


def test_a_requeued_job_stays_running_for_core() -> None:
    # Seen in the slurmctld drill: a job launching when slurmctld was killed was requeued after its restart,
    # and Core got IN_QUEUE RUNNING IN_QUEUE RUNNING SUCCESS.
    running = job(JobState.RUNNING, slurmState="RUNNING", nodeList="node1", startedAt="2026-11-25T03:50:00Z")
    patch = status_patch(running, info("PENDING", reason="launch failed requeued held"), NOW)
    assert patch == {
        "slurmState": "PENDING",
        "reason": "launch failed requeued held",
        "nodeList": None,
        "startedAt": None,
    }


def test_transition_timestamps_never_go_backwards() -> None:
    patch = status_patch(job(), info("RUNNING"), QUEUED_AT - 60_000)
    assert patch is not None
    assert patch["transitions"][-1]["timestamp"] == QUEUED_AT


def test_vanished_job_fails_once() -> None:
    patch = vanished_patch(job(), NOW)
    assert patch is not None
    assert patch["state"] == "FAILURE"
    assert patch["transitions"][-1]["message"] == VANISHED_MESSAGE
    assert vanished_patch(job(JobState.FAILURE), NOW) is None


class _Slurm(SlurmClient):
    """Slurm as a drill left it: squeue answers with ``known``, sacct with ``accounted`` (id -> info)."""

    def __init__(self, known: dict[int, SlurmJobInfo], accounted: dict[int, SlurmJobInfo] | None = None) -> None:
        super().__init__(SlurmConfig())
        self.known = known
        self.accounted = accounted or {}

    async def poll(self, job_ids: Any) -> dict[int, SlurmJobInfo]:
        return {i: self.known[i] for i in job_ids if i in self.known}

    async def poll_accounting(self, job_ids: Any) -> dict[int, SlurmJobInfo]:
        return {i: self.accounted[i] for i in job_ids if i in self.accounted}


class _Recorder:
    """Stands in for Kube: records status patches."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, kind: object, namespace: str, name: str, status: dict[str, Any], **_: object) -> None:
        self.patches.append(status)


def monitor_of(slurm: SlurmClient, tracked: UCloudJob, clock: list[float]) -> tuple[SlurmMonitor, _Recorder]:
    kube = _Recorder()
    return SlurmMonitor(kube, slurm, informer_of(tracked), clock=lambda: clock[0]), kube  # type: ignore[arg-type]


async def test_an_id_slurm_gave_to_another_job_fails_ours_at_once() -> None:
    # Seen in the slurmctld drill: killed before it saved its state, slurmctld forgot our job and gave its id
    # to the next job submitted; squeue then reported that job's state (PENDING, held) as ours.
    ours = job(JobState.RUNNING, slurmState="RUNNING")
    ours.metadata.uid = "0c6b4f3e"
    someone_else = info("PENDING", reason="launch failed requeued held", name="ucim-another-uid")
    monitor, kube = monitor_of(_Slurm({42: someone_else}), ours, [NOW / 1000])
    assert await monitor.run_once() == 1
    assert kube.patches[0]["state"] == "FAILURE"
    assert kube.patches[0]["transitions"][-1]["message"] == LOST_MESSAGE
    # Its own name is its own job, whatever its state.
    monitor, kube = monitor_of(_Slurm({42: info("RUNNING", name="ucim-0c6b4f3e")}), ours, [NOW / 1000])
    assert await monitor.run_once() == 0


async def test_a_job_vanishes_a_grace_after_slurm_stopped_knowing_it_not_after_its_submission() -> None:
    # Submitted long ago (a long job): Slurm forgetting it now is not yet a reason to fail it.
    clock = [NOW / 1000 + 3600]
    monitor, kube = monitor_of(_Slurm({}), job(JobState.RUNNING, slurmState="RUNNING"), clock)
    assert await monitor.run_once() == 0
    clock[0] += monitor.vanish_grace.total_seconds() - 1
    assert await monitor.run_once() == 0
    clock[0] += 1
    assert await monitor.run_once() == 1
    assert kube.patches[0]["transitions"][-1]["message"] == VANISHED_MESSAGE


class _BrokenSlurm(SlurmClient):
    """Slurm is away."""

    calls = 0

    async def poll(self, job_ids: Any) -> dict[int, SlurmJobInfo]:
        self.calls += 1
        raise ConnectionError("slurmctld away")


class _Conflicting:
    """Stands in for Kube: a patch applies only to the stored version of the job."""

    def __init__(self, stored: UCloudJob) -> None:
        self.stored = stored
        self.patches: list[tuple[str | None, dict[str, Any]]] = []

    async def patch_status(
        self, kind: object, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None
    ) -> None:
        if resource_version is not None and resource_version != self.stored.metadata.resource_version:
            raise ConflictError("the object has been modified")
        self.patches.append((resource_version, status))


def informer_of(*jobs: UCloudJob) -> Informer[UCloudJob]:
    informer: Informer[UCloudJob] = Informer(None, UCloudJob, "ns")  # type: ignore[arg-type]
    informer.objects = {j.metadata.name: j for j in jobs}
    informer.synced.set()
    return informer


async def _watch_nothing() -> None:
    await asyncio.Event().wait()


async def test_run_survives_failed_cycles_and_counts_them() -> None:
    slurm = _BrokenSlurm(SlurmConfig())
    monitor = SlurmMonitor(None, slurm, informer_of(job()), interval=PollInterval(0.01))  # type: ignore[arg-type]
    monitor.jobs.run = _watch_nothing  # type: ignore[method-assign]  # the cache above stays as it is
    before = _errors()
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slurm.calls >= 2
    assert _errors() - before == slurm.calls


async def test_a_patch_carries_the_version_it_was_computed_from_and_is_computed_again_next_cycle() -> None:
    stale = job()
    stale.metadata.resource_version = "10"
    # Meanwhile the operator wrote (its reportedTransitions): the stored object is version 11.
    fresh = job(reportedTransitions=1)
    fresh.metadata.resource_version = "11"
    kube = _Conflicting(fresh)
    monitor = SlurmMonitor(kube, SlurmClient(SlurmConfig()), informer_of(stale))  # type: ignore[arg-type]
    from_stale = status_patch(stale, info("RUNNING"), NOW)
    assert from_stale is not None
    assert await monitor._apply(stale, 42, from_stale) == 0  # refused: nothing is written from the stale copy
    assert kube.patches == []
    # The next cycle has the copy the watch brought meanwhile.
    from_fresh = status_patch(fresh, info("RUNNING"), NOW)
    assert from_fresh is not None
    assert await monitor._apply(fresh, 42, from_fresh) == 1
    assert [version for version, _ in kube.patches] == ["11"]
    assert [t["state"] for t in kube.patches[-1][1]["transitions"]] == ["IN_QUEUE", "RUNNING"]


async def test_a_patch_of_the_bridges_own_fields_alone_is_not_guarded() -> None:
    stale = job()
    stale.metadata.resource_version = "10"
    kube = _Conflicting(job(reportedTransitions=1))  # the operator wrote meanwhile: version 11... or none
    monitor = SlurmMonitor(kube, SlurmClient(SlurmConfig()), informer_of(stale))  # type: ignore[arg-type]
    reason_only = status_patch(stale, info("PENDING", reason="Priority"), NOW)
    assert reason_only == {"reason": "Priority"}
    assert await monitor._apply(stale, 42, reason_only) == 1  # no transition: no precondition, no conflict
    assert kube.patches == [(None, {"reason": "Priority"})]


def _errors() -> float:
    return REGISTRY.get_sample_value("ucim_slurm_poll_errors_total") or 0.0


def test_jobs_are_counted_by_state_and_a_state_left_reads_zero() -> None:
    unsubmitted = UCloudJob.from_obj(yaml.safe_load(SAMPLE.read_text()) | {"status": {}})
    count_by_state([job(), job(), job(JobState.RUNNING), unsubmitted])
    assert _jobs() == {**dict.fromkeys([*JobState, UNSUBMITTED], 0.0), "IN_QUEUE": 2, "RUNNING": 1, UNSUBMITTED: 1}
    count_by_state([job(JobState.SUCCESS)])
    assert _jobs() == {**dict.fromkeys([*JobState, UNSUBMITTED], 0.0), "SUCCESS": 1}


def _jobs() -> dict[str, float]:
    return {
        state: REGISTRY.get_sample_value("ucim_jobs", {"state": state}) or 0.0
        for state in [*map(str, JobState), UNSUBMITTED]
    }


async def test_a_job_only_accounting_has_as_pending_was_lost_and_vanishes() -> None:
    # Seen in the soak: slurmctld, killed a second after accepting three jobs, forgot them; slurmdbd had their
    # submission and keeps them PENDING for ever, so the jobs stayed IN_QUEUE at Core.
    pending = info("PENDING", name="ucim-0c6b4f3e")
    clock = [NOW / 1000]
    monitor, kube = monitor_of(_Slurm({}, accounted={42: pending}), job(), clock)
    assert await monitor.run_once() == 0
    clock[0] += monitor.vanish_grace.total_seconds()
    assert await monitor.run_once() == 1
    assert kube.patches[0]["transitions"][-1]["message"] == VANISHED_MESSAGE
    # A job that ended and left squeue is found in accounting as it ended.
    done = info("COMPLETED", name="ucim-0c6b4f3e", exit_code=0, signal=0)
    monitor, kube = monitor_of(_Slurm({}, accounted={42: done}), job(JobState.RUNNING), [NOW / 1000])
    assert await monitor.run_once() == 1
    assert kube.patches[0]["state"] == "SUCCESS"


# --------------------------------------------------------------------------- the Slurm hook's notifications


class _Asked(_Slurm):
    """Records the ids of each squeue."""

    def __init__(self, known: dict[int, SlurmJobInfo]) -> None:
        super().__init__(known)
        self.asked: list[set[int]] = []

    async def poll(self, job_ids: Any) -> dict[int, SlurmJobInfo]:
        self.asked.append(set(job_ids))
        return await super().poll(job_ids)


def _job_numbered(slurm_id: int) -> UCloudJob:
    tracked = job(slurmJobId=slurm_id)
    tracked.metadata.name = f"ucloud-{slurm_id}"
    return tracked


def _hooked(slurm: SlurmClient, *jobs: UCloudJob, interval: float = 1.0) -> tuple[SlurmMonitor, _Recorder]:
    kube = _Recorder()
    monitor = SlurmMonitor(
        kube,  # type: ignore[arg-type]
        slurm,
        informer_of(*jobs),
        interval=PollInterval(interval, interval),
        hook=HookBatches(batch_seconds=0.0, min_gap_seconds=0.01),
    )
    return monitor, kube


async def test_the_jobs_the_hook_names_are_asked_about_in_one_query_and_patched() -> None:
    slurm = _Asked({42: info("RUNNING"), 43: SlurmJobInfo(job_id=43, state="CONFIGURING")})
    monitor, kube = _hooked(slurm, _job_numbered(42), _job_numbered(43), _job_numbered(44))
    for slurm_id in (42, 43, 99):  # 99: anybody else's job
        monitor.notify(slurm_id, PROLOG)
    assert monitor.hook is not None
    assert await monitor.run_for(monitor.hook.take(time.monotonic())) == 2
    assert slurm.asked == [{42, 43}]  # one query, only for jobs the monitor tracks (44 was not named)
    assert [p.get("state") for p in kube.patches] == ["RUNNING", None]  # 43: its slurmState only
    # 43 still starting and 99 unknown: asked about again; 42 is done.
    assert set(monitor.hook.pending) == {43, 99}


async def test_a_batch_of_jobs_nobody_tracks_costs_no_query() -> None:
    slurm = _Asked({})
    monitor, _ = _hooked(slurm, _job_numbered(42))
    monitor.notify(99, EPILOG)
    assert monitor.hook is not None
    assert await monitor.run_for(monitor.hook.take(time.monotonic())) == 0
    assert slurm.asked == []


async def test_a_notification_is_answered_long_before_the_next_poll() -> None:
    slurm = _Asked({42: info("PENDING")})
    monitor, kube = _hooked(slurm, _job_numbered(42), interval=30.0)
    monitor.jobs.run = _watch_nothing  # type: ignore[method-assign]
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    assert slurm.asked == [{42}]  # the first poll, at the start; the next in 30 s
    slurm.known[42] = info("RUNNING")
    started = time.monotonic()
    monitor.notify(42, PROLOG)
    for _ in range(200):
        if kube.patches:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kube.patches[0]["state"] == "RUNNING"
    assert time.monotonic() - started < 0.5
    assert slurm.asked == [{42}, {42}]


async def test_a_stream_of_notifications_never_starves_the_poll() -> None:
    slurm = _Asked({42: info("PENDING"), 43: SlurmJobInfo(job_id=43, state="PENDING")})
    monitor, _ = _hooked(slurm, _job_numbered(42), _job_numbered(43), interval=0.1)
    monitor.jobs.run = _watch_nothing  # type: ignore[method-assign]
    task = asyncio.create_task(monitor.run())
    for _ in range(50):  # 42 is named every 10 ms for half a second, and never shows a start
        monitor.notify(42, PROLOG)
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    polls = [ids for ids in slurm.asked if ids == {42, 43}]
    assert len(polls) >= 4  # every 0.1 s, however many notifications came
    assert {42} in slurm.asked


async def test_a_start_the_hook_names_removes_the_jobs_place_in_the_queue_as_a_poll_does() -> None:
    slurm = _Asked({42: info("RUNNING")})
    waiting = job(queuePosition=2, queueLength=5, estimatedStartAt="2026-11-25T04:00:00Z")
    monitor, kube = _hooked(slurm, waiting)
    monitor.notify(42, PROLOG)
    assert monitor.hook is not None
    assert await monitor.run_for(monitor.hook.take(time.monotonic())) == 1
    patch = kube.patches[0]
    assert patch["state"] == "RUNNING"
    assert (patch["queuePosition"], patch["queueLength"], patch["estimatedStartAt"]) == (None, None, None)

"""The bridge's walltime extensions: what it asks Slurm and what it writes (Slurm and Kubernetes faked)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from tests.support.extension_jobs import extension, outcome, sample_job
from tests.support.fake_kube import FakeKube
from tests.unit.test_monitor import informer_of
from ucim.common.kube import Kube
from ucim.common.resources import TimeExtension, UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmError, SlurmUnavailableError
from ucim.operator.jobs import job_update
from ucim.slurm_bridge.extensions import TimeExtensions, beyond_partition, outcome_patch

NOW_MS = 1_800_000_000_000


class _Slurm(SlurmClient):
    """Slurm with a partition limit of ``max_time``; ``refuse`` makes scontrol update fail with that error."""

    def __init__(self, max_time: timedelta | None = timedelta(days=1), refuse: SlurmError | None = None) -> None:
        super().__init__(SlurmConfig())
        self.max_time, self.refuse = max_time, refuse
        self.updates: list[tuple[int, int]] = []

    async def partition_max_time(self, job_id: int) -> timedelta | None:
        return self.max_time

    async def set_time_limit(self, job_id: int, minutes: int) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.updates.append((job_id, minutes))


async def extended(job: UCloudJob, slurm: _Slurm) -> tuple[UCloudJob, FakeKube]:
    kube = FakeKube()
    created = await kube.create(job, "ns")
    await kube.patch_status(UCloudJob, "ns", job.metadata.name, job.status.to_dict())
    stored = await kube.get(UCloudJob, "ns", created.metadata.name)
    assert stored is not None
    extensions = TimeExtensions(kube, slurm, "ns", clock=lambda: NOW_MS / 1000)  # type: ignore[arg-type]
    assert await extensions.extend(stored)
    after = await kube.get(UCloudJob, "ns", job.metadata.name)
    assert after is not None
    return after, kube


async def test_an_extension_sets_slurms_limit_and_tells_core_the_new_allocation() -> None:
    slurm = _Slurm()
    job, _ = await extended(sample_job(asked=[extension("a", 60, 65)]), slurm)
    assert slurm.updates == [(42, 65)]
    (answer,) = job.status.extensions
    assert (answer.id, answer.result) == ("a", "Applied")
    assert job.status.time_limit_minutes == 65
    line = job.status.transitions[-1]
    assert line.state is None and line.new_time_allocation == 65 * 60_000
    assert line.message == "Time limit extended by 1 h to 1 h 5 min"
    # The operator hands it to Core as it is: a JobUpdate with newTimeAllocation.
    update = job_update(line, None)
    assert update.new_time_allocation == 3_900_000 and update.state is None


async def test_the_partitions_max_time_holds_for_root() -> None:
    slurm = _Slurm(max_time=timedelta(hours=1))
    job, _ = await extended(sample_job(asked=[extension("a", 60, 65)]), slurm)
    assert slurm.updates == []
    (answer,) = job.status.extensions
    assert answer.result == "Refused" and "1 h, its MaxTime" in answer.message
    assert job.status.time_limit_minutes is None and len(job.status.transitions) == 1


async def test_slurms_refusal_is_the_answer() -> None:
    refusal = SlurmError("scontrol update failed", detail="Job has already finished")
    job, _ = await extended(sample_job(asked=[extension("a", 60, 65)]), _Slurm(refuse=refusal))
    (answer,) = job.status.extensions
    assert answer.result == "Refused" and "Job has already finished" in answer.message


async def test_slurm_away_is_no_answer_but_a_retry() -> None:
    job = sample_job(asked=[extension("a", 60, 65)])
    kube = FakeKube()
    await kube.create(job, "ns")
    extensions = TimeExtensions(kube, _Slurm(refuse=SlurmUnavailableError("scontrol", detail="timed out")), "ns")  # type: ignore[arg-type]
    with pytest.raises(SlurmUnavailableError):
        await extensions.extend(job)


async def test_an_ended_job_is_refused_without_asking_slurm() -> None:
    slurm = _Slurm()
    job, _ = await extended(sample_job("SUCCESS", asked=[extension("a", 60, 65)]), slurm)
    assert slurm.updates == [] and job.status.extensions[0].result == "Refused"


async def test_extensions_are_answered_in_order_one_at_a_time() -> None:
    job = sample_job(asked=[extension("a", 60, 65), extension("b", 30, 95)], extensions=[outcome("a")])
    slurm = _Slurm()
    after, _ = await extended(job, slurm)
    assert slurm.updates == [(42, 95)]
    assert [o.id for o in after.status.extensions] == ["a", "b"]
    assert after.pending_extensions() == []


async def test_a_stale_copy_writes_nothing() -> None:
    job = sample_job(asked=[extension("a", 60, 65)])
    kube = FakeKube()
    await kube.create(job, "ns")
    stale = await kube.get(UCloudJob, "ns", job.metadata.name)
    assert stale is not None
    await kube.patch_status(UCloudJob, "ns", job.metadata.name, {"reportedTransitions": 1})  # the operator wrote
    assert not await TimeExtensions(kube, _Slurm(), "ns").extend(stale)  # type: ignore[arg-type]
    fresh = await kube.get(UCloudJob, "ns", job.metadata.name)
    assert fresh is not None and fresh.pending_extensions()  # the watch's newer copy is worked on next


def test_the_watch_marks_only_jobs_with_pending_extensions() -> None:
    extensions = TimeExtensions(typing_none(), _Slurm(), "ns")
    extensions.on_event("MODIFIED", sample_job())
    extensions.on_event("DELETED", sample_job(asked=[extension("a", 60, 65)]))
    assert not extensions._wake.is_set()
    extensions.on_event("ADDED", sample_job(asked=[extension("a", 60, 65)]))
    assert extensions._wake.is_set() and extensions._dirty == {UCloudJob.name_for("4711")}


def test_beyond_partition_compares_whole_minutes() -> None:
    ext = TimeExtension.model_validate(extension("a", 60, 60))
    assert beyond_partition(ext, timedelta(hours=1)) is None
    assert beyond_partition(ext, None) is None
    assert beyond_partition(ext, timedelta(minutes=59)) is not None


def test_a_refusal_changes_neither_the_limit_nor_the_transitions() -> None:
    job = sample_job(asked=[extension("a", 60, 65)])
    patch: dict[str, Any] = outcome_patch(job, job.pending_extensions()[0], "Refused", "no", NOW_MS)
    assert set(patch) == {"extensions"}


def typing_none() -> Kube:
    return None  # type: ignore[return-value]


async def test_the_loop_applies_what_the_watch_marked() -> None:
    job = sample_job(asked=[extension("a", 60, 65)])
    kube = FakeKube()
    await kube.create(job, "ns")
    await kube.patch_status(UCloudJob, "ns", job.metadata.name, job.status.to_dict())
    stored = await kube.get(UCloudJob, "ns", job.metadata.name)
    assert stored is not None
    slurm = _Slurm()
    extensions = TimeExtensions(kube, slurm, "ns")  # type: ignore[arg-type]
    task = asyncio.create_task(extensions.run(informer_of(stored)))
    extensions.on_event("ADDED", stored)
    applied = await asyncio.wait_for(
        kube.wait_for(UCloudJob, "ns", job.metadata.name, lambda j: j is not None and not j.pending_extensions()), 2
    )
    task.cancel()
    assert applied is not None and slurm.updates == [(42, 65)]

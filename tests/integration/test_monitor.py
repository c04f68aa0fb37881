"""The bridge's Slurm monitor against the real apiserver and the real Slurm."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.support.platform import Platform
from ucim.common.instance_api import slurm_job_name
from ucim.common.kube import ConflictError, Kube
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_parsing import SlurmJobInfo
from ucim.slurm_bridge.monitor import SlurmMonitor, status_patch

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "valid" / "ucloudjob.yaml"


@pytest.fixture
async def kube(platform: Platform) -> AsyncIterator[Kube]:
    async with await Kube.connect(platform.kubeconfig) as client:
        yield client


def submit_as_alice(platform: Platform, job: UCloudJob, command: str) -> int:
    """sbatch as alice, named as the operator names the job's Slurm job (the monitor checks the name)."""
    assert job.metadata.uid is not None
    out = platform.run_as(
        "alice", "sbatch", "--parsable", "--chdir=/home/alice", "--output=/dev/null",
        f"--job-name={slurm_job_name(job.metadata.uid)}", f"--wrap={command}",
    ).stdout  # fmt: skip
    return int(out.strip().split(";")[0])


@contextlib.asynccontextmanager
async def watching(platform: Platform, kube: Kube, namespace: str, cluster: str) -> AsyncIterator[SlurmMonitor]:
    """A monitor of ``cluster`` whose watch runs (as ``run`` starts it), its cache filled."""
    slurm = SlurmClient(SlurmConfig(slurm_conf=Path(platform.env["SLURM_CONF"])))
    monitor = SlurmMonitor.for_cluster(kube, slurm, namespace=namespace, cluster=cluster)
    watch = asyncio.create_task(monitor.jobs.run())
    try:
        async with asyncio.timeout(10):
            await monitor.jobs.synced.wait()
        yield monitor
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def watched(monitor: SlurmMonitor, stored: UCloudJob) -> None:
    """Until the monitor's watch has caught up with ``stored``."""
    async with asyncio.timeout(10):
        while (cached := monitor.jobs.get(stored.metadata.name)) is None or int(  # noqa: ASYNC110 - no event to wait on
            cached.metadata.resource_version or 0
        ) < int(stored.metadata.resource_version or 0):
            await asyncio.sleep(0.01)


async def cycle_until(
    monitor: SlurmMonitor, kube: Kube, namespace: str, name: str, *, done: Callable[[UCloudJob], bool], seconds: float
) -> tuple[UCloudJob, list[JobState | None]]:
    """Run monitor cycles (as main.py's loop would) until ``done`` holds for the stored job."""
    seen: list[JobState | None] = []
    deadline = time.monotonic() + seconds
    while True:
        await monitor.run_once()
        stored = await kube.get(UCloudJob, namespace, name)
        assert stored is not None
        seen.append(stored.status.state)
        if done(stored) or time.monotonic() > deadline:
            return stored, seen
        await asyncio.sleep(0.2)


def is_final(job: UCloudJob) -> bool:
    return job.status.state is not None and job.status.state.is_final


async def test_job_goes_running_then_failure_with_exit_code(platform: Platform, namespace: str, kube: Kube) -> None:
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"]["name"] = f"ucloud-monitor-{uuid.uuid4().hex[:8]}"
    job = await kube.create(UCloudJob.from_obj(manifest), namespace)
    name = job.metadata.name

    slurm_id = submit_as_alice(platform, job, "sleep 2; exit 3")
    queued_ms = int(time.time() * 1000)
    queued = await kube.patch_status(
        UCloudJob,
        namespace,
        name,
        {
            "slurmJobId": slurm_id,
            "state": "IN_QUEUE",
            "transitions": [{"state": "IN_QUEUE", "timestamp": queued_ms, "message": "submitted"}],
        },
    )

    async with watching(platform, kube, namespace, job.spec.cluster) as monitor:
        await watched(monitor, queued)
        stored, seen = await cycle_until(monitor, kube, namespace, name, done=is_final, seconds=60)
        await watched(monitor, stored)
        # Nothing changed in Slurm: the next cycle writes nothing (the job is final, so untracked).
        version = stored.metadata.resource_version
        assert await monitor.run_once() == 0

    status = stored.status
    assert status.state == JobState.FAILURE, seen
    assert status.exit_code == 3
    assert status.slurm_state == "FAILED"
    assert status.node_list
    assert status.started_at is not None
    assert status.ended_at is not None
    assert status.started_at <= status.ended_at
    assert [t.state for t in status.transitions] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.FAILURE]
    assert status.transitions[-1].message == "exited with code 3"
    stamps = [t.timestamp for t in status.transitions]
    assert stamps == sorted(stamps)

    again = await kube.get(UCloudJob, namespace, name)
    assert again is not None
    assert again.metadata.resource_version == version
    # ucim_jobs counts the namespace's jobs by state, final ones too.
    assert REGISTRY.get_sample_value("ucim_jobs", {"state": "FAILURE"}) == 1
    assert REGISTRY.get_sample_value("ucim_jobs", {"state": "RUNNING"}) == 0


async def test_unchanged_running_job_is_not_patched(platform: Platform, namespace: str, kube: Kube) -> None:
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"]["name"] = f"ucloud-monitor-{uuid.uuid4().hex[:8]}"
    job = await kube.create(UCloudJob.from_obj(manifest), namespace)
    name = job.metadata.name
    slurm_id = submit_as_alice(platform, job, "sleep 30")
    try:
        await kube.patch_status(
            UCloudJob,
            namespace,
            name,
            {
                "slurmJobId": slurm_id,
                "state": "IN_QUEUE",
                "transitions": [{"state": "IN_QUEUE", "timestamp": int(time.time() * 1000)}],
            },
        )
        async with watching(platform, kube, namespace, job.spec.cluster) as monitor:
            stored, seen = await cycle_until(
                monitor, kube, namespace, name, done=lambda j: j.status.state == JobState.RUNNING, seconds=30
            )
            assert stored.status.state == JobState.RUNNING, seen
            await watched(monitor, stored)
            # A cycle with the job still running and nothing new from Slurm patches nothing.
            assert await monitor.run_once() == 0
        again = await kube.get(UCloudJob, namespace, name)
        assert again is not None
        assert again.metadata.resource_version == stored.metadata.resource_version
        assert len(again.status.transitions) == 2
    finally:
        platform.run_as("alice", "scancel", str(slurm_id), check=False)


async def test_a_write_of_the_operator_between_the_watch_and_the_patch_is_kept(
    platform: Platform, namespace: str, kube: Kube
) -> None:
    """Two writers interleaved: the monitor's patch was computed from a copy the operator has since changed."""
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"]["name"] = f"ucloud-monitor-{uuid.uuid4().hex[:8]}"
    job = await kube.create(UCloudJob.from_obj(manifest), namespace)
    name = job.metadata.name
    slurm_id = submit_as_alice(platform, job, "sleep 30")
    try:
        queued_ms = int(time.time() * 1000)
        first = {"state": "IN_QUEUE", "timestamp": queued_ms, "message": "submitted"}
        queued = await kube.patch_status(
            UCloudJob, namespace, name, {"slurmJobId": slurm_id, "state": "IN_QUEUE", "transitions": [first]}
        )
        async with watching(platform, kube, namespace, job.spec.cluster) as monitor:
            await watched(monitor, queued)
            stale = monitor.jobs.get(name)
            assert stale is not None
            # The operator, meanwhile: Core has the first change (and, as kopf does, the write is guarded).
            await kube.patch_status(UCloudJob, namespace, name, {"reportedTransitions": 1},
                                    resource_version=queued.metadata.resource_version)  # fmt: skip
            running = SlurmJobInfo(job_id=slurm_id, state="RUNNING")
            from_stale = status_patch(stale, running, queued_ms + 1)
            assert from_stale is not None
            # Computed from the copy before the operator's write: refused, and nothing of it is written...
            assert await monitor._apply(stale, slurm_id, from_stale) == 0
            # ...and the next cycle's, from the copy the watch brings, is.
            operator_wrote = await kube.get(UCloudJob, namespace, name)
            assert operator_wrote is not None
            await watched(monitor, operator_wrote)
            current = monitor.jobs.get(name)
            assert current is not None
            from_current = status_patch(current, running, queued_ms + 1)
            assert from_current is not None
            assert await monitor._apply(current, slurm_id, from_current) == 1
        stored = await kube.get(UCloudJob, namespace, name)
        assert stored is not None
        assert stored.status.reported_transitions == 1  # the operator's write is kept...
        assert [t.state for t in stored.status.transitions] == [JobState.IN_QUEUE, JobState.RUNNING]  # ...and ours
        # A patch computed from a copy that is out of date is refused outright, never applied.
        with pytest.raises(ConflictError):
            await kube.patch_status(UCloudJob, namespace, name, {"reason": "x"},
                                    resource_version=queued.metadata.resource_version)  # fmt: skip
    finally:
        platform.run_as("alice", "scancel", str(slurm_id), check=False)

"""The bridge's Slurm monitor against the real apiserver and the real Slurm."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.support.platform import Platform
from ucim.common.kube import Kube
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.slurm_bridge.monitor import SlurmMonitor

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "valid" / "ucloudjob.yaml"


@pytest.fixture
async def kube(platform: Platform) -> AsyncIterator[Kube]:
    async with await Kube.connect(platform.kubeconfig) as client:
        yield client


def submit_as_alice(platform: Platform, command: str) -> int:
    out = platform.run_as(
        "alice", "sbatch", "--parsable", "--chdir=/home/alice", "--output=/dev/null", f"--wrap={command}"
    ).stdout
    return int(out.strip().split(";")[0])


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

    slurm_id = submit_as_alice(platform, "sleep 2; exit 3")
    queued_ms = int(time.time() * 1000)
    await kube.patch_status(
        UCloudJob,
        namespace,
        name,
        {
            "slurmJobId": slurm_id,
            "state": "IN_QUEUE",
            "transitions": [{"state": "IN_QUEUE", "timestamp": queued_ms, "message": "submitted"}],
        },
    )

    slurm = SlurmClient(SlurmConfig(slurm_conf=Path(platform.env["SLURM_CONF"])))
    monitor = SlurmMonitor(kube, slurm, namespace=namespace, cluster=job.spec.cluster)
    stored, seen = await cycle_until(monitor, kube, namespace, name, done=is_final, seconds=60)

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

    # Nothing changed in Slurm: the next cycle writes nothing (the job is final, so untracked).
    version = stored.metadata.resource_version
    assert await monitor.run_once() == 0
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
    slurm_id = submit_as_alice(platform, "sleep 30")
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
        slurm = SlurmClient(SlurmConfig(slurm_conf=Path(platform.env["SLURM_CONF"])))
        monitor = SlurmMonitor(kube, slurm, namespace=namespace, cluster=job.spec.cluster)
        stored, seen = await cycle_until(
            monitor, kube, namespace, name, done=lambda j: j.status.state == JobState.RUNNING, seconds=30
        )
        assert stored.status.state == JobState.RUNNING, seen
        # A cycle with the job still running and nothing new from Slurm patches nothing.
        assert await monitor.run_once() == 0
        again = await kube.get(UCloudJob, namespace, name)
        assert again is not None
        assert again.metadata.resource_version == stored.metadata.resource_version
        assert len(again.status.transitions) == 2
    finally:
        platform.run_as("alice", "scancel", str(slurm_id), check=False)

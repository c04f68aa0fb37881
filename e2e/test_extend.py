"""Walltime extension end to end: Core's jobs/extend → gateway (policy) → UCloudJob → bridge (root, scontrol)
→ Slurm's TimeLimit → Core's job update with newTimeAllocation.

The site's policy here: at most 60 minutes per request, at most 60 minutes in all in partition ``normal``
(whose Slurm MaxTime is a day); partition ``short`` allows one minute in Slurm itself (here and in the kind
frontend's slurm.conf), which the bridge enforces (root could go past it). The kind release keeps the chart's
default policy, so only the tests that need none of this file's settings run there.
"""

from __future__ import annotations

import re
import uuid

import pytest

from ucim.common.protocol import Job, JobState, SimpleDuration, dump
from ucim.common.resources import UCloudJob
from ucim.testing.stack import Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.stack_settings(
        {
            "ucim-gateway": {
                "UCIM_GATEWAY_EXTENSION__MAX_PER_REQUEST_MINUTES": "60",
                "UCIM_GATEWAY_EXTENSION__PARTITION_MAX_TOTAL_MINUTES": '{"normal": 60}',
            }
        }
    ),
]


async def running(stack: Stack, minutes: int, product: tuple[str, str] = ("cpu-1", "cpu")) -> Job:
    job_id = str(uuid.uuid4().int % 10**9)
    spec = stack.core.make_job(
        job_id, "alice", ("sleep-exit", "1"), {"seconds": 300}, time_allocation=SimpleDuration(minutes=minutes)
    )
    spec.specification.product.id, spec.specification.product.category = product
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job_id, JobState.RUNNING, timeout=60)
    return spec


def slurm_time_limit(stack: Stack, job: Job) -> str:
    """The job's TimeLimit as ``scontrol show job`` prints it (as alice, who may look at her own job)."""
    slurm_id = UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job.id)}")).status.slurm_job_id
    shown = stack.run_as("alice", "scontrol", "show", "job", str(slurm_id)).stdout
    match = re.search(r"\bTimeLimit=(\S+)", shown)
    assert match is not None, shown
    return match.group(1)


async def test_a_running_job_is_extended_within_the_policy_once(stack: Stack) -> None:
    job = await running(stack, minutes=10)
    stale = stack.core.jobs[job.id]  # the job as Core holds it before the extension
    answer = await stack.core.extend_jobs([(job, SimpleDuration(minutes=30))])
    assert answer.status == 200, answer.body
    assert answer.body == {"responses": [{}]}
    (call,) = [c for c in stack.core.record.provider_calls if c.path == "jobs/extend"]
    assert call.seconds < 4, "Core gives a provider call about 5 s"
    print(f"jobs/extend answered in {call.seconds * 1000:.0f} ms")
    assert slurm_time_limit(stack, job) == "00:40:00"
    update = await stack.core.wait_for_update_where(
        job.id, lambda u: u.new_time_allocation is not None, "newTimeAllocation", timeout=10
    )
    assert update.new_time_allocation == 40 * 60_000
    assert update.state is None and update.status is not None and "40 min" in update.status
    assert stack.core.jobs[job.id].specification.time_allocation == SimpleDuration(minutes=40)

    # Core's retry of the same call (its job still says 10 minutes) is the same request: no second extension.
    item = {"job": dump(stale), "requestedTime": dump(SimpleDuration(minutes=30))}
    retried = await stack.core.call_provider("POST", "jobs/extend", {"items": [item]}, "alice")
    assert retried.status == 200, retried.body
    assert slurm_time_limit(stack, job) == "00:40:00"
    ucj = stack.get(f"ucj/{UCloudJob.name_for(job.id)}")
    assert len(ucj["spec"]["extensions"]) == 1
    assert ucj["status"]["timeLimitMinutes"] == 40
    await stack.core.terminate_jobs([job])


@pytest.mark.local_platform  # the policy is this file's stack_settings, which the kind release does not take
async def test_extensions_beyond_the_policy_are_refused_with_the_limit(stack: Stack) -> None:
    job = await running(stack, minutes=10)
    too_much = await stack.core.extend_jobs([(job, SimpleDuration(hours=2))])
    assert too_much.status == 400
    assert "at most 1 h per request" in too_much.body["why"]
    beyond_partition = await stack.core.extend_jobs([(job, SimpleDuration(minutes=55))])
    assert beyond_partition.status == 400
    assert "1 h 5 min" in beyond_partition.body["why"] and "partition normal" in beyond_partition.body["why"]
    assert slurm_time_limit(stack, job) == "00:10:00"
    # Bob cannot extend alice's job, whatever the policy.
    other = await stack.core.extend_jobs([(job, SimpleDuration(minutes=5))], username="bob")
    assert other.status == 403
    await stack.core.terminate_jobs([job])


async def test_slurms_partition_limit_holds_for_root_too(stack: Stack) -> None:
    # Partition short's MaxTime is one minute: the gateway's policy has no limit for it, the bridge keeps Slurm's.
    job = await running(stack, minutes=1, product=("short-1", "cpu-short"))
    answer = await stack.core.extend_jobs([(job, SimpleDuration(minutes=1))])
    assert answer.status == 400
    assert "MaxTime" in answer.body["why"], answer.body
    assert slurm_time_limit(stack, job) == "00:01:00"
    await stack.core.terminate_jobs([job])

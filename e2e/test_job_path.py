"""The job path end to end: Core → gateway → UCloudJob → operator → the user's instance → Slurm → Core.

Every component runs as its real process against the real apiserver and Slurm of
the local platform; only UCloud/Core is the stand-in.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.support.platform import Platform
from ucim.common.protocol import JobState, SimpleDuration
from ucim.common.resources import UCloudJob
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e


def job_id() -> str:
    return str(uuid.uuid4().int % 10**9)


def ucloud_job(platform: Platform, stack: Stack, job: str) -> UCloudJob:
    return UCloudJob.from_obj(platform.get(stack.namespace, f"ucj/{UCloudJob.name_for(job)}"))


def states(stack: Stack, job: str) -> list[str]:
    return [str(update.state) for update in stack.core.updates_for(job) if update.state is not None]


@pytest.mark.parametrize("user", ["alice", "bob"])
async def test_a_job_runs_as_its_owner_and_succeeds(platform: Platform, stack: Stack, user: str) -> None:
    job = job_id()
    created = await stack.core.create_jobs(
        [stack.core.make_job(job, user, ("run-command", "1"), {"command": "sleep 2; id -un"})]
    )
    assert created[0].id == UCloudJob.name_for(job)
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert states(stack, job) == ["IN_QUEUE", "RUNNING", "SUCCESS"]
    folder = Path(f"/home/{user}/ucloud-jobs/{job}")
    assert (folder / "stdout.txt").read_text().strip() == user
    assert (folder / "stdout.txt").stat().st_uid == int(platform.run_as(user, "id", "-u").stdout)
    other = "bob" if user == "alice" else "alice"
    denied = platform.run_as(other, "ls", str(folder), check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert ucloud_job(platform, stack, job).status.exit_code == 0


async def test_exit_code_3_is_a_failure_with_the_code(platform: Platform, stack: Stack) -> None:
    job = job_id()
    await stack.core.create_jobs(
        [stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 1, "exitCode": 3})]
    )
    update = await stack.core.wait_for_update(job, JobState.FAILURE, timeout=60)
    assert update.status is not None and "exited with code 3" in update.status
    assert ucloud_job(platform, stack, job).status.exit_code == 3


async def test_terminate_cancels_in_slurm_and_reports_the_end(platform: Platform, stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 300})
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job, JobState.RUNNING, timeout=60)
    await stack.core.terminate_jobs([spec])
    update = await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert update.status is not None and "cancelled" in update.status.lower()
    assert ucloud_job(platform, stack, job).status.slurm_state == "CANCELLED"


async def test_an_sbatch_rejection_is_a_readable_400_and_leaves_nothing(platform: Platform, stack: Stack) -> None:
    job = job_id()
    # The short partition allows one minute; EnforcePartLimits makes sbatch refuse two hours.
    spec = stack.core.make_job(
        job, "alice", ("sleep-exit", "1"), {"seconds": 1}, time_allocation=SimpleDuration(hours=2)
    )
    spec.specification.product.id, spec.specification.product.category = "short-1", "cpu-short"
    with pytest.raises(ProviderCallError) as rejected:
        await stack.core.create_jobs([spec])
    assert rejected.value.status == 400
    assert "time limit" in str(rejected.value.body["why"]).lower()
    # The resource is deleted (the operator's finalizer lets go at once: no Slurm job exists) ...
    for _ in range(100):
        if platform.kubectl("get", "-n", stack.namespace, "ucj", UCloudJob.name_for(job), check=False).returncode:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the rejected job's resource was not deleted")
    # ... and the instance removed the job folder it had made.
    assert not Path(f"/home/alice/ucloud-jobs/{job}").exists()


async def test_the_same_job_twice_is_one_slurm_job(platform: Platform, stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 2})
    first = await stack.core.create_jobs([spec])
    second = await stack.core.create_jobs([spec])
    assert first == second
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    slurm_id = ucloud_job(platform, stack, job).status.slurm_job_id
    name = f"ucim-{platform.get(stack.namespace, f'ucj/{UCloudJob.name_for(job)}')['metadata']['uid']}"
    found = platform.run_as("alice", "squeue", "-h", "-t", "all", "-n", name, "-o", "%i").stdout.split()
    assert found == [str(slurm_id)]


async def test_shell_metacharacters_reach_the_program_verbatim(platform: Platform, stack: Stack) -> None:
    job = job_id()
    marker = Path(f"/tmp/ucim-pwned-{job}")
    hostile = f'\'; touch {marker}; echo "$(id)" `id` && rm -rf ~ | cat > /dev/null\n$HOME ${{IFS}} \\ "'
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("echo-text", "1"), {"text": hostile})])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert Path(f"/home/alice/ucloud-jobs/{job}/stdout.txt").read_text() == hostile + "\n"
    assert not marker.exists()


async def test_core_unreachable_then_every_update_arrives_in_order(platform: Platform, stack: Stack) -> None:
    job = job_id()
    stack.core.fail_requests("/api/jobs/control/update")
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 2})])
    ucj = UCloudJob.name_for(job)
    # Wait until the job is over in Slurm while Core hears nothing.
    for _ in range(600):
        if platform.get(stack.namespace, f"ucj/{ucj}").get("status", {}).get("state") == "SUCCESS":
            break
        await asyncio.sleep(0.1)
    assert states(stack, job) == []
    stack.core.clear_failures()
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert states(stack, job) == ["IN_QUEUE", "RUNNING", "SUCCESS"]


async def test_an_operator_crash_mid_job_loses_nothing(platform: Platform, stack: Stack) -> None:
    # (The crash between sbatch and the status write is tested in tests/integration/test_operator.py.)
    job = job_id()
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 3})])
    await stack.kill("ucim-operator")
    await stack.start("ucim-operator")
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    # Delivery is at-least-once: a SIGKILL after Core acknowledged a batch but before the operator
    # recorded it repeats that one batch. Nothing is lost and the order holds.
    received = states(stack, job)
    deduplicated = [state for i, state in enumerate(received) if i == 0 or state != received[i - 1]]
    assert deduplicated == ["IN_QUEUE", "RUNNING", "SUCCESS"]
    assert len(received) - len(deduplicated) <= 1
    name = f"ucim-{platform.get(stack.namespace, f'ucj/{UCloudJob.name_for(job)}')['metadata']['uid']}"
    assert len(platform.run_as("alice", "squeue", "-h", "-t", "all", "-n", name, "-o", "%i").stdout.split()) == 1


async def test_a_job_over_its_time_limit_expires(platform: Platform, stack: Stack) -> None:
    # Slurm's time limits are whole minutes and it checks them about every 30 s: this test takes one to two minutes.
    job = job_id()
    spec = stack.core.make_job(
        job, "alice", ("sleep-exit", "1"), {"seconds": 600}, time_allocation=SimpleDuration(minutes=1)
    )
    spec.specification.product.id, spec.specification.product.category = "short-1", "cpu-short"
    await stack.core.create_jobs([spec])
    update = await stack.core.wait_for_update(job, JobState.EXPIRED, timeout=180)
    assert update.status is not None and "time limit" in update.status
    assert ucloud_job(platform, stack, job).status.slurm_state == "TIMEOUT"

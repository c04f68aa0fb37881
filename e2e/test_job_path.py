"""The job path end to end: Core → gateway → UCloudJob → operator → the user's instance → Slurm → Core.

Every component runs as its real process against the real apiserver and Slurm of
the local platform, or as the Helm release in a kind cluster with the Slurm frontend
container (``--platform=kind``); only UCloud/Core is the stand-in. What happens on
the frontend (job folders, Slurm, the users) is checked there, through ``Stack``.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ucim.common.protocol import JobState, SimpleDuration
from ucim.common.resources import UCloudJob
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e


def job_id() -> str:
    return str(uuid.uuid4().int % 10**9)


def ucloud_job(stack: Stack, job: str) -> UCloudJob:
    return UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job)}"))


def slurm_name(stack: Stack, job: str) -> str:
    """The Slurm job name of a job: ucim-<uid of its UCloudJob>."""
    return f"ucim-{stack.get(f'ucj/{UCloudJob.name_for(job)}')['metadata']['uid']}"


def states(stack: Stack, job: str) -> list[str]:
    return [str(update.state) for update in stack.core.updates_for(job) if update.state is not None]


@pytest.mark.parametrize("user", ["alice", "bob"])
async def test_a_job_runs_as_its_owner_and_succeeds(stack: Stack, user: str) -> None:
    job = job_id()
    created = await stack.core.create_jobs(
        [stack.core.make_job(job, user, ("run-command", "1"), {"command": "sleep 2; id -un"})]
    )
    assert created[0].id == UCloudJob.name_for(job)
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert states(stack, job) == ["IN_QUEUE", "RUNNING", "SUCCESS"]
    folder = f"/home/{user}/ucloud-jobs/{job}"
    assert stack.read_file(f"{folder}/stdout.txt").strip() == user
    assert stack.owner_uid(f"{folder}/stdout.txt") == int(stack.run_as(user, "id", "-u").stdout)
    other = "bob" if user == "alice" else "alice"
    denied = stack.run_as(other, "ls", folder, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert ucloud_job(stack, job).status.exit_code == 0


async def test_exit_code_3_is_a_failure_with_the_code(stack: Stack) -> None:
    job = job_id()
    await stack.core.create_jobs(
        [stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 1, "exitCode": 3})]
    )
    update = await stack.core.wait_for_update(job, JobState.FAILURE, timeout=60)
    assert update.status is not None and "exited with code 3" in update.status
    assert ucloud_job(stack, job).status.exit_code == 3


async def test_terminate_cancels_in_slurm_and_reports_the_end(stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 300})
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job, JobState.RUNNING, timeout=60)
    await stack.core.terminate_jobs([spec])
    update = await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert update.status is not None and "cancelled" in update.status.lower()
    assert ucloud_job(stack, job).status.slurm_state == "CANCELLED"


async def test_an_sbatch_rejection_is_a_readable_400_and_leaves_nothing(stack: Stack) -> None:
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
        if stack.kubectl("get", "-n", stack.namespace, "ucj", UCloudJob.name_for(job), check=False).returncode:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the rejected job's resource was not deleted")
    # ... and the instance removed the job folder it had made.
    assert not stack.exists(f"/home/alice/ucloud-jobs/{job}")


async def test_the_same_job_twice_is_one_slurm_job(stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 2})
    first = await stack.core.create_jobs([spec])
    second = await stack.core.create_jobs([spec])
    assert first == second
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    slurm_id = ucloud_job(stack, job).status.slurm_job_id
    found = stack.run_as("alice", "squeue", "-h", "-t", "all", "-n", slurm_name(stack, job), "-o", "%i").stdout.split()
    assert found == [str(slurm_id)]


async def test_shell_metacharacters_reach_the_program_verbatim(stack: Stack) -> None:
    job = job_id()
    marker = f"/tmp/ucim-pwned-{job}"
    hostile = f'\'; touch {marker}; echo "$(id)" `id` && rm -rf ~ | cat > /dev/null\n$HOME ${{IFS}} \\ "'
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("echo-text", "1"), {"text": hostile})])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert stack.read_file(f"/home/alice/ucloud-jobs/{job}/stdout.txt") == hostile + "\n"
    assert not stack.exists(marker)


async def test_core_unreachable_then_every_update_arrives_in_order(stack: Stack) -> None:
    job = job_id()
    stack.core.fail_requests("/api/jobs/control/update")
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 2})])
    ucj = UCloudJob.name_for(job)
    # Wait until the job is over in Slurm while Core hears nothing.
    for _ in range(600):
        if stack.get(f"ucj/{ucj}").get("status", {}).get("state") == "SUCCESS":
            break
        await asyncio.sleep(0.1)
    assert states(stack, job) == []
    stack.core.clear_failures()
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    assert states(stack, job) == ["IN_QUEUE", "RUNNING", "SUCCESS"]


async def test_an_operator_crash_mid_job_loses_and_repeats_nothing(stack: Stack) -> None:
    # (The crash between sbatch and the status write is tested in tests/integration/test_operator.py.)
    job = job_id()
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 3})])
    await stack.kill("ucim-operator")
    await stack.start("ucim-operator")
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    # A SIGKILL after Core acknowledged a batch but before the operator recorded it: the next
    # operator asks Core what it holds, so nothing is lost and nothing is repeated.
    assert states(stack, job) == ["IN_QUEUE", "RUNNING", "SUCCESS"]
    found = stack.run_as("alice", "squeue", "-h", "-t", "all", "-n", slurm_name(stack, job), "-o", "%i").stdout.split()
    assert len(found) == 1


async def test_a_job_over_its_time_limit_expires(stack: Stack) -> None:
    # Slurm's time limits are whole minutes and it checks them about every 30 s: this test takes one to two minutes.
    job = job_id()
    spec = stack.core.make_job(
        job, "alice", ("sleep-exit", "1"), {"seconds": 600}, time_allocation=SimpleDuration(minutes=1)
    )
    spec.specification.product.id, spec.specification.product.category = "short-1", "cpu-short"
    await stack.core.create_jobs([spec])
    update = await stack.core.wait_for_update(job, JobState.EXPIRED, timeout=180)
    assert update.status is not None and "time limit" in update.status
    assert ucloud_job(stack, job).status.slurm_state == "TIMEOUT"

"""Core's projects and wallets end to end: a Unix group and a Slurm account, jobs under it, usage, a lock.

Core's stand-in serves the accounting event stream; the operator keeps it open and writes
UCloudProjects; the bridge makes the group (groupadd/gpasswd) and the Slurm account
(sacctmgr, on the platform's slurmdbd, which enforces associations and limits); a project
job runs under that account; a lock at Core refuses the next job (402) and sets
``MaxJobs=0`` in Slurm. What the frontend holds is read there (getent, sacctmgr).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import PurePath

import pytest

from ucim.common import reasons
from ucim.common.accounting_stream import REPLAY_EVERYTHING_MS, Workspace
from ucim.common.conditions import is_true
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudProject
from ucim.common.resources import Workspace as WorkspaceRef
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.stack import Stack, accounting_settings, project_drives_dir

pytestmark = [pytest.mark.e2e, pytest.mark.local_platform, pytest.mark.stack_settings(accounting_settings())]

WAIT = 30.0


def project_of(stack: Stack, project_id: str) -> UCloudProject | None:
    name = UCloudProject.name_for(WorkspaceRef(kind="project", id=project_id))
    found = stack.kubectl("get", "ucp", name, "-n", stack.namespace, "-o", "json", check=False)
    return UCloudProject.model_validate_json(found.stdout) if found.returncode == 0 else None


async def until(stack: Stack, project_id: str, what: str, check: Callable[[UCloudProject], bool]) -> UCloudProject:
    """The project once ``check`` holds (the test reads as a person would, with kubectl)."""
    project = None
    try:
        async with asyncio.timeout(WAIT):
            while True:
                project = project_of(stack, project_id)
                if project is not None and check(project):
                    return project
                await asyncio.sleep(0.3)
    except TimeoutError:
        shown = project.status.model_dump_json(by_alias=True, exclude_none=True) if project is not None else "none"
        raise AssertionError(f"{what}: not within {WAIT:.0f} s; the status: {shown}") from None


def told(stack: Stack, project: UCloudProject) -> set[str]:
    """The reasons of the Events about ``project``."""
    listed = json.loads(stack.kubectl("get", "events.events.k8s.io", "-n", stack.namespace, "-o", "json").stdout)
    return {e["reason"] for e in listed["items"] if e["regarding"]["name"] == project.metadata.name}


def slurm_users(stack: Stack, account: str) -> set[str]:
    shown = stack.run_as("alice", "sacctmgr", "-nP", "show", "assoc", f"account={account}", "format=user,maxjobs")
    return {line.split("|")[0] for line in shown.stdout.splitlines() if line.split("|")[0]}


def max_jobs(stack: Stack, account: str) -> str:
    shown = stack.run_as("alice", "sacctmgr", "-nP", "show", "account", account, "withassoc", "format=user,maxjobs")
    return next(line.split("|")[1] for line in shown.stdout.splitlines() if not line.split("|")[0])


@contextlib.asynccontextmanager
async def a_project(stack: Stack, members: dict[str, str], title: str | None = None) -> AsyncIterator[str]:
    """A project at Core with a cpu allocation; its group and Slurm account are removed afterwards."""
    async with asyncio.timeout(WAIT):
        while "cpu" not in stack.core.accounting.categories():  # noqa: ASYNC110 - the stand-in has no event for it
            await asyncio.sleep(0.2)  # the operator registers the products at start-up
    for user in members:
        await stack.core.connect(user)
    project_id = stack.core.accounting.create_project(title or f"Folding {uuid.uuid4().hex[:6]}", members)
    await stack.core.accounting.grant(Workspace.project(project_id), "cpu", 10)
    await stack.core.accounting.grant(Workspace.project(project_id), "storage", 100)
    try:
        yield project_id
    finally:
        made = project_of(stack, project_id)
        for account in made.status.accounts if made is not None else []:
            stack.frontend.run("sacctmgr", "-i", "delete", "account", account.name, check=False)
        if made is not None and made.status.group:
            stack.frontend.run("groupdel", made.status.group, check=False)
        if made is not None and made.status.drive_folder:
            stack.frontend.run("rm", "-rf", "--", made.status.drive_folder, check=False)


async def test_a_project_is_a_group_and_an_account_its_jobs_run_under_and_a_lock_stops(stack: Stack) -> None:
    async with a_project(stack, {"alice": "PI", "bob": "USER"}) as project_id:
        owner = Workspace.project(project_id)
        applied = await until(
            stack, project_id, "group and account applied",
            lambda p: is_true(p.status.conditions, reasons.ACCOUNT_READY) and len(p.status.group_members) == 2,
        )  # fmt: skip
        # Both of the bridge's conditions stand (one server-side apply drops the manager's entries it leaves out).
        assert is_true(applied.status.conditions, reasons.GROUP_READY)
        group, (account,) = applied.status.group, applied.status.accounts
        assert group is not None
        assert stack.run_as("alice", "getent", "group", group).stdout.strip().endswith(":alice,bob")
        assert slurm_users(stack, account.name) == {"alice", "bob"}

        # The project's drive: a folder root:<group> 2770 that both members write and nobody else enters,
        # registered with Core as the project's.
        drive = await until(stack, project_id, "drive registered", lambda p: p.status.drive_id is not None)
        folder = f"{project_drives_dir()}/{group}"
        assert drive.status.drive_folder == folder and is_true(drive.status.conditions, reasons.DRIVE_READY)
        assert stack.frontend.run("stat", "-c", "%U:%G %a", folder).stdout.split() == [f"root:{group}", "2770"]
        for member in ("alice", "bob"):
            stack.run_as(member, "touch", f"{folder}/{member}.txt")
        assert stack.frontend.run("stat", "-c", "%G", f"{folder}/bob.txt").stdout.strip() == group  # setgid
        assert stack.run_as("nologinuser", "ls", folder, check=False).returncode != 0
        (registered,) = stack.core.project_drives(project_id)
        assert (registered.id, registered.provider_generated_id) == (drive.status.drive_id, f"project:{group}")
        # Each change to the system is an Event on the project (kubectl describe ucp shows them).
        assert {"GroupCreated", "AccountReady", "FolderReady", "DriveRegistered"} <= told(stack, drive)
        # What the folder holds reaches Core as the project's storage usage, in whole GB.
        stack.run_as("bob", "fallocate", "-l", str(1_100_000_000), f"{folder}/data.bin")
        await stack.core.accounting.wait_for_usage(owner, "storage", lambda gb: gb == 1, timeout=WAIT)

        # A project job runs under the project's account, in a folder of the project's drive that the project's
        # group shares, and its usage reaches Core (absolute, core-hours).
        job = str(uuid.uuid4().int % 10**9)
        command = {"command": "echo $SLURM_JOB_ACCOUNT"}
        await stack.core.create_jobs(
            [stack.core.make_job(job, "bob", ("run-command", "1"), command, project=project_id)]
        )
        await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=60)
        job_folder = PurePath(folder, "ucloud-jobs", job)
        # Core's outputFolder is that folder as a UCloud path in the project's drive.
        output = {update.output_folder for update in stack.core.updates_for(job)}
        assert output == {f"/{drive.status.drive_id}/ucloud-jobs/{job}"}
        assert stack.read_file(job_folder / "stdout.txt").strip() == account.name
        assert stack.frontend.group_and_mode(job_folder) == (group, 0o2770)
        assert stack.frontend.group_and_mode(job_folder / "stdout.txt")[0] == group
        assert not stack.exists(f"/home/bob/ucloud-jobs/{job}")
        await stack.core.accounting.wait_for_usage(owner, "cpu", timeout=WAIT)

        # Locked at Core: the next job is refused with Core's words, and Slurm holds the account at MaxJobs=0.
        await stack.core.accounting.set_locked(owner, "cpu", True)
        await until(stack, project_id, "locked in Slurm", lambda p: p.status.accounts[0].locked)
        assert max_jobs(stack, account.name) == "0"
        refused = stack.core.make_job(str(uuid.uuid4().int % 10**9), "alice", ("sleep-exit", "1"), {"seconds": 1},
                                      project=project_id)  # fmt: skip
        with pytest.raises(ProviderCallError) as error:
            await stack.core.create_jobs([refused])
        assert error.value.status == 402 and "cpu" in str(error.value)

        # Unlocked: jobs run again. Bob leaves: he loses the group and the account.
        await stack.core.accounting.set_locked(owner, "cpu", False)
        await until(stack, project_id, "unlocked", lambda p: not p.status.accounts[0].locked)
        await stack.core.accounting.set_members(project_id, {"alice": "PI"})
        await until(stack, project_id, "bob removed", lambda p: p.status.group_members == ["alice"])
        assert stack.run_as("alice", "getent", "group", group).stdout.strip().endswith(":alice")
        assert slurm_users(stack, account.name) == {"alice"}
        again = str(uuid.uuid4().int % 10**9)
        await stack.core.create_jobs([stack.core.make_job(again, "alice", ("sleep-exit", "1"), {"seconds": 1},
                                                          project=project_id)])  # fmt: skip
        await stack.core.wait_for_update(again, JobState.SUCCESS, timeout=60)


async def test_an_operator_killed_mid_stream_resumes_from_its_replay_point_and_applies_nothing_twice(
    stack: Stack,
) -> None:
    async with a_project(stack, {"alice": "PI", "bob": "USER"}) as project_id:
        applied = await until(
            stack, project_id, "applied",
            lambda p: is_true(p.status.conditions, reasons.ACCOUNT_READY) and len(p.status.group_members) == 2,
        )  # fmt: skip
        await stack.kill("ucim-operator")
        # While the operator is down, bob leaves the project at Core.
        await stack.core.accounting.set_members(project_id, {"alice": "PI"})
        await stack.start("ucim-operator")
        removed = await until(stack, project_id, "bob removed", lambda p: p.status.group_members == ["alice"])
        # The restarted operator asked Core to replay from its saved point, not from the beginning, and of what
        # Core replayed only bob's leaving changed the spec: one generation more.
        replay_points = [auth.replay_from_ms for auth in stack.core.accounting.auth_frames if auth.accepted]
        assert replay_points[0] == REPLAY_EVERYTHING_MS < replay_points[-1]
        assert removed.metadata.generation == (applied.metadata.generation or 0) + 1
        account = removed.status.accounts[0].name
        assert slurm_users(stack, account) == {"alice"}


async def test_a_hostile_project_title_reaches_no_command(stack: Stack) -> None:
    canary = f"/tmp/ucim-pwned-{uuid.uuid4().hex[:8]}"  # a file nothing may create
    title = f'x"; touch {canary} #\n$(touch {canary}) `touch {canary}` \x1b[2J é ' + "x" * 900
    async with a_project(stack, {"alice": "PI"}, title=title) as project_id:
        applied = await until(
            stack, project_id, "group and account applied",
            lambda p: is_true(p.status.conditions, reasons.ACCOUNT_READY) and p.status.group_members == ["alice"],
        )  # fmt: skip
        assert applied.spec.title == title and is_true(applied.status.conditions, reasons.GROUP_READY)
        (account,) = applied.status.accounts
        shown = stack.run_as("alice", "sacctmgr", "-nP", "show", "account", account.name, "format=account,descr,org")
        assert shown.stdout.split("|")[0] == account.name
        assert not stack.exists(canary)

"""The bridge's workspace controller, with the system behind fakes: it changes only what differs, once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any, Final, cast

import pytest

from tests.support.fake_kube import FakeKube
from ucim.common import reasons
from ucim.common.conditions import find_condition, is_true
from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.resources import UCloudProject, UserConnection
from ucim.slurm_bridge.account_mapper import PatternAccountMapper
from ucim.slurm_bridge.project_folders import ProjectFolderError, ProjectFolders
from ucim.slurm_bridge.sacctmgr import AccountState, SacctmgrRefusedError
from ucim.slurm_bridge.unix_groups import GroupState, ProjectUpdate
from ucim.slurm_bridge.workspaces import WorkspaceController

NAMESPACE = "ucim"


class FakeGroups:
    def __init__(self) -> None:
        self.groups: dict[str, GroupState] = {}
        self.updates: list[ProjectUpdate] = []

    async def sync(self, update: ProjectUpdate, known: GroupState | None) -> GroupState:
        self.updates.append(update)
        name = known.name if known is not None else f"p{update.project_id[:8]}"
        state = GroupState(name, 5000, frozenset(m.local_user for m in update.members))
        self.groups[name] = state
        return state

    async def read(self, name: str) -> GroupState | None:
        return self.groups.get(name)


class FakeAccounts:
    def __init__(self) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.calls: list[tuple[str, ...]] = []
        self.snapshots = 0
        self.refuse_add = False  # the next add_users fails

    async def snapshot(self) -> dict[str, AccountState]:
        self.snapshots += 1
        return dict(self.accounts)

    async def account(self, name: str) -> AccountState | None:
        self.calls.append(("show", name))
        return self.accounts.get(name)

    async def ensure_account(self, name: str, *, description: str, organization: str) -> bool:
        self.calls.append(("create", name))
        self.accounts[name] = AccountState(name)
        return True

    async def add_users(self, name: str, users: Collection[str]) -> None:
        self.calls.append(("add", name, *users))
        if self.refuse_add:
            self.refuse_add = False
            raise SacctmgrRefusedError("adding failed", detail="slurmdbd said no")
        old = self.accounts[name]
        self.accounts[name] = AccountState(name, old.users | set(users), old.max_jobs, old.grp_tres_mins, old.fairshare)

    async def remove_users(self, name: str, users: Collection[str]) -> None:
        self.calls.append(("remove", name, *users))
        old = self.accounts[name]
        self.accounts[name] = AccountState(name, old.users - set(users), old.max_jobs, old.grp_tres_mins, old.fairshare)

    async def set_limits(self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None) -> None:
        self.calls.append(("limits", name, str(locked), str(quota_minutes)))
        old = self.accounts[name]
        tres = {"billing": quota_minutes} if quota_minutes is not None else {}
        self.accounts[name] = AccountState(name, old.users, 0 if locked else None, tres, fairshare)

    async def usage_minutes(self) -> dict[str, int]:
        return {name: 150 for name in self.accounts}


def connection(username: str, local: str, uid: int) -> UserConnection:
    return UserConnection.model_validate(
        {
            "metadata": {"name": f"local-{local}"},
            "spec": {"ucloudUsername": username, "cluster": "local", "localUser": local, "uid": uid},
        }
    )


def project(members: list[dict[str, str]], *, locked: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "ucim.io/v1alpha1",
        "kind": "UCloudProject",
        "metadata": {"name": "project-abcdef12", "generation": 1},
        "spec": {
            "workspace": {"kind": "project", "id": "abcdef12-0000"},
            "cluster": "local",
            "title": "T; rm -rf /",
            "members": members,
            "wallets": [
                {"category": "cpu", "productType": "COMPUTE", "frequency": "PERIODIC_HOUR", "quota": 10,
                 "usage": 0, "locked": locked, "updatedAt": 1},
            ],
        },
    }  # fmt: skip


@pytest.fixture
def fakes() -> tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController]:
    kube = FakeKube()
    connections: Informer[UserConnection] = Informer(cast(Kube, kube), UserConnection, NAMESPACE)
    for c in (connection("alice#1", "alice", 1101), connection("bob#2", "bob", 1102)):
        connections.objects[c.metadata.name] = c
    groups, accounts = FakeGroups(), FakeAccounts()
    controller = WorkspaceController(
        kube=cast(Kube, kube),
        namespace=NAMESPACE,
        cluster="local",
        connections=connections,
        groups=groups,
        accounts=accounts,
        names=PatternAccountMapper("#{localUsername}_#{productCategory}", "#{localGroupName}_#{productCategory}"),
    )
    return kube, groups, accounts, controller


async def stored(kube: FakeKube) -> UCloudProject:
    found = await kube.get(UCloudProject, NAMESPACE, "project-abcdef12")
    assert found is not None
    return found


async def test_a_project_gets_its_group_and_account_once(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, groups, accounts, controller = fakes
    members = [
        {"username": "alice#1", "role": "PI"},
        {"username": "bob#2", "role": "USER"},
        {"username": "carol#3", "role": "USER"},
    ]
    await kube.create(UCloudProject.model_validate(project(members)), NAMESPACE)
    await controller.reconcile(await stored(kube), await accounts.snapshot())
    applied = await stored(kube)
    assert (applied.status.group, applied.status.group_members) == ("pabcdef12", ["alice", "bob"])
    assert [(a.name, a.users, a.quota_minutes) for a in applied.status.accounts] == [
        ("pabcdef12_cpu", ["alice", "bob"], 600)
    ]
    # The limits come before the members: the account is never unlimited for them.
    assert accounts.calls == [
        ("create", "pabcdef12_cpu"),
        ("limits", "pabcdef12_cpu", "False", "600"),
        ("add", "pabcdef12_cpu", "alice", "bob"),
    ]
    ready = find_condition(applied.status.conditions, reasons.ACCOUNT_READY)
    assert ready is not None and ready.status == "True"
    told = [e["reason"] for (plural, _, _), e in kube.objects.items() if plural == "events"]
    assert sorted(told) == ["AccountQuotaSet", "AccountReady", "AccountUsersChanged", "GroupCreated",
                            "GroupMembersChanged"]  # fmt: skip
    # Carol has not connected: she is not in the group yet. The title went nowhere near a command.
    assert [m.local_user for m in groups.updates[0].members] == ["alice", "bob"]

    # The same pass again (a replayed event, a restart) changes nothing anywhere.
    version = applied.metadata.resource_version
    await controller.reconcile(applied, await accounts.snapshot())
    assert len(accounts.calls) == 3 and len(groups.updates) == 1
    assert (await stored(kube)).metadata.resource_version == version


async def test_a_lock_and_a_member_leaving_change_only_that(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, groups, accounts, controller = fakes
    both = [{"username": "alice#1", "role": "PI"}, {"username": "bob#2", "role": "USER"}]
    await kube.create(UCloudProject.model_validate(project(both)), NAMESPACE)
    await controller.reconcile(await stored(kube), await accounts.snapshot())
    accounts.calls.clear()
    await kube.patch(UCloudProject, NAMESPACE, "project-abcdef12", {"spec": project(
        [{"username": "alice#1", "role": "PI"}], locked=True)["spec"]})  # fmt: skip
    await controller.reconcile(await stored(kube), await accounts.snapshot())
    assert accounts.calls == [("limits", "pabcdef12_cpu", "True", "600"), ("remove", "pabcdef12_cpu", "bob")]
    removed = groups.updates[-1].removed
    assert [(m.local_user, m.role) for m in removed] == [("bob", None)]
    applied = await stored(kube)
    assert applied.status.accounts[0].locked and applied.status.group_members == ["alice"]


async def test_usage_is_written_in_the_wallets_unit_only_when_it_changed(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, _, accounts, controller = fakes
    await kube.create(UCloudProject.model_validate(project([{"username": "alice#1", "role": "PI"}])), NAMESPACE)
    await controller.reconcile(await stored(kube), await accounts.snapshot())
    controller.projects.objects["project-abcdef12"] = await stored(kube)
    assert await controller.measure() == 1
    assert [(u.category, u.usage) for u in (await stored(kube)).status.usage] == [("cpu", 2)]  # 150 min: 2 core-hours
    controller.projects.objects["project-abcdef12"] = await stored(kube)
    assert await controller.measure() == 0


async def test_a_project_gets_its_folder_with_its_group_and_a_failure_is_said_and_retried(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController], tmp_path: Path
) -> None:
    kube, _, accounts, controller = fakes
    controller.folders = ProjectFolders(f"{tmp_path}/{{name}}")
    (tmp_path / "pabcdef12").write_text("")  # something else where the folder goes
    await kube.create(UCloudProject.model_validate(project([{"username": "alice#1", "role": "PI"}])), NAMESPACE)
    with pytest.raises(ProjectFolderError):
        await controller.reconcile(await stored(kube), await accounts.snapshot())
    failed = await stored(kube)
    drive = find_condition(failed.status.conditions, reasons.DRIVE_READY)
    assert drive is not None and (drive.status, drive.reason) == ("False", reasons.FOLDER_FAILED)
    assert "is not a folder" in drive.message and failed.status.drive_folder is None
    # The accounts were applied all the same: a folder problem does not stop jobs.
    assert is_true(failed.status.conditions, reasons.ACCOUNT_READY)

    (tmp_path / "pabcdef12").unlink()
    await controller.reconcile(failed, await accounts.snapshot())
    made = await stored(kube)
    assert made.status.drive_folder == str(tmp_path / "pabcdef12") and (tmp_path / "pabcdef12").is_dir()
    assert is_true(made.status.conditions, reasons.DRIVE_READY)
    assert is_true(made.status.conditions, reasons.GROUP_READY)


async def test_storage_is_measured_from_the_drive_and_reported_in_whole_gb(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController], tmp_path: Path
) -> None:
    kube, _, accounts, controller = fakes
    controller.folders = ProjectFolders(f"{tmp_path}/{{name}}")
    body = project([{"username": "alice#1", "role": "PI"}])
    body["spec"]["wallets"].append({"category": "storage", "productType": "STORAGE", "frequency": "ONCE",
                                    "quota": 100, "usage": 0, "locked": False, "updatedAt": 1})  # fmt: skip
    await kube.create(UCloudProject.model_validate(body), NAMESPACE)
    await controller.reconcile(await stored(kube), await accounts.snapshot())
    applied = controller.projects.objects["project-abcdef12"] = await stored(kube)
    assert applied.status.drive_folder is not None
    (Path(applied.status.drive_folder) / "data").write_bytes(b"x" * 100_000)
    controller.projects.synced.set()
    assert await controller.measure_storage() == 1
    assert controller.storage_bytes["project-abcdef12"] >= 100_000

    controller.storage_bytes["project-abcdef12"] = 3 * 10**9 + 999  # a part of a GB is not charged
    await controller.measure()
    assert {u.category: u.usage for u in (await stored(kube)).status.usage} == {"cpu": 2, "storage": 3}


# --- the loop: what it reads and when ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def looping(controller: WorkspaceController) -> AsyncIterator[None]:
    """The reconcile loop runs in the block, its informers taken as synced (their caches are set by the test)."""
    controller.projects.synced.set()
    controller.connections.synced.set()
    # The loop alone: no watches, the caches are the test's.
    task = asyncio.create_task(controller._reconcile_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(what: str, check: Callable[[], bool]) -> None:
    try:
        async with asyncio.timeout(5):
            while not check():  # noqa: ASYNC110 - the fakes have no event to wait for
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within 5 s: {what}") from None


async def applied(kube: FakeKube, controller: WorkspaceController, users: set[str], quota: int) -> None:
    """Until the fake Slurm holds the account with ``users`` and ``quota`` and the status says so; then the
    informer's cache gets the stored workspace, as its watch would."""
    slurm = cast(FakeAccounts, controller.accounts)
    async with asyncio.timeout(5):
        while True:
            state = slurm.accounts.get("pabcdef12_cpu")
            found = await stored(kube)
            in_slurm = state is not None and (set(state.users), state.quota_minutes) == (users, quota)
            in_status = [(set(a.users), a.quota_minutes) for a in found.status.accounts] == [(users, quota)]
            if in_slurm and in_status:
                break
            await asyncio.sleep(0.01)
    controller.projects.objects["project-abcdef12"] = found


# alice (PI) and bob, both connected.
BOTH: Final = ({"username": "alice#1", "role": "PI"}, {"username": "bob#2", "role": "USER"})


async def watched_project(kube: FakeKube, controller: WorkspaceController) -> None:
    """alice's and bob's project, created and in the controller's informer cache, as a watch would put it."""
    created = await kube.create(UCloudProject.model_validate(project(list(BOTH))), NAMESPACE)
    controller.projects.objects["project-abcdef12"] = created


async def changed_at_core(kube: FakeKube, controller: WorkspaceController, quota: int) -> None:
    spec = project(list(BOTH))["spec"]
    spec["wallets"][0]["quota"] = quota
    await kube.patch(UCloudProject, NAMESPACE, "project-abcdef12", {"spec": spec})
    controller.projects.objects["project-abcdef12"] = await stored(kube)
    controller.mark("project-abcdef12")


async def test_passes_diff_against_the_view_and_read_all_accounts_only_at_the_start(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, _, accounts, controller = fakes
    await watched_project(kube, controller)
    async with looping(controller):
        controller.mark("project-abcdef12")
        await applied(kube, controller, {"alice", "bob"}, 600)
        for quota in (20, 30, 40):
            await changed_at_core(kube, controller, quota)
            await applied(kube, controller, {"alice", "bob"}, quota * 60)
    assert accounts.snapshots == 1
    assert [c[0] for c in accounts.calls] == ["create", "limits", "add", "limits", "limits", "limits"]


async def test_a_change_by_hand_is_found_by_the_next_resync_and_repaired(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, _, accounts, controller = fakes
    controller.view.resync_seconds = 0.05
    await watched_project(kube, controller)
    async with looping(controller):
        controller.mark("project-abcdef12")
        await applied(kube, controller, {"alice", "bob"}, 600)
        # An admin takes bob out and lifts the quota; nothing at Core changed, nobody marks the workspace.
        accounts.accounts["pabcdef12_cpu"] = AccountState("pabcdef12_cpu", frozenset({"alice"}), None, {}, 1)
        await applied(kube, controller, {"alice", "bob"}, 600)
    assert accounts.snapshots >= 2
    assert accounts.calls[-2:] == [("limits", "pabcdef12_cpu", "False", "600"), ("add", "pabcdef12_cpu", "bob")]


async def test_a_failed_change_makes_the_next_pass_read_all_accounts_first(
    fakes: tuple[FakeKube, FakeGroups, FakeAccounts, WorkspaceController],
) -> None:
    kube, _, accounts, controller = fakes
    await watched_project(kube, controller)
    accounts.refuse_add = True
    async with looping(controller):
        controller.mark("project-abcdef12")
        await until("the add refused", lambda: ("add", "pabcdef12_cpu", "alice", "bob") in accounts.calls)
        assert accounts.snapshots == 1
        controller.mark("project-abcdef12")  # sooner than its backoff
        await applied(kube, controller, {"alice", "bob"}, 600)
    assert accounts.snapshots == 2

"""The bridge's workspace controller: each UCloudProject's Unix group and Slurm accounts, as its spec says.

The operator writes a workspace's spec from Core's event stream; this makes the frontend
match it, level-triggered, as a controller does:

* it learns of changes by watching (UCloudProjects of its cluster, and the connections,
  since a member who connects must join the group and the accounts);
* each pass compares what the spec wants with what the system holds (the group as the
  status recorded it; the accounts as the :class:`~ucim.slurm_bridge.accounts_view.AccountsView`
  holds them: one ``sacctmgr`` listing of all, read at the start and every ``resync_seconds``,
  kept up to date with what the controller changed) and changes only the difference, so a
  pass repeated after a crash or a replayed event changes nothing; an account found changed
  by that periodic read (by hand, say) has its workspace reconciled again;
* what it applied goes to the status (group, gid, members, accounts) with the conditions
  GroupReady and AccountReady; a failed pass is tried again with the one backoff.

Usage is measured here too, every ``usage_interval_seconds``: one ``sshare`` call for all
accounts, converted to each wallet's unit, written to ``status.usage`` when it changed
(the operator reports it to Core). Slurm's usage is cumulative (``PriorityDecayHalfLife=0``,
no reset), so each figure is absolute and a restart can never count anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pwd
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from ucim.common import reasons
from ucim.common.conditions import ConditionUpdate, find_condition
from ucim.common.connections import has_ended
from ucim.common.events import post_event
from ucim.common.informer import Change, Informer
from ucim.common.kube import Kube, NotFoundError
from ucim.common.resources import SlurmAccount, UCloudProject, UCloudProjectStatus, UserConnection, cluster_selector
from ucim.common.retry import delay_after
from ucim.common.times import now_utc
from ucim.slurm_bridge.account_mapper import AccountMapper, ProjectWorkspace, UserWorkspace
from ucim.slurm_bridge.accounts_view import Accounts, AccountsView
from ucim.slurm_bridge.project_folders import ProjectFolderError, ProjectFolders
from ucim.slurm_bridge.sacctmgr import AccountState
from ucim.slurm_bridge.storage_usage import StorageMeasureError, allocated_bytes
from ucim.slurm_bridge.unix_groups import GroupState, Member, ProjectUpdate, Role, UnixGroups, members_changed
from ucim.slurm_bridge.workspace_plan import (
    WantedAccount,
    applied_changes,
    compute_wallets,
    local_members,
    measured_usage,
    projects_of,
    storage_wallets,
    wanted_account,
)

log = logging.getLogger(__name__)

EVENT_CONTROLLER = "ucim.io/bridge"

# Usage status writes in flight at once in a usage cycle.
USAGE_WRITES_IN_FLIGHT = 16

PASSES = Counter("ucim_workspace_passes_total", "Workspace reconcile passes, by result (ok, failed).", ["result"])
for _result in ("ok", "failed"):
    PASSES.labels(result=_result)  # every series from the start, so rate() sees the first pass
USAGE_CYCLE_SECONDS = Histogram(
    "ucim_usage_cycle_seconds",
    "One usage cycle: one sshare call and the status writes of the workspaces whose usage changed.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STORAGE_CYCLE_SECONDS = Histogram(
    "ucim_storage_cycle_seconds",
    "One storage cycle: du of every drive whose workspace has a storage wallet.",
    buckets=(0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0),
)


class WorkspaceController:
    def __init__(
        self,
        *,
        kube: Kube,
        namespace: str,
        cluster: str,
        connections: Informer[UserConnection],
        groups: UnixGroups,
        accounts: Accounts,
        names: AccountMapper,
        folders: ProjectFolders | None = None,
        usage_interval_seconds: float = 30.0,
        storage_interval_seconds: float = 300.0,
        resync_seconds: float = 600.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.kube, self.namespace = kube, namespace
        self.connections = connections
        self.groups, self.accounts, self.names = groups, accounts, names
        # None: the site has no project folders (no drive_roots["project"] for the instances).
        self.folders = folders
        # What the passes diff against and change Slurm through (all accounts are read every resync_seconds).
        self.view = AccountsView(accounts, resync_seconds=resync_seconds)
        self.usage_interval_seconds = usage_interval_seconds
        self.storage_interval_seconds = storage_interval_seconds
        # Bytes each workspace's drive held when last measured (by workspace name): the usage cycle reads them.
        self.storage_bytes: dict[str, int] = {}
        self.projects = Informer(
            kube,
            UCloudProject,
            namespace,
            label_selector=cluster_selector(cluster),
            on_event=self.on_project,
            watch_timeout_seconds=watch_timeout_seconds,
        )
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._snapshot_failures = 0
        # Told which local users joined or left a group: their running instances need the new groups.
        self.on_groups_changed: Callable[[frozenset[str]], None] | None = None

    # --- learning of changes --------------------------------------------------------

    def on_project(self, change: Change, project: UCloudProject) -> None:
        if change != "DELETED":
            self.mark(project.metadata.name)

    def on_connection(self, change: Change, connection: UserConnection) -> None:
        """A member who connects (or is mapped, or expires) changes the groups and accounts of their workspaces."""
        for name in projects_of(self.projects.objects.values(), connection.spec.ucloud_username):
            self.mark(name)

    def mark(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    # --- the loops --------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.projects.run())
            tasks.create_task(self._reconcile_forever())
            tasks.create_task(self._measure_forever())
            tasks.create_task(self._measure_storage_forever())

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.projects.synced.wait()
            await self.connections.synced.wait()
            names, self._dirty = self._dirty, set()
            if self.view.resync_due():
                try:
                    drifted = await self.view.resync()
                except Exception:
                    # slurmdbd away, say: the bridge goes on serving; these workspaces are tried again later.
                    self._snapshot_failures += 1
                    delay = delay_after(self._snapshot_failures, first=1.0, cap=60.0)
                    log.exception("Slurm's accounts cannot be read; again in %.0f s", delay)
                    self._dirty |= names
                    asyncio.get_running_loop().call_later(delay, self._wake.set)
                    continue
                self._snapshot_failures = 0
                names |= self._drifted(drifted)
                if self.view.resync_seconds > 0:
                    # Slurm cannot be watched: the loop wakes for the next read even when nothing else happens.
                    asyncio.get_running_loop().call_later(self.view.resync_seconds, self._wake.set)
            for name in sorted(names):
                project = self.projects.get(name)
                if project is not None:
                    await self._reconcile_logged(project, self.view)

    def _drifted(self, accounts: Collection[str]) -> set[str]:
        """The workspaces whose recorded accounts are among ``accounts`` (found changed by a resync), told."""
        if not accounts:
            return set()
        names = {
            p.metadata.name
            for p in self.projects.objects.values()
            if any(a.name in accounts for a in p.status.accounts)
        }
        log.info(
            "Slurm accounts changed outside the bridge; their workspaces are reconciled again",
            extra={"accounts": sorted(accounts)[:20], "changed": len(accounts), "workspaces": len(names)},
        )
        return names

    async def _reconcile_logged(self, project: UCloudProject, snapshot: Mapping[str, AccountState]) -> None:
        name = project.metadata.name
        try:
            await self.reconcile(project, snapshot)
        except Exception:
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            delay = delay_after(failures, first=1.0, cap=300.0)
            PASSES.labels(result="failed").inc()
            log.exception("workspace not applied; again in %.0f s", delay, extra={"ucloudproject": name})
            asyncio.get_running_loop().call_later(delay, self.mark, name)
        else:
            self._failures.pop(name, None)
            PASSES.labels(result="ok").inc()

    # --- one pass -----------------------------------------------------------------------

    def connected(self) -> dict[str, UserConnection]:
        """The connections that are mapped and not expired, by UCloud username."""
        now = now_utc()
        return {
            c.spec.ucloud_username: c
            for c in self.connections.objects.values()
            if c.spec.local_user is not None and c.spec.uid is not None and not has_ended(c, now)
        }

    async def reconcile(self, project: UCloudProject, snapshot: Mapping[str, AccountState]) -> None:
        connected = self.connected()
        members = local_members(project, {u: c.spec.local_user or "" for u, c in connected.items()})
        status: dict[str, Any] = {}
        conditions: list[ConditionUpdate] = []
        group: GroupState | None = None
        owner: UserConnection | None = None
        if project.spec.workspace.kind == "project":
            group = await self._apply_group(project, connected)
            status |= {"group": group.name, "gid": group.gid, "groupMembers": sorted(group.members)}
            why = f"group {group.name} ({group.gid}) holds {len(group.members)} members"
            conditions.append((reasons.GROUP_READY, "True", reasons.GROUP_APPLIED, why))
            if self.folders is not None:
                folder, drive = await _apply_folder(self.folders, group)
                status |= folder
                conditions.append(drive)
        else:
            owner = connected.get(project.spec.workspace.id)
            if owner is None:
                # A personal workspace's account is named after its local user: nothing to do until they connect.
                why = f"{project.spec.workspace.id} has not connected to this provider"
                await self._conditions(project, [(reasons.ACCOUNT_READY, "False", reasons.OWNER_NOT_CONNECTED, why)])
                return
        accounts: list[SlurmAccount] = []
        for wallet in compute_wallets(project):
            wanted = wanted_account(wallet, members)
            name = await self._account_name(project, wallet.category, owner=owner, group=group)
            accounts.append(await self._apply_account(name, wanted, snapshot.get(name), project.spec.workspace.id))
        status["accounts"] = [a.to_dict() for a in accounts]
        await self._write_status(project, status)
        why = ", ".join(f"{a.name} ({len(a.users)} users{', locked' if a.locked else ''})" for a in accounts)
        conditions.append((reasons.ACCOUNT_READY, "True", reasons.ACCOUNTS_APPLIED, why or "no compute"))
        await self._conditions(project, conditions)
        failed = next((c for c in conditions if c[2] == reasons.FOLDER_FAILED), None)
        if failed is not None:
            raise ProjectFolderError(failed[3])  # said in the status; the pass is tried again

    async def _apply_group(self, project: UCloudProject, connected: Mapping[str, UserConnection]) -> GroupState:
        """The project's group with exactly its connected members; the policy is asked only when that changes."""
        status = project.status
        known = None
        if status.group is not None and status.gid is not None:
            known = GroupState(status.group, status.gid, frozenset(status.group_members))
        members = tuple(
            _member(connection, m.role) for m in project.spec.members if (connection := connected.get(m.username))
        )
        wanted = frozenset(m.local_user for m in members)
        if known is not None and known.members == wanted:
            return known
        recorded = known.members if known is not None else frozenset()
        update = ProjectUpdate(
            project_id=project.spec.workspace.id,
            title=project.spec.title or "",
            members=members,
            added=tuple(m for m in members if m.local_user not in recorded),
            removed=tuple(self._former_member(local) for local in sorted(recorded - wanted)),
        )
        group = await self.groups.sync(update, known)
        changed = members_changed(known, group)
        if changed and self.on_groups_changed is not None:
            self.on_groups_changed(changed)
        return group

    def _former_member(self, local_user: str) -> Member:
        """A member who left (or whose connection ended), as the site script is told of them: without a role."""
        connection = next((c for c in self.connections.objects.values() if c.spec.local_user == local_user), None)
        if connection is not None and connection.spec.uid is not None:
            return Member(connection.spec.ucloud_username, local_user, connection.spec.uid)
        return Member("", local_user, pwd.getpwnam(local_user).pw_uid)

    async def _account_name(
        self, project: UCloudProject, category: str, *, owner: UserConnection | None, group: GroupState | None
    ) -> str:
        """The account recorded for the category, else the mapper's: a name once given is kept."""
        recorded = project.account(category)
        if recorded is not None:
            return recorded.name
        if group is not None:
            workspace = ProjectWorkspace(group.name, group.gid, project.spec.workspace.id)
            return await self.names.account(workspace, category)
        if owner is None or owner.spec.local_user is None or owner.spec.uid is None:
            raise ValueError(f"{project.spec.workspace.id} is not connected: a personal account needs its user")
        return await self.names.account(UserWorkspace(owner.spec.local_user, owner.spec.uid), category)

    async def _apply_account(
        self, name: str, wanted: WantedAccount, current: AccountState | None, organization: str
    ) -> SlurmAccount:
        """Make Slurm account ``name`` hold ``wanted``'s users and limits, changing only what differs."""
        if current is None:
            description = f"UCloud {wanted.category}"
            current = await self.view.ensure_account(name, description=description, organization=organization)
        # Limits first: a new account, or a lock that came with new members, is never unlimited for them meanwhile.
        limits = (0 if wanted.locked else None, wanted.quota_minutes, wanted.fairshare)
        if (current.max_jobs, current.quota_minutes, current.fairshare) != limits:
            await self.view.set_limits(
                name, locked=wanted.locked, quota_minutes=wanted.quota_minutes, fairshare=wanted.fairshare
            )
        users = current.users
        if wanted.users - users:
            await self.view.add_users(name, sorted(wanted.users - users))
        if users - wanted.users:
            await self.view.remove_users(name, sorted(users - wanted.users))
        return SlurmAccount(
            category=wanted.category,
            name=name,
            users=sorted(wanted.users),
            locked=wanted.locked,
            quota_minutes=wanted.quota_minutes,
        )

    async def _write_status(self, project: UCloudProject, status: dict[str, Any]) -> None:
        """Write what the pass applied, and tell what it changed in Events."""
        status["observedGeneration"] = project.metadata.generation
        current = project.status.to_dict()
        if all(current.get(key) == value for key, value in status.items()):
            return
        try:
            await self.kube.patch_status(UCloudProject, self.namespace, project.metadata.name, status)
        except NotFoundError:
            log.info("workspace deleted while applied", extra={"ucloudproject": project.metadata.name})
            return
        after = UCloudProjectStatus.model_validate(current | status)
        for reason, note in applied_changes(project.status, after):
            await post_event(self.kube, project, reason=reason, note=note, controller=EVENT_CONTROLLER)

    async def _conditions(self, project: UCloudProject, conditions: list[ConditionUpdate]) -> None:
        """Apply the bridge's conditions, all of them at once (an apply drops the manager's entries it leaves out)."""
        unchanged = all(
            (c := find_condition(project.status.conditions, type_)) is not None
            and (c.status, c.reason, c.message) == (status, reason, message)
            for type_, status, reason, message in conditions
        )
        if unchanged:
            return
        await self.kube.apply_conditions(
            UCloudProject,
            self.namespace,
            project.metadata.name,
            project.status.conditions,
            conditions,
            observed_generation=project.metadata.generation,
        )

    # --- usage -----------------------------------------------------------------------------

    async def _measure_forever(self) -> None:
        while True:
            await asyncio.sleep(self.usage_interval_seconds)
            try:
                with USAGE_CYCLE_SECONDS.time():
                    await self.measure()
            except Exception:
                log.exception("usage not measured; again in %.0f s", self.usage_interval_seconds)

    async def measure(self) -> int:
        """One usage cycle: ``status.usage`` of every workspace whose usage changed; how many were written."""
        minutes = await self.accounts.usage_minutes()
        changed: list[tuple[str, list[dict[str, Any]]]] = []
        for project in list(self.projects.objects.values()):
            accounts = {a.category: a.name for a in project.status.accounts}
            stored = self.storage_bytes.get(project.metadata.name)
            usage = [u.to_dict() for u in measured_usage(project, accounts, minutes, stored)]
            if usage != [u.to_dict() for u in project.status.usage]:
                changed.append((project.metadata.name, usage))
        # One write takes ~7 ms: in a row, 10,000 changed workspaces took 57 s, twice the cycle (bench_accounting).
        limit = asyncio.Semaphore(USAGE_WRITES_IN_FLIGHT)

        async def write(name: str, usage: list[dict[str, Any]]) -> None:
            async with limit:
                with contextlib.suppress(NotFoundError):
                    await self.kube.patch_status(UCloudProject, self.namespace, name, {"usage": usage})

        await asyncio.gather(*(write(name, usage) for name, usage in changed))
        return len(changed)

    async def _measure_storage_forever(self) -> None:
        while True:
            try:
                with STORAGE_CYCLE_SECONDS.time():
                    await self.measure_storage()
            except Exception:
                log.exception("storage not measured; again in %.0f s", self.storage_interval_seconds)
            await asyncio.sleep(self.storage_interval_seconds)

    async def measure_storage(self) -> int:
        """Measure the drive of every workspace with a storage wallet, one at a time; how many were measured."""
        await self.projects.synced.wait()
        measured, connected = 0, self.connected()
        for project in list(self.projects.objects.values()):
            folder = drive_folder(project, connected) if storage_wallets(project) else None
            if folder is None:
                continue
            try:
                self.storage_bytes[project.metadata.name] = await allocated_bytes(folder)
            except StorageMeasureError:
                log.exception("storage not measured", extra={"ucloudproject": project.metadata.name})
                continue
            measured += 1
        return measured


def _member(connection: UserConnection, role: Role) -> Member:
    spec = connection.spec
    return Member(spec.ucloud_username, spec.local_user or "", spec.uid or 0, role)


async def _apply_folder(folders: ProjectFolders, group: GroupState) -> tuple[dict[str, Any], ConditionUpdate]:
    """The project's folder (made if missing) for the status, and its DriveReady condition."""
    try:
        path = await folders.ensure(group.name, group.gid)
    except ProjectFolderError as error:
        return {}, (reasons.DRIVE_READY, "False", reasons.FOLDER_FAILED, str(error))
    why = f"{path} is the folder of group {group.name}"
    return {"driveFolder": str(path)}, (reasons.DRIVE_READY, "True", reasons.FOLDER_READY, why)


def drive_folder(project: UCloudProject, connected: Mapping[str, UserConnection]) -> Path | None:
    """The folder a workspace's storage is: the project's folder, or the home of the connected owner."""
    if project.spec.workspace.kind == "project":
        return Path(project.status.drive_folder) if project.status.drive_folder else None
    owner = connected.get(project.spec.workspace.id)
    if owner is None or owner.spec.local_user is None:
        return None
    try:
        return Path(pwd.getpwnam(owner.spec.local_user).pw_dir)
    except KeyError:
        return None

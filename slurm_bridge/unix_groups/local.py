"""The ``local`` group policy: groupadd and gpasswd on this frontend, which the test bed uses.

Is it ours?
===========
Unix groups carry no comment or owner, so a group is this project's only when the status recorded it:
``known`` (name and gid, written by the caller after the first ensure) must match a group now in the
database, name and gid both. Without a record, every group that exists is someone else's, never adopted:
taking over a same-named group would hand the project's members that group's files. The pattern's name
(``p94056ba8``) taken, the next of ``p94056ba8-1`` ... ``-99`` that is free is created, with a warning.

* recorded name and gid both present together: ours, used as it is;
* the recorded group vanished altogether (neither name nor gid in use): created again with the recorded
  name and gid, so the project's files, which carry the gid, are its own again;
* the recorded name now has another gid, or the recorded gid another name: GroupError. Someone changed
  the group by hand; guessing could give the project another group's files, so an administrator decides.

The window this leaves: a bridge that dies between ``groupadd`` and the status write has made a group
it does not know (empty: members are set only after the record). The next try sees the name taken and
creates ``-1``; the warning names the orphan, which an administrator may delete.

Writes (groupadd, gpasswd) go one at a time (one LocalGroups per bridge): the shadow tools fail, rather
than wait, when another holds the lock on /etc/group. Reads assume NSS sees /etc/group changes at once
(files; nscd and sssd do with their default file checks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from ucim.slurm_bridge.unix_groups import database
from ucim.slurm_bridge.unix_groups.metrics import count_changes, failures_counted
from ucim.slurm_bridge.unix_groups.model import GroupError, GroupState, ProjectUpdate
from ucim.slurm_bridge.unix_groups.names import candidates, check_local_name, group_name
from ucim.slurm_bridge.unix_groups.settings import GroupSettings

log = logging.getLogger(__name__)


class LocalGroups:
    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        self._timeout = settings.command_timeout_seconds
        self._writes = asyncio.Lock()

    async def sync(self, update: ProjectUpdate, known: GroupState | None) -> GroupState:
        """The project's group, made if needed, with exactly its connected members."""
        with failures_counted("set_members"):
            # Every name is checked before the first command: a bad member must not leave a new empty group.
            members = [check_local_name(member.local_user, "the member") for member in update.members]
        suggested = group_name(self.settings.name_pattern, update.project_id)
        group = await self.ensure_group(update.project_id, suggested_name=suggested, known=known)
        return await self.set_members(group, members)

    async def ensure_group(self, project_id: str, *, suggested_name: str, known: GroupState | None) -> GroupState:
        """The recorded group if it is still ours; else a new one (see the module's docstring)."""
        with failures_counted("ensure"):
            check_local_name(suggested_name, "the suggested group name")
            if known is not None:
                return await self._recorded(project_id, known)
            return await self._create(project_id, suggested_name)

    async def set_members(self, group: GroupState, members: Collection[str]) -> GroupState:
        """Make the member list exactly ``members`` (one gpasswd; none is allowed) and read it back."""
        with failures_counted("set_members"):
            if isinstance(members, str):
                raise GroupError("the members must be a collection of names, not one string")
            check_local_name(group.name, "the group name")
            wanted = frozenset(check_local_name(member, "the member") for member in members)
            before = await self._ours(group)
            if before.members == wanted:
                return before
            async with self._writes:
                await database.set_member_list(group.name, sorted(wanted), self._timeout)
            after = await self._read_back(group.name)
            count_changes("member_added", len(after.members - before.members))
            count_changes("member_removed", len(before.members - after.members))
            if after.members != wanted:
                log.warning(
                    "the group's members differ from those just set (NSS lags behind /etc/group?)",
                    extra={"group": group.name, "members": sorted(after.members), "wanted": sorted(wanted)},
                )
            return after

    async def read(self, name: str) -> GroupState | None:
        with failures_counted("read"):
            return await database.by_name(name, self._timeout)

    async def _recorded(self, project_id: str, known: GroupState) -> GroupState:
        check_local_name(known.name, "the recorded group name")
        found = await database.by_name(known.name, self._timeout)
        if found is not None and found.gid == known.gid:
            return found
        if found is not None:
            raise GroupError(
                f"group {known.name} of project {project_id} now has gid {found.gid}, not the recorded {known.gid}:"
                " it was changed by hand; an administrator must restore it or clear the record"
            )
        holder = await database.by_gid(known.gid, self._timeout)
        if holder is not None:
            raise GroupError(
                f"gid {known.gid} of project {project_id}'s group {known.name} now belongs to group {holder.name!r}:"
                " it was changed by hand; an administrator must restore it or clear the record"
            )
        log.warning(
            "the project's group is gone: creating it again with its recorded name and gid",
            extra={"project": project_id, "group": known.name, "gid": known.gid},
        )
        async with self._writes:
            await database.add_group(known.name, self._timeout, gid=known.gid)
        count_changes("created")
        return await self._read_back(known.name)

    async def _create(self, project_id: str, suggested_name: str) -> GroupState:
        for name in candidates(suggested_name):
            if (taken := await database.by_name(name, self._timeout)) is not None:
                log.warning(
                    "a group of that name exists and is not recorded as the project's: trying the next name",
                    extra={"project": project_id, "group": name, "gid": taken.gid},
                )
                continue
            try:
                async with self._writes:
                    await database.add_group(name, self._timeout, gid_range=self.settings.gid_range)
            except database.GroupExistsError:
                continue  # made by someone else since we looked
            count_changes("created")
            group = await self._read_back(name)
            log.info("project group created", extra={"project": project_id, "group": name, "gid": group.gid})
            return group
        raise GroupError(f"no free group name for project {project_id}: {suggested_name} and its suffixes are taken")

    async def _ours(self, group: GroupState) -> GroupState:
        found = await database.by_name(group.name, self._timeout)
        if found is None:
            raise GroupError(f"group {group.name} does not exist")
        if found.gid != group.gid:
            raise GroupError(f"group {group.name} has gid {found.gid}, not {group.gid}: it is not the project's group")
        return found

    async def _read_back(self, name: str) -> GroupState:
        found = await database.by_name(name, self._timeout)
        if found is None:
            raise GroupError(f"group {name} was just written but getent does not show it (an NSS cache?)")
        return found

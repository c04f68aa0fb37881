"""What the group policies take and give: a project's connected members in, a Unix group out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["PI", "ADMIN", "USER"]


class GroupError(Exception):
    """A project's group could not be made or read; the message says why, in the tool's own words."""


@dataclass(frozen=True, slots=True)
class GroupState:
    """A Unix group as the group database has it (``getent group``), or as a status recorded it."""

    name: str
    gid: int
    members: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Member:
    """A project member with a local account (members who have not connected are left out by the caller)."""

    ucloud_username: str
    local_user: str
    uid: int
    role: Role | None = None


@dataclass(frozen=True, slots=True)
class ProjectUpdate:
    """One project event: its connected members now, and who joined or left since the last one.

    ``members`` is the whole truth (the ``local`` policy makes the group exactly that); ``added`` and
    ``removed`` are for the site script only, as UCloud/IM's ``onProjectUpdated`` has them.
    """

    project_id: str
    title: str
    members: tuple[Member, ...]
    added: tuple[Member, ...] = ()
    removed: tuple[Member, ...] = ()


class UnixGroups(Protocol):
    """A group policy: ``local`` (groupadd and gpasswd here) or ``script`` (the site's onProjectUpdated)."""

    async def sync(self, update: ProjectUpdate, known: GroupState | None) -> GroupState:
        """The project's group with its members brought up to date; ``known`` is what the status recorded."""
        ...

    async def read(self, name: str) -> GroupState | None:
        """The group ``name`` as ``getent`` has it now, or None."""
        ...


def members_changed(old: GroupState | None, new: GroupState) -> frozenset[str]:
    """The local users whose running processes hold a stale group list after ``old`` became ``new``.

    A process gets its supplementary groups when it starts (the fork server's setgroups from
    getgrouplist) and keeps them: users who joined lack the group, users who left still have it,
    until their user instance is restarted. A different gid changes everyone's list, in either group.
    """
    if old is None:
        return new.members
    if old.gid != new.gid:
        return old.members | new.members
    return old.members ^ new.members

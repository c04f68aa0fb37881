"""UCloud projects as Unix groups on the frontend: one group per project, its members the local users of the
project's connected members (PROTOCOL-ACCOUNTING §3.3, §3.4).

Two policies behind :class:`UnixGroups`, chosen with ``GroupSettings.policy``:

``local`` (:mod:`.local`, the test bed's)
    ``groupadd`` names the group by ``name_pattern`` (default ``p{id8}``: ``p`` and the first 8 hex digits
    of the project id), with a gid from ``gid_min``..``gid_max`` when set; ``gpasswd -M`` makes its member
    list exactly the connected members. A group is the project's only when the recorded name and gid match;
    collisions take a ``-1`` ... ``-99`` suffix (the module says why and what is left open).
``script`` (:mod:`.script`)
    The site's ``onProjectUpdated``, with UCloud/IM's JSON request, answering ``{"gid": N}``.

Whatever the policy, each group name and member passes ``LOCAL_NAME`` (:mod:`ucim.common.drives`) before a
command runs, and commands are argv lists, never a shell: project titles and UCloud usernames only ever go
into the script's JSON file.

Running processes and a changed group
=====================================
A process gets its supplementary groups once, when it starts (the fork server's ``setgroups`` from the
account's ``getgrouplist``, looked up again at every spawn). A running user instance therefore neither
gains a group its user just joined nor loses one its user just left: until it is restarted, a new member
cannot reach the project's files, and a removed member still can. :func:`members_changed` names the users
whose instances the caller should restart (both kinds: UCloud/IM restarts only the added ones). Slurm jobs
resolve their groups when they start, on the node.
"""

from __future__ import annotations

from ucim.slurm_bridge.unix_groups.local import LocalGroups
from ucim.slurm_bridge.unix_groups.model import (
    GroupError,
    GroupState,
    Member,
    ProjectUpdate,
    Role,
    UnixGroups,
    members_changed,
)
from ucim.slurm_bridge.unix_groups.names import check_local_name, group_name
from ucim.slurm_bridge.unix_groups.script import ScriptGroups, script_request
from ucim.slurm_bridge.unix_groups.settings import GroupSettings

__all__ = [
    "GroupError",
    "GroupSettings",
    "GroupState",
    "LocalGroups",
    "Member",
    "ProjectUpdate",
    "Role",
    "ScriptGroups",
    "UnixGroups",
    "check_local_name",
    "group_name",
    "members_changed",
    "script_request",
    "unix_groups",
]


def unix_groups(settings: GroupSettings) -> UnixGroups:
    """The configured policy."""
    return LocalGroups(settings) if settings.policy == "local" else ScriptGroups(settings)

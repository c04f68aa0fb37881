"""The ``script`` group policy: the site's ``onProjectUpdated``, as UCloud/IM's scripted identity module runs it.

The script gets one argument, a JSON file (0600, deleted afterwards) holding exactly::

    {"UCloudProjectId": "...", "projectTitle": "...", "suggestedGroupName": "p94056ba8", "unixGid": 5234281 | null,
     "allMembers": [S] | null, "membersAddedToProject": [S] | null, "membersRemovedFromProject": [S] | null}

with ``S = {"UCloudUsername": "...", "uid": 1101, "role": "PI" | "ADMIN" | "USER" | null}`` (capital U; role
null for removed members; an empty list is ``null``, as Go writes a nil slice). It runs as root, from ``/``,
with only ``PATH``, and prints ``{"gid": N}``; the group's name is what ``getent group N`` then says. A
non-zero exit, no JSON or no usable gid is a GroupError with the end of the script's stderr.

As in UCloud/IM, the first gid is the project's for good: a later, different answer is only logged, and
the recorded group is returned. Differences: ``suggestedGroupName`` is ours (the name pattern, a valid
name), not IM's ``p<whole project id>`` (37 characters, over the 32 of a name); the file is deleted.
Titles and UCloud usernames go only into this file, never onto a command line.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from ucim.slurm_bridge import site_commands
from ucim.slurm_bridge.unix_groups import database
from ucim.slurm_bridge.unix_groups.metrics import count_changes, failures_counted
from ucim.slurm_bridge.unix_groups.model import GroupError, GroupState, Member, ProjectUpdate
from ucim.slurm_bridge.unix_groups.names import check_local_name, group_name
from ucim.slurm_bridge.unix_groups.settings import GroupSettings

log = logging.getLogger(__name__)

_MAX_GID: Final = 2**32 - 2
_WHAT: Final = "the project script"


def _script_members(members: tuple[Member, ...], *, removed: bool = False) -> list[dict[str, Any]] | None:
    if not members:
        return None  # Go's nil slice
    return [{"UCloudUsername": m.ucloud_username, "uid": m.uid, "role": None if removed else m.role} for m in members]


def script_request(update: ProjectUpdate, *, suggested_name: str, unix_gid: int | None) -> dict[str, Any]:
    """The JSON the script reads, key for key as UCloud/IM's ``syncProjectRequest``."""
    return {
        "UCloudProjectId": update.project_id,
        "projectTitle": update.title,
        "suggestedGroupName": suggested_name,
        "unixGid": unix_gid,
        "allMembers": _script_members(update.members),
        "membersAddedToProject": _script_members(update.added),
        "membersRemovedFromProject": _script_members(update.removed, removed=True),
    }


def gid_from_answer(stdout: bytes, stderr_tail: str) -> int:
    """The gid of ``{"gid": N}``; GroupError for anything else."""
    try:
        answer = json.loads(stdout)
    except ValueError as error:
        raise GroupError(f"{_WHAT} printed no JSON ({error}); its stderr: {stderr_tail or '(empty)'}") from error
    gid = answer.get("gid") if isinstance(answer, dict) else None
    if not isinstance(gid, int) or isinstance(gid, bool):
        printed = stdout[:200].decode("utf-8", "replace").strip()
        raise GroupError(f'{_WHAT} must print {{"gid": N}}, not {printed!r}; its stderr: {stderr_tail or "(empty)"}')
    if not 0 < gid <= _MAX_GID:
        raise GroupError(f"{_WHAT} answered gid {gid}, which no project group may have (0 is root's)")
    return gid


class ScriptGroups:
    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        self._timeout = settings.command_timeout_seconds

    async def sync(self, update: ProjectUpdate, known: GroupState | None) -> GroupState:
        """Run the script for this project event; the project's group as getent then has it."""
        with failures_counted("script"):
            suggested = group_name(self.settings.name_pattern, update.project_id)
            recorded = None if known is None else known.gid
            gid = await self._run(script_request(update, suggested_name=suggested, unix_gid=recorded))
            if known is not None and gid != known.gid:
                log.warning(
                    "the project script answered another gid than the recorded one: keeping the recorded one",
                    extra={"project": update.project_id, "gid": gid, "recorded_gid": known.gid},
                )
                gid = known.gid
            group = await database.by_gid(gid, self._timeout)
            if group is None:
                raise GroupError(f"there is no group with gid {gid}, which {_WHAT} gave project {update.project_id}")
            check_local_name(group.name, f"the name of group {gid}")
            if known is None:
                count_changes("created")
            count_changes("member_added", len(update.added))
            count_changes("member_removed", len(update.removed))
            return group

    async def read(self, name: str) -> GroupState | None:
        with failures_counted("read"):
            return await database.by_name(name, self._timeout)

    async def _run(self, request: dict[str, Any]) -> int:
        script = self.settings.script
        if script is None:
            raise GroupError("the group policy is 'script' but no script is configured")
        try:
            finished = await site_commands.run_script(
                script, request, what=_WHAT, timeout_seconds=self.settings.script_timeout_seconds
            )
        except site_commands.CommandError as error:
            raise GroupError(str(error)) from error
        if finished.returncode != 0:
            raise GroupError(
                f"{_WHAT} failed for project {request['UCloudProjectId']} (exit status {finished.returncode}):"
                f" {finished.stderr_tail() or '(no stderr)'}"
            )
        return gid_from_answer(finished.stdout, finished.stderr_tail())

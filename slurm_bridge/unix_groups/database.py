"""The group database through its tools: ``getent`` to read, ``groupadd`` and ``gpasswd`` to write.

Each call is one argv list with validated names (``names.check_local_name``) and ``LC_ALL=C``, so that a
failure carries the tool's own English words. ``getent`` reads through NSS, as every process does:
files, or sssd/LDAP where the site has them; ``groupadd`` and ``gpasswd`` write the local files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ucim.slurm_bridge import site_commands
from ucim.slurm_bridge.unix_groups.model import GroupError, GroupState
from ucim.slurm_bridge.unix_groups.names import check_local_name

_ENV: Final = {"PATH": site_commands.SAFE_PATH, "LC_ALL": "C"}
_GETENT_NOT_FOUND: Final = 2
_GROUPADD_NAME_IN_USE: Final = 9


class GroupExistsError(GroupError):
    """groupadd found the name taken (by a group created since we looked)."""


async def _run(argv: Sequence[str], timeout_seconds: float) -> site_commands.Finished:
    try:
        return await site_commands.run(argv, what=argv[0], timeout_seconds=timeout_seconds, env=_ENV)
    except site_commands.CommandError as error:
        raise GroupError(str(error)) from error


def parse_group_line(line: str) -> GroupState:
    """``name:password:gid:member,member`` as getent prints it."""
    fields = line.rstrip("\n").split(":")
    if len(fields) != 4 or not fields[2].isdigit():
        raise GroupError(f"getent printed {line[:200]!r}, which is not a group entry")
    return GroupState(fields[0], int(fields[2]), frozenset(m for m in fields[3].split(",") if m))


async def _getent(key: str, timeout_seconds: float) -> GroupState | None:
    finished = await _run(["getent", "group", "--", key], timeout_seconds)
    if finished.returncode == _GETENT_NOT_FOUND:
        return None
    if finished.returncode != 0:
        raise GroupError(f"getent group {key} failed: {finished.why()}")
    lines = finished.stdout.decode("utf-8", "replace").splitlines()
    return parse_group_line(lines[0] if lines else "")


async def by_name(name: str, timeout_seconds: float) -> GroupState | None:
    return await _getent(check_local_name(name, "the group name"), timeout_seconds)


async def by_gid(gid: int, timeout_seconds: float) -> GroupState | None:
    """The group with ``gid`` (getent takes an all-digit key as a gid; names never start with a digit)."""
    return await _getent(str(gid), timeout_seconds)


async def add_group(
    name: str, timeout_seconds: float, *, gid: int | None = None, gid_range: tuple[int, int] | None = None
) -> None:
    """``groupadd`` with a chosen gid, or the lowest free one of ``gid_range`` (login.defs' when None)."""
    argv = ["groupadd"]
    if gid is not None:
        argv += ["-g", str(gid)]
    elif gid_range is not None:
        argv += ["-K", f"GID_MIN={gid_range[0]}", "-K", f"GID_MAX={gid_range[1]}"]
    argv += ["--", check_local_name(name, "the group name")]
    finished = await _run(argv, timeout_seconds)
    if finished.returncode == _GROUPADD_NAME_IN_USE:
        raise GroupExistsError(f"groupadd {name} failed: {finished.why()}")
    if finished.returncode != 0:
        raise GroupError(f"groupadd {name} failed: {finished.why()}")


async def set_member_list(name: str, members: Sequence[str], timeout_seconds: float) -> None:
    """``gpasswd -M a,b name``: the member list becomes exactly ``members`` (none: ``-M ''``)."""
    check_local_name(name, "the group name")
    listed = ",".join(check_local_name(member, "the member") for member in members)
    finished = await _run(["gpasswd", "-M", listed, "--", name], timeout_seconds)
    if finished.returncode != 0:
        raise GroupError(f"gpasswd -M {listed[:200]} {name} failed: {finished.why()}")

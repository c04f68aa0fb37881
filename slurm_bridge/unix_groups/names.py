"""Names of project groups: the site's pattern, the suffixes tried on a collision, and the one check every
name passes before it reaches a command line."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from typing import Final

from ucim.common.drives import LOCAL_NAME
from ucim.slurm_bridge.unix_groups.model import GroupError

PATTERN_FIELDS: Final = frozenset({"id8"})
DEFAULT_PATTERN: Final = "p{id8}"
# p94056ba8, p94056ba8-1, ... p94056ba8-99: a hundred groups of others on one name means something is wrong.
MAX_SUFFIX: Final = 99
_HEX8: Final = re.compile(r"[0-9a-f]{8}")


def check_local_name(name: object, what: str) -> str:
    """``name`` if it is a portable account or group name (``LOCAL_NAME``), else GroupError.

    ``fullmatch``, not ``match``: ``$`` also matches before a trailing newline.
    """
    if not isinstance(name, str) or not LOCAL_NAME.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise GroupError(f"{what} {shown} is not a valid local name (a letter or _, then letters, digits, _ . -)")
    return name


def short_id(project_id: str) -> str:
    """The first 8 hex digits of a UCloud project id (a UUID); for other ids, of the id's SHA-256."""
    lowered = project_id.lower()
    if _HEX8.match(lowered):
        return lowered[:8]
    return hashlib.sha256(project_id.encode()).hexdigest()[:8]


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot name groups, or None."""
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as error:
        return f"the group name pattern {pattern!r} is malformed: {error}"
    for _, field, spec, conversion in fields:
        if field is not None and (field not in PATTERN_FIELDS or spec or conversion):
            return f"the group name pattern may only use {{id8}}, not {{{field}}}"
    example = pattern.format(id8="0" * 8)
    if not LOCAL_NAME.fullmatch(example):
        return f"the group name pattern {pattern!r} gives {example!r}, which is not a valid local name"
    return None


def group_name(pattern: str, project_id: str) -> str:
    """The name the pattern gives a project's group (the suggested name; suffixes come on collisions)."""
    return check_local_name(pattern.format(id8=short_id(project_id)), "the group name")


def candidates(suggested: str) -> Iterator[str]:
    """``suggested``, then ``suggested-1`` ... ``suggested-99``, leaving out those too long to be names."""
    yield suggested
    for n in range(1, MAX_SUFFIX + 1):
        name = f"{suggested}-{n}"
        if LOCAL_NAME.fullmatch(name):
            yield name

"""The group policies' Prometheus metrics. Labels are bounded: an action or an operation, never a name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

from prometheus_client import Counter

from ucim.slurm_bridge.unix_groups.model import GroupError

Action = Literal["created", "member_added", "member_removed"]
Operation = Literal["ensure", "set_members", "read", "script"]

GROUP_CHANGES = Counter(
    "ucim_group_changes_total",
    "Changes to project groups, by action (created, member_added, member_removed); members count one each.",
    ["action"],
)
GROUP_FAILURES = Counter(
    "ucim_group_failures_total",
    "Group operations that failed, by operation (ensure, set_members, read, script).",
    ["operation"],
)
# Every series exists from the start, so rate() and alerts see the first change.
for _action in get_args(Action):
    GROUP_CHANGES.labels(_action)
for _operation in get_args(Operation):
    GROUP_FAILURES.labels(_operation)


def count_changes(action: Action, n: int = 1) -> None:
    if n > 0:
        GROUP_CHANGES.labels(action).inc(n)


@contextlib.contextmanager
def failures_counted(operation: Operation) -> Iterator[None]:
    """Count a GroupError that leaves the block under ``operation`` and let it go on."""
    try:
        yield
    except GroupError:
        GROUP_FAILURES.labels(operation).inc()
        raise

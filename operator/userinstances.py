"""The operator's side of UserInstances: it creates them through ``ucim.common.user_instances`` and
announces their Ready flips as events; the bridge owns everything else (and writes their status)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ucim.common.conditions import find_condition
from ucim.common.reasons import READY
from ucim.common.resources import Condition


def ready_flip(old: Sequence[dict[str, Any]] | None, new: Sequence[dict[str, Any]] | None) -> Condition | None:
    """The new Ready condition if Ready changed status between two condition lists, else None."""
    before = find_condition([Condition.model_validate(c) for c in old or []], READY)
    after = find_condition([Condition.model_validate(c) for c in new or []], READY)
    if after is None or (before is not None and before.status == after.status):
        return None
    return after

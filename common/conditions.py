"""Kubernetes-style status conditions, kept in one helper.

``lastTransitionTime`` moves only when a condition's status flips, and
``observedGeneration`` is always recorded, as cert-manager and kubebuilder do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from ucim.common.resources import Condition

ConditionStatus = Literal["True", "False", "Unknown"]
# (type, status, reason, message): one condition as a component wants it.
ConditionUpdate = tuple[str, ConditionStatus, str, str]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    update: ConditionUpdate,
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with the update's type set; the others are kept as they are, in order."""
    updated = updated_condition(conditions, update, observed_generation=observed_generation, now=now)
    if find_condition(conditions, updated.type) is None:
        return [*conditions, updated]
    return [updated if c.type == updated.type else c for c in conditions]


def updated_condition(
    conditions: Sequence[Condition],
    update: ConditionUpdate,
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> Condition:
    """The condition as it is to be written: ``lastTransitionTime`` moves only if its status flips.

    What a component applies by itself (server-side apply of its own condition type).
    """
    type_, status, reason, message = update
    existing = find_condition(conditions, type_)
    flipped = existing is None or existing.status != status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=(now or utcnow()) if flipped or existing is None else existing.last_transition_time,
    )


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    condition = find_condition(conditions, type_)
    return condition is not None and condition.status == "True"

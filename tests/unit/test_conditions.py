from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ucim.common.conditions import find_condition, is_true, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_is_added_with_now() -> None:
    (c,) = set_condition([], ("Ready", "False", "Spawning", "go"), observed_generation=1, now=T0)
    assert (c.type, c.status, c.reason, c.last_transition_time, c.observed_generation) == (
        "Ready", "False", "Spawning", T0, 1,
    )  # fmt: skip


def test_transition_time_moves_only_when_status_flips() -> None:
    conditions = set_condition([], ("Ready", "False", "Spawning", ""), now=T0)
    same = set_condition(conditions, ("Ready", "False", "StillSpawning", "x"), now=T1)
    assert same[0].last_transition_time == T0
    assert same[0].reason == "StillSpawning"
    flipped = set_condition(same, ("Ready", "True", "Serving", ""), now=T1)
    assert flipped[0].last_transition_time == T1


def test_other_conditions_are_kept_in_order() -> None:
    conditions = set_condition([], ("Submitted", "True", "SlurmAccepted", ""), now=T0)
    conditions = set_condition(conditions, ("Ready", "True", "Serving", ""), now=T0)
    conditions = set_condition(conditions, ("Submitted", "False", "SlurmRejected", ""), now=T1)
    assert [c.type for c in conditions] == ["Submitted", "Ready"]
    assert is_true(conditions, "Ready")
    assert not is_true(conditions, "Submitted")
    assert find_condition(conditions, "Missing") is None

"""Which notified jobs are asked about together, when, and again (no Slurm)."""

from __future__ import annotations

from ucim.common.slurm_parsing import SlurmJobInfo
from ucim.slurm_bridge.hook_batches import EPILOG, PROLOG, HookBatches, answered


def info(job_id: int, state: str) -> SlurmJobInfo:
    return SlurmJobInfo(job_id=job_id, state=state)


def test_what_a_notification_waits_for() -> None:
    # The hook runs inside slurmctld's PrologSlurmctld/EpilogSlurmctld, before squeue shows the change.
    assert not answered(PROLOG, info(1, "CONFIGURING"))
    assert not answered(PROLOG, info(1, "PENDING"))
    assert answered(PROLOG, info(1, "RUNNING"))
    assert answered(PROLOG, info(1, "FAILED"))  # started and ended already
    assert not answered(EPILOG, info(1, "COMPLETING"))
    assert answered(EPILOG, info(1, "CANCELLED"))
    assert answered("", info(1, "PENDING"))  # no context: any answer
    assert not answered(PROLOG, None)


def test_notifications_of_one_moment_are_one_batch() -> None:
    batches = HookBatches(batch_seconds=0.04, min_gap_seconds=0.05)
    batches.notify(1, PROLOG, now=10.0)
    batches.notify(2, PROLOG, now=10.01)
    assert batches.wake_at() == 10.04
    assert batches.take(10.03) == {}  # the first waits for the others of its moment
    assert set(batches.take(10.05)) == {1, 2}
    assert batches.wake_at() is None


def test_queries_keep_their_gap() -> None:
    batches = HookBatches(batch_seconds=0.0, min_gap_seconds=0.05)
    batches.notify(1, PROLOG, now=10.0)
    assert set(batches.take(10.0)) == {1}
    batches.queried(10.0)
    batches.notify(2, EPILOG, now=10.01)
    assert batches.wake_at() == 10.05
    assert batches.take(10.02) == {}
    assert set(batches.take(10.05)) == {2}


def test_a_notification_is_asked_again_until_slurm_shows_it_then_left_to_the_poll() -> None:
    batches = HookBatches(
        batch_seconds=0.0, min_gap_seconds=0.01, followup_seconds=0.05, max_attempts=3, even_attempts=1
    )
    batches.notify(1, PROLOG, now=0.0)
    batches.notify(2, EPILOG, now=0.0)
    batch = batches.take(0.0)
    batches.settle(batch, tracked={1, 2}, infos={1: info(1, "CONFIGURING"), 2: info(2, "COMPLETED")}, now=0.0)
    assert set(batches.pending) == {1}
    assert batches.pending[1].due == 0.05
    batch = batches.take(0.05)
    batches.settle(batch, tracked={1}, infos={1: info(1, "CONFIGURING")}, now=0.05)
    assert batches.pending[1].due == 0.05 + 0.1  # doubling
    batch = batches.take(0.2)
    batches.settle(batch, tracked={1}, infos={1: info(1, "CONFIGURING")}, now=0.2)
    assert batches.pending == {}  # three attempts: the poll has it now


def test_an_untracked_id_is_looked_for_again_and_a_newer_notification_wins() -> None:
    batches = HookBatches(batch_seconds=0.0, min_gap_seconds=0.01)
    batches.notify(5, PROLOG, now=0.0)
    batch = batches.take(0.0)
    batches.notify(5, EPILOG, now=0.001)  # it ended while the first query ran
    batches.settle(batch, tracked=set(), infos={}, now=0.002)
    assert batches.pending[5].context == EPILOG
    assert batches.pending[5].attempts == 0


def test_follow_ups_are_even_at_first_then_doubling() -> None:
    batches = HookBatches(batch_seconds=0.0, min_gap_seconds=0.0, followup_seconds=1.0, max_attempts=10)
    batches.notify(1, PROLOG, now=0.0)
    now, delays = 0.0, []
    while batches.pending:
        due = batches.pending[1].due
        delays.append(due - now)
        now = due
        batches.settle(batches.take(now), tracked={1}, infos={1: info(1, "CONFIGURING")}, now=now)
    assert delays[1:] == [1, 1, 1, 2, 4, 8, 16, 32, 64]  # after the first query (at once): 9 follow-ups

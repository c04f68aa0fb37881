"""The poll's adaptive interval."""

from __future__ import annotations

from prometheus_client import REGISTRY

from ucim.slurm_bridge.poll_interval import PollInterval


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("ucim_slurm_poll_interval_seconds")


def test_fast_while_jobs_change_doubling_up_to_idle() -> None:
    interval = PollInterval(fastest=1.0, slowest=10.0)
    assert interval.current == 1.0
    assert [interval.after_poll(changed=False) for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert _gauge() == 10.0
    assert interval.after_poll(changed=True) == 1.0
    interval.after_poll(changed=False)
    interval.activity()  # the hook changed a job between polls
    assert interval.current == 1.0
    assert _gauge() == 1.0


def test_without_the_hook_the_interval_is_constant() -> None:
    interval = PollInterval(fastest=1.0, slowest=1.0)
    assert {interval.after_poll(changed=False) for _ in range(5)} == {1.0}
    # An idle interval below the fastest is the fastest.
    assert PollInterval(fastest=2.0, slowest=1.0).slowest == 2.0

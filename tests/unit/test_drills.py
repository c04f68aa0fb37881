"""The drills' invariants (ucim.testing.drills): what counts as lost, duplicated, out of order or too slow."""

from __future__ import annotations

from ucim.common.protocol import JobState, JobUpdate
from ucim.slurm_bridge.monitor import VANISHED_MESSAGE
from ucim.testing.core_standin import ProviderCall
from ucim.testing.drills import JobRun, Outage

T0 = 1_800_000_000.0


def call(status: int | None, seconds: float = 0.1, at: float = T0, why: str = "") -> ProviderCall:
    return ProviderCall("POST", "jobs", ("1",), at, seconds, status, why)


def run(
    *states: JobState, slurm: tuple[int, ...] = (7,), calls: tuple[ProviderCall, ...] = (), end: str = ""
) -> JobRun:
    job = JobRun("1", "alice", 1, created=True, creates=list(calls or (call(200),)), slurm_ids=list(slurm))
    job.updates = [
        (T0 + i, JobUpdate(state=state, timestamp=int(T0 * 1000) + i, status=end if state.is_final else ""))
        for i, state in enumerate(states)
    ]
    return job


def test_a_job_that_went_through_in_order_is_fine() -> None:
    assert run(JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS).violations([], 5.0) == []
    assert run(JobState.IN_QUEUE, JobState.SUCCESS).violations([], 5.0) == []  # a short job may skip RUNNING


def test_lost_duplicated_and_out_of_order_are_each_named() -> None:
    assert "no final state" in " ".join(run(JobState.IN_QUEUE, JobState.RUNNING).violations([], 5.0))
    twice = run(JobState.IN_QUEUE, JobState.RUNNING, JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS)
    problems = " ".join(twice.violations([], 5.0))
    assert "twice" in problems and "out of order" in problems
    assert "2 Slurm jobs" in " ".join(run(JobState.IN_QUEUE, JobState.SUCCESS, slurm=(7, 8)).violations([], 5.0))


def test_a_job_slurm_lost_may_have_no_slurm_job() -> None:
    lost = run(JobState.IN_QUEUE, JobState.FAILURE, slurm=(), end=VANISHED_MESSAGE)
    assert lost.lost_by_slurm
    assert lost.violations([], 5.0) == []
    assert run(JobState.IN_QUEUE, JobState.FAILURE, slurm=()).violations([], 5.0) != []


def test_creates_must_be_answered_in_time_readably_and_only_go_unanswered_while_the_gateway_is_down() -> None:
    states = (JobState.IN_QUEUE, JobState.SUCCESS)
    slow = run(*states, calls=(call(200, seconds=5.5),))
    assert "after 5.5 s" in " ".join(slow.violations([], 5.0))
    assert run(*states, calls=(call(503, why="try again"), call(200))).violations([], 5.0) == []
    assert "500" in " ".join(run(*states, calls=(call(500, why="boom"), call(200))).violations([], 5.0))
    assert "503" in " ".join(run(*states, calls=(call(503), call(200))).violations([], 5.0))  # no why
    unanswered = run(*states, calls=(call(None, at=T0 + 2, why="refused"), call(200)))
    gateway_down = Outage("gateway", killed_at=T0 + 1, started_at=T0 + 3, silences_gateway=True)
    operator_down = Outage("operator", killed_at=T0 + 1, started_at=T0 + 3)
    assert unanswered.violations([gateway_down], 5.0) == []
    assert "while the gateway ran" in " ".join(unanswered.violations([operator_down], 5.0))

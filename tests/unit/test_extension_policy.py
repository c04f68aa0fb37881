"""The site's walltime extension policy and what a request becomes (pure: no gateway, no Kubernetes)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.extension_jobs import REQUESTED_AT, extend_item, extension, outcome, sample_job
from ucim.common.protocol import JobExtendRequestItem, SimpleDuration
from ucim.common.resources import MAX_EXTENSIONS, UCloudJob
from ucim.gateway.errors import ProviderError
from ucim.gateway.extension_policy import (
    ExtensionPolicy,
    current_limit,
    extension_id,
    plan_extension,
    requested_minutes,
)
from ucim.gateway.settings import GatewaySettings

POLICY = ExtensionPolicy(
    max_per_request_minutes=120, max_total_minutes=600, partition_max_total_minutes={"normal": 300}
)


def refusal(policy: ExtensionPolicy, job: UCloudJob, item: JobExtendRequestItem) -> str:
    with pytest.raises(ProviderError) as refused:
        plan_extension(policy, job, item, REQUESTED_AT)
    assert refused.value.status == 400
    return refused.value.why


def test_a_request_within_the_policy_becomes_the_whole_new_limit() -> None:
    planned = plan_extension(POLICY, sample_job(), extend_item(SimpleDuration(hours=1)), REQUESTED_AT)
    assert (planned.add_minutes, planned.time_limit_minutes) == (60, 65)  # the sample runs 5 minutes
    assert planned.requested_at == REQUESTED_AT


def test_defaults_allow_a_day_per_request_and_no_total_but_slurms() -> None:
    policy = ExtensionPolicy()
    assert policy.enabled and policy.max_per_request_minutes == 24 * 60
    assert plan_extension(policy, sample_job(), extend_item(SimpleDuration(hours=24)), REQUESTED_AT).add_minutes == 1440
    assert "at most 24 h per request" in refusal(policy, sample_job(), extend_item(SimpleDuration(hours=24, minutes=1)))


def test_each_limit_is_named_when_it_is_passed() -> None:
    assert "at most 2 h per request" in refusal(POLICY, sample_job(), extend_item(SimpleDuration(hours=3)))
    # 5 min + 3 x 100 min: past partition normal's 300 minutes.
    asked = [extension("a", 100, 105), extension("b", 100, 205)]
    job = sample_job(asked=asked, extensions=[outcome("a"), outcome("b")])
    why = refusal(POLICY, job, extend_item(SimpleDuration(minutes=100)))
    assert "5 h 5 min" in why and "5 h, the longest allowed in partition normal" in why
    # Another partition: only the provider's total (600 minutes) applies.
    job.spec.slurm.partition = "long"  # type: ignore[union-attr]
    assert plan_extension(POLICY, job, extend_item(SimpleDuration(minutes=100)), REQUESTED_AT).time_limit_minutes == 305
    job = sample_job(asked=[extension("a", 100, 590)], extensions=[outcome("a")])
    job.spec.slurm.partition = "long"  # type: ignore[union-attr]
    assert "the longest time limit this provider allows" in refusal(POLICY, job, extend_item(SimpleDuration(hours=1)))


def test_the_time_asked_for_is_rounded_up_to_minutes_and_must_be_positive() -> None:
    assert requested_minutes(extend_item(SimpleDuration(minutes=1, seconds=1))) == 2
    assert requested_minutes(extend_item(SimpleDuration(seconds=1))) == 1
    assert "must be positive" in refusal(POLICY, sample_job(), extend_item(SimpleDuration()))


@pytest.mark.parametrize(
    ("state", "status", "why"),
    [
        ("SUCCESS", {}, "has ended (SUCCESS)"),
        ("FAILURE", {}, "has ended (FAILURE)"),
        (None, {"slurmJobId": None}, "not in Slurm's queue yet"),
        ("IN_QUEUE", {"slurmJobId": None}, "not in Slurm's queue yet"),
    ],
)
def test_only_a_queued_or_running_job_is_extended(state: str | None, status: dict[str, Any], why: str) -> None:
    assert why in refusal(POLICY, sample_job(state, **status), extend_item(SimpleDuration(hours=1)))
    plan_extension(POLICY, sample_job("IN_QUEUE"), extend_item(SimpleDuration(hours=1)), REQUESTED_AT)


def test_a_job_being_cancelled_is_not_extended() -> None:
    job = sample_job()
    job.spec.terminate = True
    assert "being cancelled" in refusal(POLICY, job, extend_item(SimpleDuration(hours=1)))


def test_cores_retry_is_the_recorded_request_and_a_new_allocation_a_new_one() -> None:
    item = extend_item(SimpleDuration(hours=1))
    first = plan_extension(POLICY, sample_job(), item, REQUESTED_AT)
    recorded = sample_job(asked=[first.to_dict()])
    # Even after it was applied, and whatever the policy says now: the same call is the same request.
    done = sample_job(asked=[first.to_dict()], extensions=[outcome(first.id)])
    assert plan_extension(ExtensionPolicy(max_per_request_minutes=1), done, item, REQUESTED_AT) == first
    assert plan_extension(POLICY, recorded, item, REQUESTED_AT) == first
    # Core has the new limit (65 minutes): the same time asked for again is a new request from 65.
    again = extend_item(SimpleDuration(hours=1), allocation=SimpleDuration(hours=1, minutes=5))
    assert extension_id(again) != first.id
    assert plan_extension(POLICY, done, again, REQUESTED_AT).time_limit_minutes == 125


def test_a_request_waits_for_the_one_before_it() -> None:
    pending = sample_job(asked=[extension("a", 60, 65)])
    assert "another extension is still being applied" in refusal(POLICY, pending, extend_item(SimpleDuration(hours=1)))


def test_the_limit_builds_on_the_last_extension_not_refused() -> None:
    asked = [extension("a", 60, 65), extension("b", 60, 125)]
    assert current_limit(sample_job(asked=asked, extensions=[outcome("a")])) == 125  # b is pending: it will be applied
    assert current_limit(sample_job(asked=asked, extensions=[outcome("a"), outcome("b", "Refused")])) == 65
    assert current_limit(sample_job()) == 5


def test_a_job_with_the_partitions_default_limit_is_not_extended() -> None:
    job = sample_job()
    job.spec.resources.time_limit_minutes = None
    assert "partition's default time limit" in refusal(POLICY, job, extend_item(SimpleDuration(hours=1)))


def test_a_job_keeps_at_most_so_many_extensions() -> None:
    many = [extension(str(i), 1, 6 + i) for i in range(MAX_EXTENSIONS)]
    job = sample_job(asked=many, extensions=[outcome(str(i)) for i in range(MAX_EXTENSIONS)])
    assert f"extended {MAX_EXTENSIONS} times" in refusal(POLICY, job, extend_item(SimpleDuration(minutes=1)))


def test_the_policy_is_set_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCIM_GATEWAY_EXTENSION__MAX_PER_REQUEST_MINUTES", "60")
    monkeypatch.setenv("UCIM_GATEWAY_EXTENSION__PARTITION_MAX_TOTAL_MINUTES", '{"normal": 90, "gpu": 2880}')
    monkeypatch.setenv("UCIM_GATEWAY_EXTENSION__ENABLED", "false")
    policy = GatewaySettings().extension
    assert policy == ExtensionPolicy(
        enabled=False, max_per_request_minutes=60, partition_max_total_minutes={"normal": 90, "gpu": 2880}
    )


@pytest.mark.parametrize(
    "policy",
    [{"max_per_request_minutes": 0}, {"max_total_minutes": -1}, {"partition_max_total_minutes": {"gpu": 0}}],
)
def test_a_limit_is_a_positive_number_of_minutes(policy: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ExtensionPolicy(**policy)

"""Walltime extension (``jobs/extend``): the site's policy, and the request it allows (pure, no I/O).

Core sends ``{job, requestedTime}``: the time to add to the job (core2 adds it to the job's
``timeAllocation``). The gateway checks it against the job as its UCloudJob has it and against
the site's :class:`ExtensionPolicy`, records it in ``spec.extensions`` (a field only the gateway
writes) and waits, watching that one object, for the bridge's outcome in ``status.extensions``:
Slurm lets only root raise a job's time limit, so the bridge applies it (``slurm_bridge/extensions.py``)
and tells Core the new limit as a job update with ``newTimeAllocation``.

Each request is kept with the whole time limit it leads to, computed here from the last limit
not refused, so requests follow one another and applying one twice changes nothing. Its id is
made from what Core sent (the job's time allocation as Core had it, and the time asked for):
Core's retry of a call whose answer was lost or late finds the first request and its outcome,
and never extends the job twice. Once Core has the new limit, the next request carries it and is new.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ucim.common.protocol import JobExtendRequestItem, JobState
from ucim.common.resources import MAX_EXTENSIONS, MAX_TIME_LIMIT_MINUTES, TimeExtension, UCloudJob
from ucim.common.times import minutes_text
from ucim.gateway.errors import ProviderError

# Core's time allocation is milliseconds; Slurm's limits are whole minutes.
_MINUTE_MS = 60_000
Minutes = Annotated[int, Field(ge=1, le=MAX_TIME_LIMIT_MINUTES)]


class ExtensionPolicy(BaseModel):
    """How far a site lets users extend their jobs (``UCIM_GATEWAY_EXTENSION__*``).

    Whatever this allows, the bridge never takes a job past its Slurm partition's ``MaxTime``:
    a site that wants longer jobs raises that in slurm.conf.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Off: jobs/extend is refused and the products do not offer it (support timeExtension false).
    enabled: bool = True
    # The most one request may add.
    max_per_request_minutes: Minutes = 24 * 60
    # The longest time limit an extension may give a job, any partition; None: only the partition's MaxTime.
    max_total_minutes: Minutes | None = None
    # The same per Slurm partition (partition → minutes); where both apply, the smaller wins.
    partition_max_total_minutes: dict[str, Minutes] = Field(default_factory=dict)
    # How long jobs/extend waits for the bridge's answer (within Core's budget for the call).
    wait_seconds: float = Field(default=3.0, gt=0.0)


def requested_minutes(item: JobExtendRequestItem) -> int:
    """The time asked for in whole minutes, rounded up (never less than asked); a 400 unless positive."""
    millis = item.requested_time.to_millis()
    if millis <= 0:
        raise ProviderError(400, f"job {item.job.id}: the time to add must be positive")
    return min(-(-millis // _MINUTE_MS), MAX_TIME_LIMIT_MINUTES + 1)


def extension_id(item: JobExtendRequestItem) -> str:
    """The request's id: the job, its time allocation as Core had it, and the time asked for."""
    allocation = item.job.specification.time_allocation
    key = f"{item.job.id}\0{allocation.to_millis() if allocation else 0}\0{item.requested_time.to_millis()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def current_limit(job: UCloudJob) -> int | None:
    """The job's time limit once what it was given so far is applied: the last extension not refused, or the
    limit it was submitted with; None when it was submitted with its partition's default, unknown here."""
    for extension in reversed(job.spec.extensions or []):
        outcome = job.extension_outcome(extension.id)
        if outcome is None or outcome.result == "Applied":
            return extension.time_limit_minutes
    return job.spec.resources.time_limit_minutes


def check_extendable(job: UCloudJob) -> None:
    """A 400 unless the job waits in Slurm's queue or runs (and is not being cancelled)."""
    job_id, state = job.spec.job_id, job.status.state
    if state is not None and state.is_final:
        raise ProviderError(
            400, f"job {job_id} has ended ({state.value}); only a queued or running job can be extended"
        )
    if job.spec.terminate:
        raise ProviderError(400, f"job {job_id} is being cancelled; it cannot be extended")
    if state not in (JobState.IN_QUEUE, JobState.RUNNING) or job.status.slurm_job_id is None:
        raise ProviderError(400, f"job {job_id} is not in Slurm's queue yet; try again in a moment")


def check_policy(policy: ExtensionPolicy, job: UCloudJob, add: int, total: int) -> None:
    """A 400 that names the limit, for a request beyond the site's policy."""
    job_id = job.spec.job_id
    if add > policy.max_per_request_minutes:
        raise ProviderError(
            400, f"job {job_id}: {minutes_text(add)} is more than one extension may add on this provider "
            f"(at most {minutes_text(policy.max_per_request_minutes)} per request)"
        )  # fmt: skip
    partition = job.spec.slurm.partition if job.spec.slurm is not None else None
    limits = [(policy.max_total_minutes, "the longest time limit this provider allows")]
    if partition is not None and partition in policy.partition_max_total_minutes:
        limits.append((policy.partition_max_total_minutes[partition], f"the longest allowed in partition {partition}"))
    for limit, what in limits:
        if limit is not None and total > limit:
            raise ProviderError(
                400, f"job {job_id}: extended by {minutes_text(add)}, its time limit would be {minutes_text(total)}, "
                f"beyond {minutes_text(limit)}, {what}"
            )  # fmt: skip


def plan_extension(policy: ExtensionPolicy, job: UCloudJob, item: JobExtendRequestItem, now: datetime) -> TimeExtension:
    """The extension to wait for: the one recorded for this very request already (Core's retry), or a new one.

    ProviderError(400) for a job that cannot be extended now and for a request beyond the policy.
    """
    wanted = extension_id(item)
    recorded = next((e for e in job.spec.extensions or [] if e.id == wanted), None)
    if recorded is not None:
        return recorded
    check_extendable(job)
    job_id = job.spec.job_id
    if job.pending_extensions():
        raise ProviderError(400, f"job {job_id}: another extension is still being applied; try again in a moment")
    if len(job.spec.extensions or []) >= MAX_EXTENSIONS:
        raise ProviderError(400, f"job {job_id} has been extended {MAX_EXTENSIONS} times, the most this provider keeps")
    base = current_limit(job)
    if base is None:
        raise ProviderError(
            400, f"job {job_id} runs with its partition's default time limit, which this provider cannot extend"
        )
    add = requested_minutes(item)
    total = base + add
    check_policy(policy, job, add, total)
    if total > MAX_TIME_LIMIT_MINUTES:
        raise ProviderError(400, f"job {job_id}: a time limit of {minutes_text(total)} is more than Slurm takes")
    return TimeExtension(id=wanted, add_minutes=add, time_limit_minutes=total, requested_at=now)

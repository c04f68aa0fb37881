"""Pure functions behind the UCloudJob handlers: requests, Core updates, status changes and outcomes.

Status changes are *patch functions*: each takes the object as the apiserver
has it now and changes only its own fields. kopf runs them on the freshest body
it knows and sends the difference as a JSON patch guarded by the object's
``resourceVersion``; if anyone (the slurm_bridge appending a transition)
changed the object in between, the patch is refused and kopf re-applies the
function to the newer object. So a list (``conditions``, ``transitions``) is
never written from a stale copy.

What a handler's step comes to is an ``Outcome`` (``outcomes.py``): these patch
functions, status fields, events, and the error that ends the handler when it is
not done. The builders of those outcomes are here too, at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import kopf

from ucim.common import instance_api
from ucim.common.conditions import ConditionStatus, is_true, set_condition
from ucim.common.instance_api import SubmitRequest, SubmitResponse
from ucim.common.protocol import JobState, JobUpdate, JobUpdateItem
from ucim.common.reasons import (
    CANCEL_REQUESTED,
    CANCELLED,
    CORE_DELIVERY_FAILING,
    CORE_UP_TO_DATE,
    INSTANCE_UNREACHABLE,
    MAPPING_REFUSED,
    REPORTED,
    SLURM_ACCEPTED,
    SLURM_CANCELLED,
    SLURM_SUBMIT_REJECTED,
    SUBMITTED,
    WAITING_FOR_ACCOUNT,
    WAITING_FOR_INSTANCE,
)
from ucim.common.resources import (
    Condition,
    JobInterface,
    JobTransition,
    SlurmPlacement,
    UCloudJob,
    UCloudJobStatus,
)
from ucim.common.times import millis, rfc3339
from ucim.operator.outcomes import Event, Outcome, StatusFn, permanent, temporary

# Written on the UCloudJob just before the first submit call: from then on a
# Slurm job may exist even though its id never reached the status (a crash in
# between), so the job is submitted (idempotently) rather than dropped, even when
# it is terminated early. Our annotation prefix is kopf's, so changes to it never
# count as changes of the object.
SUBMIT_STARTED_ANNOTATION: Final = "ucim.io/submit-started-at"


# --- what the job is ----------------------------------------------------------


def is_final(status: UCloudJobStatus) -> bool:
    return status.state is not None and status.state.is_final


def submit_attempted(job: UCloudJob) -> bool:
    return SUBMIT_STARTED_ANNOTATION in (job.metadata.annotations or {})


def slurm_job_name(job: UCloudJob) -> str:
    """The Slurm job name: the object's uid, stable across retries and restarts, unique per object."""
    if not job.metadata.uid:
        raise ValueError(f"UCloudJob {job.metadata.name} has no uid")
    return instance_api.slurm_job_name(job.metadata.uid)


@dataclass(frozen=True)
class Placement:
    """Where a job runs: its workspace's Slurm account (None: the product's), the drive its folder is in (a
    locator; None: the owner's home) and that drive's id at Core (None: not registered, so no outputFolder)."""

    account: str | None
    drive: str | None
    drive_id: str | None


# The Slurm account a user picked (jobs/requestDynamicParameters offers the accounts Slurm has for them).
CHOSEN_ACCOUNT_PARAMETER: Final = "_injected_slurmAccount"


def chosen_account(job: UCloudJob) -> str | None:
    """The account the user picked, if any: without Core's accounting it replaces the product's.

    Slurm itself refuses an account the user has no association with (AccountingStorageEnforce).
    """
    value = (job.spec.parameters or {}).get(CHOSEN_ACCOUNT_PARAMETER)
    if value is None or value.type != "text" or not isinstance(value.value, str) or not value.value:
        return None
    return value.value


def submit_request(job: UCloudJob, account: str | None = None, drive: str | None = None) -> SubmitRequest:
    """What the owner's instance submits.

    ``account``, the workspace's Slurm account, overrides the product's; ``drive``, a project's drive
    (``project:<group>``), is where the job folder goes instead of the owner's home.
    """
    spec = job.spec
    slurm = spec.slurm or SlurmPlacement()
    return SubmitRequest(
        job_id=spec.job_id,
        slurm_job_name=slurm_job_name(job),
        application=spec.application,
        parameters=spec.parameters or {},
        product=spec.product,
        resources=spec.resources,
        slurm=slurm.model_copy(update={"account": account}) if account else slurm,
        drive=drive,
    )


def provider_generated_id(job: UCloudJob) -> str:
    """The job's id on the provider side: its object name, the id the gateway already gave Core.

    The gateway answers Core's create call before the Slurm id may exist, so the
    id must be known at creation; the Slurm id is in ``status.slurmJobId``.
    """
    return job.metadata.name


# --- delivery to Core -----------------------------------------------------------


def unreported(status: UCloudJobStatus, delivered: int = 0) -> tuple[int, list[JobTransition]]:
    """(index of the first state change Core has not acknowledged, those changes in order).

    ``delivered`` is what this process already sent, for when the status it
    reads is older than its own last write.
    """
    start = min(max(status.reported_transitions, delivered), len(status.transitions))
    return start, status.transitions[start:]


def already_at_core(pending: list[JobTransition], at_core: list[JobUpdate]) -> int:
    """How many of the leading ``pending`` changes Core already holds (same state and timestamp).

    An earlier operator process may have been stopped after Core accepted a batch and
    before it recorded that in ``reportedTransitions``; those are not sent again.
    """
    held = {(update.state, update.timestamp) for update in at_core}
    count = 0
    for transition in pending:
        if (transition.state, transition.timestamp) not in held:
            break
        count += 1
    return count


def job_update(transition: JobTransition, output_folder: str | None) -> JobUpdate:
    """One state change (or status line, or new time limit) as Core takes it; every other key is null (Go writes
    them all).

    ``output_folder`` is the job folder as a UCloud path (``/<drive id>/…``), which Core opens through the
    provider's file calls.
    """
    return JobUpdate(
        state=transition.state,
        status=transition.message,
        timestamp=transition.timestamp,
        output_folder=output_folder,
        new_time_allocation=transition.new_time_allocation,
    )


def job_updates(job: UCloudJob, transitions: list[JobTransition]) -> list[JobUpdateItem]:
    return [JobUpdateItem(id=job.spec.job_id, update=job_update(t, job.status.output_folder)) for t in transitions]


# --- status patch functions ------------------------------------------------------


def _status(body: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = body.setdefault("status", {})
    return status


def _generation(body: dict[str, Any]) -> int | None:
    generation = body.get("metadata", {}).get("generation")
    return generation if isinstance(generation, int) else None


def _set_condition(
    body: dict[str, Any], type_: str, status: ConditionStatus, *, reason: str, message: str, now: datetime
) -> None:
    raw = _status(body)
    current = [Condition.model_validate(c) for c in raw.get("conditions") or []]
    generation = _generation(body)
    changed = set_condition(
        current, (type_, status, reason, message), observed_generation=generation, now=now.replace(microsecond=0)
    )
    raw["conditions"] = [c.to_dict() for c in changed]
    if generation is not None:
        raw["observedGeneration"] = generation


def condition(type_: str, status: ConditionStatus, *, reason: str, message: str, now: datetime) -> StatusFn:
    """Set one condition; the others stay as they are on the object."""

    def apply(raw_body: kopf.RawBody) -> None:
        body = cast(dict[str, Any], raw_body)
        _set_condition(body, type_, status, reason=reason, message=message, now=now)

    return apply


def first_visit(now: datetime) -> StatusFn:
    """Conditions a job starts with: not submitted yet, and nothing to tell Core yet."""

    def apply(raw_body: kopf.RawBody) -> None:
        body = cast(dict[str, Any], raw_body)
        present = {c.get("type") for c in _status(body).get("conditions") or []}
        if SUBMITTED not in present:
            _set_condition(
                body,
                SUBMITTED,
                "Unknown",
                reason=WAITING_FOR_INSTANCE,
                message="Waiting for the owner's instance",
                now=now,
            )
        if REPORTED not in present:
            _set_condition(
                body, REPORTED, "True", reason=CORE_UP_TO_DATE, message="No state changes to report yet", now=now
            )

    return apply


def _append_transition(body: dict[str, Any], state: JobState, message: str, now: datetime) -> None:
    raw = _status(body)
    transition = JobTransition(state=state, timestamp=millis(now), message=message)
    raw["transitions"] = [*(raw.get("transitions") or []), transition.to_dict()]
    raw["state"] = state.value


def _append_status_line(body: dict[str, Any], message: str, now: datetime) -> None:
    raw = _status(body)
    line = JobTransition(state=None, timestamp=millis(now), message=message)
    raw["transitions"] = [*(raw.get("transitions") or []), line.to_dict()]


def target_lines(interfaces: Iterable[JobInterface]) -> list[str]:
    """The job's dynamic targets as Core's frontend reads them from job updates (PROTOCOL-INTERACTIVE §3.4)."""
    return [
        "Target: "
        + json.dumps(
            {"rank": i.rank, "type": i.type, "target": i.target, "port": i.port, "defaultName": None},
            separators=(",", ":"),
        )
        for i in interfaces
        if i.target is not None and i.rank is not None
    ]


def output_folder(drive_id: str | None, answer: SubmitResponse) -> str | None:
    """The job folder as a UCloud path: ``/<drive id>/<jobs folder>/<job id>``."""
    if drive_id is None or answer.folder_in_drive is None:
        return None
    return f"/{drive_id}/{answer.folder_in_drive}"


def submission_recorded(job: UCloudJob, answer: SubmitResponse, drive_id: str | None, now: datetime) -> StatusFn:
    """The Slurm job exists: its id, folders and the first state change (IN_QUEUE), written once."""
    # The anchor's words (IM2 slurm compute.go submitJob), which UCloud users know.
    message = f"Your job has been submitted to the queue (Slurm ID: {answer.slurm_job_id})"
    if answer.already_submitted:
        message += " (found from an earlier attempt)"

    def apply(raw_body: kopf.RawBody) -> None:
        body = cast(dict[str, Any], raw_body)
        raw = _status(body)
        if raw.get("slurmJobId") is None:
            raw["slurmJobId"] = answer.slurm_job_id
            raw["submittedAt"] = rfc3339(now)
            raw["jobFolder"] = answer.job_folder
            if (folder := output_folder(drive_id, answer)) is not None:
                raw["outputFolder"] = folder
            raw["providerGeneratedId"] = provider_generated_id(job)
            if answer.interfaces:
                raw["interfaces"] = [interface.to_dict() for interface in answer.interfaces]
        # The first transitions are ours (IN_QUEUE, then the dynamic targets); later ones are the bridge's.
        if not raw.get("transitions"):
            _append_transition(body, JobState.IN_QUEUE, message, now)
            for line in target_lines(answer.interfaces):
                _append_status_line(body, line, now)
        _set_condition(body, SUBMITTED, "True", reason=SLURM_ACCEPTED, message=message, now=now)

    return apply


def finished(state: JobState, message: str, *, condition_type: str, condition_status: ConditionStatus,
             reason: str, now: datetime) -> StatusFn:  # fmt: skip
    """The job ends here, without (further) help from Slurm: a final state, its transition and why."""

    def apply(raw_body: kopf.RawBody) -> None:
        body = cast(dict[str, Any], raw_body)
        raw = _status(body)
        current = raw.get("state")
        if current is None or not JobState(current).is_final:
            _append_transition(body, state, message, now)
            raw["reason"] = message
        _set_condition(body, condition_type, condition_status, reason=reason, message=message, now=now)

    return apply


def reported_up_to_date(status: UCloudJobStatus, reported: int) -> bool:
    """Whether Core now has every state change this status holds."""
    return reported >= len(status.transitions)


# --- outcomes: submission ------------------------------------------------------


def submit_started(now: datetime) -> dict[str, Any]:
    """The merge patch that marks the first submit call (``SUBMIT_STARTED_ANNOTATION``)."""
    return {"metadata": {"annotations": {SUBMIT_STARTED_ANNOTATION: rfc3339(now)}}}


def terminated_before_submission(now: datetime) -> Outcome:
    """Terminated before any submit call was made: the job ends without touching Slurm."""
    message = "Terminated before it was submitted to Slurm"
    ended = finished(JobState.SUCCESS, message, condition_type=CANCELLED,
                     condition_status="True", reason=SLURM_CANCELLED, now=now)  # fmt: skip
    return Outcome(fns=(ended, condition(SUBMITTED, "False", reason=CANCEL_REQUESTED, message=message, now=now)))


def instance_not_ready(instance_name: str, refusal: str | None, *, delay: float, now: datetime) -> Outcome:
    """The owner's instance cannot submit: ``refusal`` fails the job for good, else it is retried after ``delay``."""
    if refusal is not None:
        # The mapping policy refused the user: no instance will ever run, the job fails for good.
        message = f"The user cannot run jobs on this cluster: {refusal}"
        failed = finished(JobState.FAILURE, message, condition_type=SUBMITTED,
                          condition_status="False", reason=MAPPING_REFUSED, now=now)  # fmt: skip
        return Outcome(fns=(failed,), error=permanent(message))
    # Not ready yet (starting, restarting, or stopped for idleness and asked to start again).
    message = f"Waiting for the owner's instance {instance_name} to become ready"
    waiting = condition(SUBMITTED, "Unknown", reason=WAITING_FOR_INSTANCE, message=message, now=now)
    return Outcome(fns=(waiting,), error=temporary(message, delay=delay))


def account_not_ready(why: str, *, delay: float, now: datetime) -> Outcome:
    """The workspace's Slurm account or project group is not there for the owner yet (a new project, a new member)."""
    message = f"Waiting for the workspace's Slurm account and group: {why}"
    waiting = condition(SUBMITTED, "Unknown", reason=WAITING_FOR_ACCOUNT, message=message, now=now)
    return Outcome(fns=(waiting,), error=temporary(message, delay=delay))


def submit_rejected(why: str, now: datetime, *, cause: BaseException) -> Outcome:
    """sbatch refused the job (``why``, sbatch's words): it fails for good."""
    failed = finished(JobState.FAILURE, why, condition_type=SUBMITTED,
                      condition_status="False", reason=SLURM_SUBMIT_REJECTED, now=now)  # fmt: skip
    return Outcome(
        fns=(failed,),
        events=(Event("Warning", SLURM_SUBMIT_REJECTED, why),),
        error=permanent(f"Slurm refused the job: {why}", cause=cause),
    )


def submit_unreachable(error: BaseException, *, delay: float, now: datetime) -> Outcome:
    """The bridge or the instance could not be reached to submit: retried after ``delay``."""
    unknown = condition(SUBMITTED, "Unknown", reason=INSTANCE_UNREACHABLE, message=str(error), now=now)
    return Outcome(fns=(unknown,), error=temporary(str(error), delay=delay, cause=error))


def submitted(job: UCloudJob, answer: SubmitResponse, drive_id: str | None, now: datetime) -> Outcome:
    """Slurm has the job: its id and first state change are recorded, and an event says so."""
    accepted = Event("Normal", SLURM_ACCEPTED, f"Slurm job {answer.slurm_job_id}")
    return Outcome(fns=(submission_recorded(job, answer, drive_id, now),), events=(accepted,))


# --- outcomes: delivery to Core --------------------------------------------------


def core_up_to_date(status: UCloudJobStatus, reported: int, now: datetime) -> Outcome:
    """Core has the changes up to ``reported``: the counter says so, and Reported=True if it was not."""
    fns: tuple[StatusFn, ...] = ()
    if not is_true(status.conditions, REPORTED):
        fns = (condition(REPORTED, "True", reason=CORE_UP_TO_DATE, message="Core has every state change", now=now),)
    return Outcome(fns=fns, status={"reportedTransitions": reported})


def core_refused(message: str, *, delay: float, cause: BaseException, now: datetime) -> Outcome:
    """Core refused the job's updates (``message`` says how many, and why): retried after ``delay``."""
    failing = condition(REPORTED, "False", reason=CORE_DELIVERY_FAILING, message=message, now=now)
    return Outcome(fns=(failing,), error=temporary(message, delay=delay, cause=cause))


def updates_dropped(message: str, *, reported: int, now: datetime) -> Outcome:
    """Core kept refusing the job's updates: the counter passes them (to ``reported``), and a Warning says so."""
    failing = condition(REPORTED, "False", reason=CORE_DELIVERY_FAILING, message=message, now=now)
    dropped = Event("Warning", CORE_DELIVERY_FAILING, f"{message}; dropped")
    return Outcome(fns=(failing,), status={"reportedTransitions": reported}, events=(dropped,))


def core_failing(error: BaseException, *, reported: int | None, delay: float, now: datetime) -> Outcome:
    """Core could not be reached: retried after ``delay``; what it did take (``reported``) is recorded."""
    failing = condition(REPORTED, "False", reason=CORE_DELIVERY_FAILING, message=str(error), now=now)
    return Outcome(
        fns=(failing,),
        status={} if reported is None else {"reportedTransitions": reported},
        error=temporary(f"delivering to Core failed: {error}", delay=delay, cause=error),
    )


# --- outcomes: deletion ------------------------------------------------------------


@dataclass(frozen=True)
class Ending(Outcome):
    """How a deleted job ends: ``final`` is the last state Core is told (None: the job had ended already)."""

    final: tuple[JobState, str] | None = None


def last_updates(
    job: UCloudJob, delivered: int, final: tuple[JobState, str] | None, now: datetime
) -> list[JobUpdateItem]:
    """What Core has not heard of a deleted job, and ``final`` at the end, so that it does not stay active there."""
    items = job_updates(job, unreported(job.status, delivered)[1])
    if final is not None:
        state, message = final
        transition = JobTransition(state=state, timestamp=millis(now), message=message)
        items.extend(job_updates(job, [transition]))
    return items

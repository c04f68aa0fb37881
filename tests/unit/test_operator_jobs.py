"""The pure functions behind the UCloudJob handlers: requests, Core updates, status patch functions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest

from ucim.common import reasons
from ucim.common.instance_api import SubmitResponse
from ucim.common.protocol import JobState, JobUpdate, dump
from ucim.common.resources import JobInterface, JobTransition, UCloudJob, UCloudJobStatus
from ucim.operator import jobs
from ucim.operator.outcomes import Event, Outcome, StatusFn, temporary

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T0_MS = 1_772_366_400_000


def job_obj(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ucim.io/v1alpha1",
        "kind": "UCloudJob",
        "metadata": {"name": "ucloud-4711-abc", "namespace": "ucim", "uid": "0b5e-uid", "generation": 1},
        "spec": {
            "jobId": "4711",
            "owner": "alice#1234",
            "cluster": "local",
            "application": {"name": "run-command", "version": "1"},
            "product": {"id": "cpu-1", "category": "cpu", "provider": "ucim"},
            "slurm": {"partition": "normal"},
            "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 1000, "timeLimitMinutes": 5},
            "parameters": {"command": {"type": "text", "value": "echo hi"}},
            **spec,
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def apply(fn: StatusFn, obj: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    fn(cast(kopf.RawBody, changed))
    return changed


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}


def test_the_slurm_job_name_is_the_objects_identity() -> None:
    job = UCloudJob.from_obj(job_obj())
    assert jobs.slurm_job_name(job) == "ucim-0b5e-uid"
    assert jobs.submit_request(job).slurm_job_name == jobs.slurm_job_name(job)


def test_submit_request_carries_the_spec() -> None:
    request = jobs.submit_request(UCloudJob.from_obj(job_obj()))
    wire = request.model_dump(mode="json", by_alias=True)
    assert wire["jobId"] == "4711"
    assert (wire["application"]["name"], wire["application"]["version"]) == ("run-command", "1")
    assert wire["product"] == {"id": "cpu-1", "category": "cpu", "provider": "ucim"}
    assert wire["resources"]["timeLimitMinutes"] == 5
    assert wire["slurm"]["partition"] == "normal"
    assert wire["parameters"]["command"]["value"] == "echo hi"


def test_submit_request_carries_the_workspaces_account_and_drive() -> None:
    request = jobs.submit_request(UCloudJob.from_obj(job_obj(project="p1")), "pp1_cpu", "project:pp1")
    wire = request.model_dump(mode="json", by_alias=True)
    assert (wire["slurm"]["account"], wire["drive"]) == ("pp1_cpu", "project:pp1")
    assert jobs.submit_request(UCloudJob.from_obj(job_obj())).drive is None, "without one: the owner's home"


def test_the_account_a_user_picked_is_taken_only_as_text() -> None:
    picked = {"_injected_slurmAccount": {"type": "text", "value": "alice_gpu"}}
    assert jobs.chosen_account(UCloudJob.from_obj(job_obj(parameters=picked))) == "alice_gpu"
    assert jobs.chosen_account(UCloudJob.from_obj(job_obj())) is None
    empty = {"_injected_slurmAccount": {"type": "text", "value": ""}}
    assert jobs.chosen_account(UCloudJob.from_obj(job_obj(parameters=empty))) is None


def test_a_job_waits_for_its_workspace_with_the_reason() -> None:
    outcome = jobs.account_not_ready("the bridge has not made the project's Unix group yet", delay=2.0, now=T0)
    waiting = apply(outcome.fns[0], job_obj())
    assert conditions(waiting)[reasons.SUBMITTED] == ("Unknown", reasons.WAITING_FOR_ACCOUNT)
    assert "Unix group" in waiting["status"]["conditions"][0]["message"]
    assert isinstance(outcome.error, kopf.TemporaryError)


def test_submit_request_without_placement_or_parameters() -> None:
    obj = job_obj()
    del obj["spec"]["slurm"], obj["spec"]["parameters"]
    request = jobs.submit_request(UCloudJob.from_obj(obj))
    assert request.parameters == {}
    assert request.slurm.partition is None


def transitions(*states: JobState) -> list[JobTransition]:
    return [JobTransition(state=s, timestamp=T0_MS + i, message=s.value.lower()) for i, s in enumerate(states)]


def test_unreported_is_what_core_has_not_acknowledged() -> None:
    status = UCloudJobStatus(transitions=transitions(JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS))
    assert jobs.unreported(status) == (0, status.transitions)
    status.reported_transitions = 2
    assert jobs.unreported(status) == (2, status.transitions[2:])
    # What this process delivered counts even when the status it reads is older than its own write.
    assert jobs.unreported(status, delivered=3) == (3, [])
    # A counter beyond the list (never written so, but read defensively) means nothing is pending.
    status.reported_transitions = 9
    assert jobs.unreported(status) == (3, [])


def test_job_updates_come_from_transitions_with_every_key_written() -> None:
    job = UCloudJob.from_obj(
        job_obj({"jobFolder": "/home/alice/ucloud-jobs/4711", "outputFolder": "/17/ucloud-jobs/4711"})
    )
    items = jobs.job_updates(job, transitions(JobState.IN_QUEUE, JobState.RUNNING))
    assert [item.id for item in items] == ["4711", "4711"]
    first = dump(items[0])["update"]
    assert first == {
        "state": "IN_QUEUE",
        # Core's outputFolder is a UCloud path (/<drive id>/…), which it opens through the provider's file calls.
        "outputFolder": "/17/ucloud-jobs/4711",
        "status": "in_queue",
        "expectedState": None,
        "expectedDifferentState": None,
        "newTimeAllocation": None,
        "allowRestart": None,
        "resourceList": None,
        "timestamp": T0_MS,
    }
    assert dump(items[1])["update"]["state"] == "RUNNING"


def test_first_visit_sets_conditions_once() -> None:
    obj = apply(jobs.first_visit(T0), job_obj())
    assert conditions(obj) == {
        reasons.SUBMITTED: ("Unknown", "WaitingForInstance"),
        reasons.REPORTED: ("True", "CoreUpToDate"),
    }
    assert obj["status"]["observedGeneration"] == 1
    again = apply(jobs.first_visit(T0 + timedelta(minutes=1)), obj)
    assert again == obj


def test_a_condition_change_keeps_the_others() -> None:
    obj = apply(jobs.first_visit(T0), job_obj())
    obj = apply(jobs.condition(reasons.CANCELLED, "Unknown", reason="CancelRequested", message="", now=T0), obj)
    obj = apply(jobs.condition(reasons.REPORTED, "False", reason="CoreDeliveryFailing", message="down", now=T0), obj)
    assert conditions(obj) == {
        reasons.SUBMITTED: ("Unknown", "WaitingForInstance"),
        reasons.REPORTED: ("False", "CoreDeliveryFailing"),
        reasons.CANCELLED: ("Unknown", "CancelRequested"),
    }


def test_submission_is_recorded_with_the_first_transition() -> None:
    job = UCloudJob.from_obj(job_obj())
    answer = SubmitResponse(
        slurm_job_id=77, job_folder="/home/alice/ucloud-jobs/4711", folder_in_drive="ucloud-jobs/4711"
    )
    obj = apply(jobs.submission_recorded(job, answer, "17", T0), job_obj())
    status = obj["status"]
    assert (status["slurmJobId"], status["jobFolder"], status["outputFolder"], status["providerGeneratedId"]) == (
        77, "/home/alice/ucloud-jobs/4711", "/17/ucloud-jobs/4711", job.metadata.name,
    )  # fmt: skip
    assert status["submittedAt"] == "2026-03-01T12:00:00Z"
    assert status["state"] == "IN_QUEUE"
    first = {
        "state": "IN_QUEUE",
        "timestamp": T0_MS,
        "message": "Your job has been submitted to the queue (Slurm ID: 77)",
    }
    assert status["transitions"] == [first]
    assert conditions(obj)[reasons.SUBMITTED] == ("True", "SlurmAccepted")
    # The status model reads back what the function wrote.
    assert UCloudJob.from_obj(obj).status.slurm_job_id == 77


def test_interfaces_are_recorded_and_dynamic_targets_told_to_core() -> None:
    job = UCloudJob.from_obj(job_obj())
    interfaces = [
        JobInterface(type="WEB", port=23817),
        JobInterface(type="WEB", port=8888, rank=0, target="lab"),
        JobInterface(type="VNC", port=5901, rank=1, target="desk"),
    ]
    answer = SubmitResponse(slurm_job_id=77, job_folder="/f", folder_in_drive="ucloud-jobs/4711", interfaces=interfaces)
    status = UCloudJob.from_obj(apply(jobs.submission_recorded(job, answer, "17", T0), job_obj())).status
    assert status.interfaces == interfaces
    # IM2's words exactly: Core's frontend parses these lines into the job's interface buttons.
    assert [(t.state, t.message) for t in status.transitions[1:]] == [
        (None, 'Target: {"rank":0,"type":"WEB","target":"lab","port":8888,"defaultName":null}'),
        (None, 'Target: {"rank":1,"type":"VNC","target":"desk","port":5901,"defaultName":null}'),
    ]
    update = jobs.job_update(status.transitions[1], "/17/ucloud-jobs/4711")
    assert update.state is None and update.status is not None and update.status.startswith("Target: ")


def test_recording_a_submission_twice_changes_nothing() -> None:
    job = UCloudJob.from_obj(job_obj())
    answer = SubmitResponse(slurm_job_id=77, job_folder="/f", folder_in_drive="ucloud-jobs/4711")
    once = apply(jobs.submission_recorded(job, answer, "17", T0), job_obj())
    twice = apply(jobs.submission_recorded(job, answer, "17", T0 + timedelta(seconds=5)), once)
    assert twice == once


def test_a_recorded_submission_never_rewrites_the_bridges_transitions() -> None:
    # The bridge appended RUNNING after an earlier write of ours; a late re-application must keep it.
    bridge_wrote = {
        "slurmJobId": 77,
        "state": "RUNNING",
        "transitions": [
            {"state": "IN_QUEUE", "timestamp": T0_MS, "message": "Submitted"},
            {"state": "RUNNING", "timestamp": T0_MS + 1000},
        ],
    }
    job = UCloudJob.from_obj(job_obj())
    answer = SubmitResponse(
        slurm_job_id=77, job_folder="/f", folder_in_drive="ucloud-jobs/4711", already_submitted=True
    )
    obj = apply(jobs.submission_recorded(job, answer, None, T0), job_obj(bridge_wrote))
    assert obj["status"]["transitions"] == bridge_wrote["transitions"]
    assert obj["status"]["state"] == "RUNNING"


def test_a_rejection_ends_the_job_with_sbatchs_words() -> None:
    why = "sbatch: error: Invalid time limit specification"
    fn = jobs.finished(JobState.FAILURE, why, condition_type=reasons.SUBMITTED, condition_status="False",
                       reason=reasons.SLURM_SUBMIT_REJECTED, now=T0)  # fmt: skip
    obj = apply(fn, job_obj())
    assert obj["status"]["state"] == "FAILURE"
    assert obj["status"]["reason"] == why
    assert obj["status"]["transitions"] == [{"state": "FAILURE", "timestamp": T0_MS, "message": why}]
    assert conditions(obj)[reasons.SUBMITTED] == ("False", reasons.SLURM_SUBMIT_REJECTED)
    # A final state is final: applying it again appends nothing.
    assert apply(fn, obj)["status"]["transitions"] == obj["status"]["transitions"]


def test_submission_attempt_is_read_from_the_annotation() -> None:
    obj = job_obj()
    assert not jobs.submit_attempted(UCloudJob.from_obj(obj))
    obj["metadata"]["annotations"] = {jobs.SUBMIT_STARTED_ANNOTATION: "2026-03-01T12:00:00Z"}
    assert jobs.submit_attempted(UCloudJob.from_obj(obj))


def test_changes_core_already_holds_are_not_sent_again() -> None:
    pending = [
        JobTransition(state=JobState.RUNNING, timestamp=2, message="running"),
        JobTransition(state=JobState.SUCCESS, timestamp=3, message="completed"),
    ]
    at_core = [JobUpdate(state=JobState.IN_QUEUE, timestamp=1), JobUpdate(state=JobState.RUNNING, timestamp=2)]
    assert jobs.already_at_core(pending, at_core) == 1
    assert jobs.already_at_core(pending, []) == 0
    # Only a leading run counts: a gap means everything from the gap on is sent.
    assert jobs.already_at_core(pending, [JobUpdate(state=JobState.SUCCESS, timestamp=3)]) == 0


# --- outcomes ---------------------------------------------------------------------


def outcome_on(outcome: Outcome, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the outcome's patch functions and status fields leave it."""
    for fn in outcome.fns:
        obj = apply(fn, obj)
    obj.setdefault("status", {}).update(outcome.status)
    return obj


def test_an_outcome_patches_posts_its_events_and_then_ends_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    posted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda _, *, type, reason, message: posted.append((type, reason, message)))
    cause = RuntimeError("the instance is gone")
    outcome = Outcome(
        fns=(
            jobs.condition(
                reasons.SUBMITTED, "Unknown", reason=reasons.WAITING_FOR_INSTANCE, message="waiting", now=T0
            ),
        ),
        status={"reportedTransitions": 2},
        events=(Event("Warning", reasons.WAITING_FOR_INSTANCE, "waiting"),),
        error=temporary("waiting", delay=1.5, cause=cause),
    )
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as raised:
        outcome.apply(kopf.Body(cast(kopf.RawBody, job_obj())), patch)
    assert raised.value.delay == 1.5
    assert raised.value.__cause__ is cause
    assert patch.fns == list(outcome.fns)
    assert dict(patch) == {"status": {"reportedTransitions": 2}}
    assert posted == [("Warning", reasons.WAITING_FOR_INSTANCE, "waiting")]
    # An outcome without status fields leaves the merge patch empty (kopf then sends nothing for it).
    empty = kopf.Patch()
    Outcome().apply(kopf.Body(cast(kopf.RawBody, job_obj())), empty)
    assert not empty


def test_a_job_terminated_before_submission_ends_without_slurm() -> None:
    outcome = jobs.terminated_before_submission(T0)
    obj = outcome_on(outcome, job_obj())
    assert outcome.error is None
    assert obj["status"]["state"] == "SUCCESS"
    assert conditions(obj) == {
        reasons.CANCELLED: ("True", reasons.SLURM_CANCELLED),
        reasons.SUBMITTED: ("False", reasons.CANCEL_REQUESTED),
    }


def test_an_instance_that_cannot_submit() -> None:
    refused = jobs.instance_not_ready("alice-local", "no local account", delay=2.0, now=T0)
    assert isinstance(refused.error, kopf.PermanentError)
    obj = outcome_on(refused, job_obj())
    assert obj["status"]["state"] == "FAILURE"
    assert obj["status"]["reason"] == "The user cannot run jobs on this cluster: no local account"
    assert conditions(obj)[reasons.SUBMITTED] == ("False", reasons.MAPPING_REFUSED)

    starting = jobs.instance_not_ready("alice-local", None, delay=2.0, now=T0)
    assert isinstance(starting.error, kopf.TemporaryError) and starting.error.delay == 2.0
    obj = outcome_on(starting, job_obj())
    assert "state" not in obj["status"]
    assert conditions(obj)[reasons.SUBMITTED] == ("Unknown", reasons.WAITING_FOR_INSTANCE)


def test_what_a_submit_call_comes_to() -> None:
    job = UCloudJob.from_obj(job_obj())
    answer = SubmitResponse(slurm_job_id=42, job_folder="/home/alice/jobs/4711", folder_in_drive="jobs/4711")
    accepted = jobs.submitted(job, answer, "17", T0)
    assert accepted.error is None
    assert accepted.events == (Event("Normal", reasons.SLURM_ACCEPTED, "Slurm job 42"),)
    assert outcome_on(accepted, job_obj())["status"]["slurmJobId"] == 42

    cause = RuntimeError("sbatch: error: invalid partition")
    rejected = jobs.submit_rejected("invalid partition", T0, cause=cause)
    assert isinstance(rejected.error, kopf.PermanentError) and rejected.error.__cause__ is cause
    assert rejected.events == (Event("Warning", reasons.SLURM_SUBMIT_REJECTED, "invalid partition"),)
    assert outcome_on(rejected, job_obj())["status"]["state"] == "FAILURE"

    unreachable = jobs.submit_unreachable(cause, delay=4.0, now=T0)
    assert isinstance(unreachable.error, kopf.TemporaryError) and unreachable.error.delay == 4.0
    assert conditions(outcome_on(unreachable, job_obj()))[reasons.SUBMITTED] == (
        "Unknown",
        reasons.INSTANCE_UNREACHABLE,
    )


def test_what_a_delivery_to_core_comes_to() -> None:
    obj = job_obj({"transitions": [t.to_dict() for t in transitions(JobState.IN_QUEUE)]})
    delivered = jobs.core_up_to_date(UCloudJobStatus.model_validate(obj["status"]), 1, T0)
    assert delivered.status == {"reportedTransitions": 1}
    obj = outcome_on(delivered, obj)
    assert conditions(obj)[reasons.REPORTED] == ("True", reasons.CORE_UP_TO_DATE)
    # Reported=True stays as it is.
    assert jobs.core_up_to_date(UCloudJobStatus.model_validate(obj["status"]), 1, T0).fns == ()

    cause = RuntimeError("Core answered 404")
    refused = jobs.core_refused("Core refused 1 state change(s): no such job", delay=30.0, cause=cause, now=T0)
    assert isinstance(refused.error, kopf.TemporaryError) and refused.status == {}
    dropped = jobs.updates_dropped("Core refused 1 state change(s): no such job", reported=1, now=T0)
    assert dropped.error is None and dropped.status == {"reportedTransitions": 1}
    assert dropped.events == (
        Event("Warning", reasons.CORE_DELIVERY_FAILING, "Core refused 1 state change(s): no such job; dropped"),
    )

    down = jobs.core_failing(cause, reported=None, delay=1.0, now=T0)
    assert isinstance(down.error, kopf.TemporaryError) and down.status == {}
    assert str(down.error) == "delivering to Core failed: Core answered 404"
    assert jobs.core_failing(cause, reported=3, delay=1.0, now=T0).status == {"reportedTransitions": 3}
    assert conditions(outcome_on(down, job_obj()))[reasons.REPORTED] == ("False", reasons.CORE_DELIVERY_FAILING)


def test_a_deleted_job_tells_core_what_it_missed_and_how_it_ended() -> None:
    sent = transitions(JobState.IN_QUEUE, JobState.RUNNING)
    job = UCloudJob.from_obj(job_obj({"transitions": [t.to_dict() for t in sent], "reportedTransitions": 1}))
    assert [item.update.state for item in jobs.last_updates(job, 0, None, T0)] == [JobState.RUNNING]
    final = (JobState.SUCCESS, "Cancelled: the job was deleted on the provider")
    items = jobs.last_updates(job, 2, final, T0)
    assert [(item.update.state, item.update.status, item.update.timestamp) for item in items] == [
        (JobState.SUCCESS, "Cancelled: the job was deleted on the provider", T0_MS)
    ]

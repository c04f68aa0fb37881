"""UCloudJobs and Core's extend items for the walltime extension tests (the valid sample, made to run)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ucim.common.protocol import JobExtendRequestItem, SimpleDuration
from ucim.common.resources import UCloudJob
from ucim.testing.core_standin import make_job

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "valid" / "ucloudjob.yaml"
OWNER = "alice#1234"  # the sample's
REQUESTED_AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def sample_job(state: str | None = "RUNNING", *, asked: list[dict[str, Any]] | None = None, **status: Any) -> UCloudJob:
    """The sample job (5 minutes in partition normal), in Slurm as job 42, with ``asked`` as its spec.extensions
    and ``status`` (``extensions=[outcome(...)]``, say) over its status."""
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"].update(name=UCloudJob.name_for(obj["spec"]["jobId"]), resourceVersion="7")
    if asked is not None:
        obj["spec"]["extensions"] = asked
    base: dict[str, Any] = {"slurmJobId": 42, "transitions": [{"state": "IN_QUEUE", "timestamp": 1, "message": "q"}]}
    if state is not None:
        base["state"] = state
    obj["status"] = {**base, **status}
    return UCloudJob.from_obj(obj)


def extension(id_: str, add: int, total: int) -> dict[str, Any]:
    return {"id": id_, "addMinutes": add, "timeLimitMinutes": total, "requestedAt": "2026-12-01T12:00:00Z"}


def outcome(id_: str, result: str = "Applied", message: str = "done") -> dict[str, Any]:
    return {"id": id_, "result": result, "message": message, "at": "2026-12-01T12:00:01Z"}


def extend_item(
    requested: SimpleDuration, *, allocation: SimpleDuration | None = None, job_id: str = "4711", owner: str = OWNER
) -> JobExtendRequestItem:
    """Core's item: the job as Core holds it (its time allocation) and the time to add."""
    job = make_job(job_id, owner, time_allocation=allocation or SimpleDuration(minutes=5))
    return JobExtendRequestItem(job=job, requested_time=requested)

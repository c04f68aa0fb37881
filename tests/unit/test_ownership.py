"""One writer per status field: the table in docs/architecture.md, STATUS_OWNERS and the code agree."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import yaml

from ucim.common.instance_api import SubmitResponse
from ucim.common.ownership import STATUS_OWNERS, OwnershipError, check_writer
from ucim.common.protocol import JobState
from ucim.common.reasons import CANCELLED, SLURM_CANCELLED, SUBMITTED
from ucim.common.resources import UCloudJob
from ucim.operator import jobs
from ucim.operator.outcomes import StatusFn

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROW = re.compile(
    r"^\| (UCloudJob|UserInstance|UserConnection|UCloudProject) \| `([^`]+)` \| ([a-z, ]+) \|", re.MULTILINE
)


def documented() -> dict[tuple[str, str], tuple[str, ...]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return {(kind, field): tuple(o.strip() for o in owners.split(",")) for kind, field, owners in ROW.findall(text)}


def test_the_documented_table_is_the_one_in_the_code() -> None:
    assert documented() == STATUS_OWNERS


@pytest.mark.parametrize("plural", ["ucloudjobs", "userinstances", "userconnections", "ucloudprojects"])
def test_every_status_field_of_every_crd_has_an_owner(plural: str) -> None:
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.ucim.io.yaml").read_text())
    kind = crd["spec"]["names"]["kind"]
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    owned = {field.split("[")[0] for k, field in STATUS_OWNERS if k == kind}
    assert set(status) - {"observedGeneration"} <= owned | {"observedGeneration"}, kind
    assert owned <= set(status), kind


def test_a_component_may_write_only_its_own_fields() -> None:
    check_writer("bridge", "UCloudJob", {"slurmState": "RUNNING", "transitions": []})
    check_writer("gateway", "UserConnection", {"conditions": [{"type": "Connected"}]})
    with pytest.raises(OwnershipError, match=r"gateway may not write UserConnection status\.conditions\[Mapped\]"):
        check_writer("gateway", "UserConnection", {"conditions": [{"type": "Mapped"}]})
    with pytest.raises(OwnershipError, match=r"operator may not write UserInstance status\.conditions"):
        check_writer("operator", "UserInstance", {"conditions": []})
    with pytest.raises(OwnershipError, match=r"bridge may not write UCloudJob status\.reportedTransitions"):
        check_writer("bridge", "UCloudJob", {"reportedTransitions": 3})


def _job() -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "crds" / "samples" / "valid" / "ucloudjob.yaml").read_text())
    obj["metadata"]["uid"] = "u-1"
    obj["metadata"]["generation"] = 1
    obj.pop("status", None)
    return dict(obj)


def _written(fn: StatusFn) -> set[str]:
    """The status fields a kopf patch function changes on a job."""
    body = _job()
    before = copy.deepcopy(body.get("status") or {})
    fn(cast(kopf.RawBody, body))
    after = body.get("status") or {}
    return {key for key in set(before) | set(after) if before.get(key) != after.get(key)}


def test_the_operators_patch_functions_write_only_the_operators_fields() -> None:
    job = UCloudJob.from_obj(_job())
    answer = SubmitResponse(slurm_job_id=7, job_folder="/home/alice/ucloud-jobs/1", folder_in_drive="ucloud-jobs/1")
    functions = [
        jobs.first_visit(NOW),
        jobs.condition(SUBMITTED, "Unknown", reason="WaitingForInstance", message="m", now=NOW),
        jobs.submission_recorded(job, answer, "3", NOW),
        jobs.finished(
            JobState.SUCCESS,
            "terminated",
            condition_type=CANCELLED,
            condition_status="True",
            reason=SLURM_CANCELLED,
            now=NOW,
        ),
    ]
    written = set().union(*map(_written, functions))
    assert written == {"conditions", "observedGeneration", "slurmJobId", "submittedAt", "jobFolder", "outputFolder",
                       "providerGeneratedId", "state", "transitions", "reason"}  # fmt: skip
    for field in written:
        assert "operator" in STATUS_OWNERS[("UCloudJob", field)], field

"""The wire models read and write JSON exactly as UCloud/Core's Go code does."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from ucim.common.protocol import (
    AccessTokenAndCsrf,
    AppParameterValue,
    BulkRequest,
    BulkResponse,
    ConnectResponse,
    FindByStringId,
    FindByUsername,
    HttpError,
    IntegrationManifest,
    Job,
    JobState,
    JobSupport,
    JobUpdate,
    JobUpdateItem,
    PageV2,
    ProductReference,
    ProductV2,
    RefreshTokenItem,
    ReportUsageRequest,
    SimpleDuration,
    UniversalBackendSupport,
    WalletOwner,
    decode_username,
    dump,
    dump_json,
    encode_username,
)

CREATED_AT = 1_767_225_600_123


def go_parameter(type_: str, **relevant: Any) -> dict[str, Any]:
    """An AppParameterValue as Go writes it: every key, zero values where they do not apply."""
    value: dict[str, Any] = {
        "type": type_,
        "path": "",
        "mountPath": "",
        "readOnly": False,
        "value": None,
        "hostname": "",
        "jobId": "",
        "id": "",
        "specification": {
            "applicationName": "",
            "language": "",
            "init": None,
            "job": None,
            "readme": None,
            "inputs": None,
        },
        "modules": None,
        "port": 0,
        "tls": False,
        "server": "",
        "token": "",
        "tokenType": "",
    }
    value.update(relevant)
    return value


PRODUCT_REF = {"id": "u1-standard-2", "category": "u1-standard", "provider": "hippo"}

GO_PRODUCT = {
    "type": "compute",
    "category": {
        "name": "u1-standard",
        "provider": "hippo",
        "productType": "COMPUTE",
        "accountingUnit": {
            "name": "Core",
            "namePlural": "Cores",
            "floatingPoint": False,
            "displayFrequencySuffix": True,
        },
        "accountingFrequency": "PERIODIC_MINUTE",
    },
    "name": "u1-standard-2",
    "description": "A compute product",
    "productType": "COMPUTE",
    "price": 2,
    "fraction": {"numerator": 1, "denominator": 1},
    "hiddenInGrantApplications": False,
    "usage": None,
    "cpu": 2,
    "memoryInGigs": 8,
    "balance": 0,
    "maxUsableBalance": 0,
    "pricePerUnit": 0,
}

# A job as core2 sends it to POST /ucloud/hippo/jobs: every Option key present, nil
# slices and maps as null, omitempty keys left out.
GO_JOB: dict[str, Any] = {
    "id": "4211",
    "createdAt": CREATED_AT,
    "owner": {"createdBy": "alice#4821", "project": None},
    "permissions": None,
    "updates": None,
    "specification": {
        "product": PRODUCT_REF,
        "labels": None,
        "application": {"name": "hello-world", "version": "1.2"},
        "name": "my run",
        "hostname": None,
        "replicas": 1,
        "allowDuplicateJob": False,
        "parameters": {
            "message": go_parameter("text", value="hello"),
            "count": go_parameter("integer", value=3),
            "verbose": go_parameter("boolean", value=True),
            "data": go_parameter("file", path="/17/inputs", readOnly=True),
        },
        "resources": None,
        "timeAllocation": {"hours": 1, "minutes": 30, "seconds": 0},
    },
    "status": {
        "state": "IN_QUEUE",
        "jobParametersJson": None,
        "startedAt": None,
        "expiresAt": None,
        "resolvedApplication": None,
        "resolvedProduct": GO_PRODUCT,
        "resolvedSupport": {
            "product": GO_PRODUCT,
            "support": {
                "product": PRODUCT_REF,
                "docker": {},
                "virtualMachine": {},
                "native": {"enabled": True, "logs": True},
                "queueStatus": None,
            },
            "features": None,
        },
        "allowRestart": False,
    },
    "output": {"outputFolder": None},
}


def test_a_go_job_reads_with_its_nulls() -> None:
    job = Job.model_validate(GO_JOB)

    assert job.id == "4211"
    assert job.created_at == CREATED_AT
    assert job.owner.created_by == "alice#4821"
    assert job.updates is None
    assert job.specification.labels is None
    assert job.specification.resources is None
    assert job.specification.time_allocation == SimpleDuration(hours=1, minutes=30)
    params = job.specification.parameters or {}
    assert params["message"].value == "hello"
    assert params["count"].value == 3
    assert params["data"].path == "/17/inputs"
    assert params["data"].read_only is True
    assert job.status.state is JobState.IN_QUEUE
    assert job.status.resolved_support is not None
    assert job.status.resolved_support.support.native.enabled is True


def test_a_go_job_round_trips_to_the_same_json() -> None:
    assert dump(Job.model_validate(GO_JOB)) == GO_JOB


def test_output_keys_are_camel_case() -> None:
    wire = dump(Job.model_validate(GO_JOB))
    assert "createdAt" in wire
    assert "timeAllocation" in wire["specification"]
    assert "created_at" not in wire


def test_unknown_keys_are_ignored() -> None:
    job = copy.deepcopy(GO_JOB)
    job["somethingNew"] = {"x": 1}
    job["specification"]["parameters"]["message"]["futureKey"] = True
    assert "somethingNew" not in dump(Job.model_validate(job))


def test_nil_maps_and_slices_may_arrive_as_null_or_be_absent() -> None:
    job = copy.deepcopy(GO_JOB)
    job["specification"]["parameters"] = None
    del job["specification"]["labels"]
    job["updates"] = None
    parsed = Job.model_validate(job)
    assert parsed.specification.parameters is None
    assert parsed.specification.labels is None
    assert dump(parsed)["specification"]["labels"] is None


def test_a_minimal_parameter_value_reads_and_is_written_with_every_key() -> None:
    value = AppParameterValue.model_validate({"type": "text", "value": "hi"})
    assert value.value == "hi"
    assert dump(value) == go_parameter("text", value="hi")


def test_parameter_constructors_write_the_go_shape() -> None:
    assert dump(AppParameterValue.file("/17/a", read_only=True)) == go_parameter("file", path="/17/a", readOnly=True)
    assert dump(AppParameterValue.peer("node1", "42")) == go_parameter("peer", hostname="node1", jobId="42")
    assert dump(AppParameterValue.resource("ingress", "77")) == go_parameter("ingress", id="77")


@pytest.mark.parametrize("created_at", [1.767e12, "1767225600123", None, True])
def test_a_job_timestamp_must_be_an_integer(created_at: Any) -> None:
    job = copy.deepcopy(GO_JOB)
    job["createdAt"] = created_at
    with pytest.raises(ValidationError):
        Job.model_validate(job)


def test_a_float_timestamp_in_json_text_is_rejected() -> None:
    text = json.dumps(GO_JOB).replace(str(CREATED_AT), "1.767225600123e12")
    with pytest.raises(ValidationError):
        Job.model_validate_json(text)


def test_a_job_update_writes_every_key() -> None:
    update = JobUpdate(state=JobState.RUNNING, status="Running on node c1", timestamp=CREATED_AT)
    assert dump(update) == {
        "state": "RUNNING",
        "outputFolder": None,
        "status": "Running on node c1",
        "expectedState": None,
        "expectedDifferentState": None,
        "newTimeAllocation": None,
        "allowRestart": None,
        "resourceList": None,
        "timestamp": CREATED_AT,
    }


def test_the_update_request_is_items_of_id_and_update() -> None:
    request = BulkRequest[JobUpdateItem](
        items=[JobUpdateItem(id="4211", update=JobUpdate(state=JobState.SUCCESS, timestamp=CREATED_AT))]
    )
    wire = json.loads(dump_json(request))
    assert wire["items"][0]["id"] == "4211"
    assert wire["items"][0]["update"]["state"] == "SUCCESS"
    assert isinstance(wire["items"][0]["update"]["timestamp"], int)


@pytest.mark.parametrize("timestamp", [None, 1.5, "1767225600123"])
def test_a_job_update_needs_an_integer_timestamp(timestamp: Any) -> None:
    with pytest.raises(ValidationError):
        JobUpdate.model_validate({"state": "RUNNING", "timestamp": timestamp})
    with pytest.raises(ValidationError):
        JobUpdate.model_validate({"state": "RUNNING"})


def test_omitempty_booleans_are_absent_when_false() -> None:
    assert dump(UniversalBackendSupport()) == {}
    support = JobSupport(
        product=ProductReference.model_validate(PRODUCT_REF),
        native=UniversalBackendSupport(enabled=True, logs=True, terminal=True),
    )
    assert dump(support) == {
        "product": PRODUCT_REF,
        "docker": {},
        "virtualMachine": {},
        "native": {"enabled": True, "logs": True, "terminal": True},
        "queueStatus": None,
    }


def test_plain_model_dump_writes_the_same_wire_form() -> None:
    support = JobSupport(
        product=ProductReference.model_validate(PRODUCT_REF), native=UniversalBackendSupport(time_extension=True)
    )
    assert support.model_dump(mode="json") == dump(support)
    assert json.loads(support.model_dump_json()) == dump(support)
    assert json.loads(dump_json(support)) == dump(support)
    assert support.model_dump(by_alias=False)["native"] == {"time_extension": True}


def test_a_product_leaves_out_empty_omitempty_fields() -> None:
    product = ProductV2.model_validate(GO_PRODUCT)
    assert product.to_reference() == ProductReference.model_validate(PRODUCT_REF)
    storage = dump(ProductV2.model_validate({**GO_PRODUCT, "cpu": 0, "memoryInGigs": 0, "type": "storage"}))
    assert "cpu" not in storage
    assert "memoryInGigs" not in storage
    assert storage["usage"] is None
    assert storage["fraction"] == {"numerator": 1, "denominator": 1}


def test_bulk_envelopes_accept_absent_or_null_items_and_leave_an_empty_list_out() -> None:
    assert BulkRequest[Job].model_validate({}).items == []
    assert BulkRequest[Job].model_validate({"items": None}).items == []
    assert BulkResponse[FindByStringId].model_validate({"responses": None}).responses == []
    assert dump(BulkRequest[Job]()) == {}
    assert dump(BulkResponse[FindByStringId](responses=[FindByStringId(id="slurm/17/1")])) == {
        "responses": [{"id": "slurm/17/1"}]
    }


def test_a_page_never_writes_null_items() -> None:
    page = PageV2[FindByStringId].model_validate({"items": None, "itemsPerPage": 50, "next": None})
    assert dump(page) == {"items": [], "itemsPerPage": 50, "next": None}


def test_the_error_envelope_has_every_key() -> None:
    assert dump(HttpError.of(404, "unknown job")) == {
        "statusCode": 404,
        "why": "Unknown job",
        "errorCode": "",
        "detailedCode": 0,
    }
    parsed = HttpError.model_validate({"statusCode": 400, "why": "Invalid request supplied"})
    assert parsed.error_code == ""


def test_refresh_and_integration_messages() -> None:
    assert dump(BulkRequest[RefreshTokenItem](items=[RefreshTokenItem(refresh_token="r")])) == {
        "items": [{"refreshToken": "r"}]
    }
    answer = BulkResponse[AccessTokenAndCsrf].model_validate({"responses": [{"accessToken": "jwt"}]})
    assert answer.responses[0].access_token == "jwt"
    assert dump(answer) == {"responses": [{"accessToken": "jwt", "csrfToken": ""}]}
    assert dump(FindByUsername(username="alice#4821")) == {"username": "alice#4821"}
    assert dump(ConnectResponse(redirect_to="https://cloud.sdu.dk")) == {"redirectTo": "https://cloud.sdu.dk"}
    assert dump(IntegrationManifest(enabled=True)) == {"enabled": True, "expireAfterMs": None}


def test_simple_duration_in_milliseconds() -> None:
    duration = SimpleDuration(hours=1, minutes=30, seconds=15)
    assert duration.to_millis() == 5_415_000
    assert SimpleDuration.from_millis(5_415_000) == duration


@pytest.mark.parametrize("username", ["alice#4821", "Bob_Smith@example.org", "øresund~?>", "a"])
def test_usernames_decode_from_both_alphabets_padded_or_not(username: str) -> None:
    raw = username.encode()
    standard = base64.b64encode(raw).decode()
    url_safe = base64.urlsafe_b64encode(raw).decode()
    assert encode_username(username) == standard
    for form in {standard, standard.rstrip("="), url_safe, url_safe.rstrip("=")}:
        assert decode_username(form) == username


def test_a_standard_alphabet_character_is_kept() -> None:
    # "?>" encodes with '/' and '+' in the standard alphabet, '_' and '-' in the URL-safe one.
    assert "/" in encode_username("ø?>?")
    assert decode_username(base64.urlsafe_b64encode("ø?>?".encode()).decode()) == "ø?>?"


@pytest.mark.parametrize("garbage", ["", "====", "a", "abcde", "not base64!", "YWxp Y2U", "/w==", "AA=="])
def test_garbage_usernames_are_rejected(garbage: str) -> None:
    with pytest.raises(ValueError, match="not a base64 username"):
        decode_username(garbage)


def test_usage_reports_are_written_as_im2_writes_them() -> None:
    # PROTOCOL-ACCOUNTING.md §2.1: all three owner keys, the unused id as "", Option fields as null.
    wire = {
        "isDeltaCharge": False,
        "owner": {"type": "project", "username": "", "projectId": "94056ba8"},
        "categoryIdV2": {"name": "storage", "provider": "slurm"},
        "usage": 37,
        "description": {"scope": "slurm-storage-projects", "description": None},
    }

    parsed = ReportUsageRequest.model_validate(wire)

    assert dump(parsed) == wire
    assert parsed.owner.reference == "94056ba8"
    assert dump(WalletOwner.user("Donna#1234")) == {"type": "user", "username": "Donna#1234", "projectId": ""}
    assert WalletOwner.user("Donna#1234").reference == "Donna#1234"


@pytest.mark.parametrize("usage", [1.0, "1", True])
def test_usage_is_an_integer_as_go_reads_int64(usage: Any) -> None:
    with pytest.raises(ValidationError):
        ReportUsageRequest.model_validate(
            {"owner": {"type": "user", "username": "a"}, "categoryIdV2": {"name": "c", "provider": "p"}, "usage": usage}
        )

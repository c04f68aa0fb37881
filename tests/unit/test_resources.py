"""The typed resource models and the CRD schemas in crds/ describe the same fields."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ucim.common.resources import (
    MAX_DYNAMIC_TARGETS,
    MAX_EXTENSIONS,
    MAX_TRANSITIONS,
    UCloudJob,
    UCloudJobSpec,
    UCloudProject,
    UserConnection,
    UserInstance,
    dns_name,
)
from ucim.slurm_bridge.queue_status import MAX_QUEUE_LINES

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
Kind = type[UCloudJob] | type[UserInstance] | type[UserConnection] | type[UCloudProject]
KINDS: list[Kind] = [UCloudJob, UserInstance, UserConnection, UCloudProject]


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{plural}.ucim.io.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside X, X | None, list[X] or dict[str, X], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def assert_same_fields(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    if "items" in schema:
        schema = schema["items"]
    if "additionalProperties" in schema:
        schema = schema["additionalProperties"]
    properties = schema.get("properties", {})
    aliases = {field.alias or name: field for name, field in model.model_fields.items()}
    assert set(aliases) == set(properties), f"{where}: model and CRD disagree"
    for alias, field in aliases.items():
        inner = nested_model(field.annotation)
        if inner is not None:
            assert_same_fields(inner, properties[alias], f"{where}.{alias}")


@pytest.mark.parametrize("model", KINDS)
def test_models_match_crd_schemas(model: Kind) -> None:
    schema = crd_schema(model.PLURAL)
    for part in ("spec", "status"):
        inner = nested_model(model.model_fields[part].annotation)
        assert inner is not None
        assert_same_fields(inner, schema["properties"][part], f"{model.KIND}.{part}")


# CRD keywords and the pydantic constraint that says the same.
_SCHEMA_BOUNDS = {"minimum": "ge", "maximum": "le", "minLength": "min_length", "maxLength": "max_length",
                  "maxItems": "max_length", "maxProperties": "max_length"}  # fmt: skip


def schema_bounds(schema: dict[str, Any]) -> dict[str, int]:
    return {_SCHEMA_BOUNDS[key]: value for key, value in schema.items() if key in _SCHEMA_BOUNDS}


def metadata_bounds(metadata: Iterable[Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for item in metadata:
        for inner in getattr(item, "metadata", [item]):  # a Field() inside Annotated carries its own metadata
            found |= {name: getattr(inner, name) for name in set(_SCHEMA_BOUNDS.values()) if hasattr(inner, name)}
    return found


def item_bounds(annotation: Any) -> dict[str, int]:
    """The bounds of the items of a list[...] (or list[...] | None) annotation."""
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is list:
            (item,) = typing.get_args(arg)
            return metadata_bounds(typing.get_args(item)[1:]) if typing.get_origin(item) is Annotated else {}
    return {}


def assert_same_bounds(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    properties = schema.get("properties", {})
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = properties[alias]
        assert metadata_bounds(field.metadata) == schema_bounds(prop), f"{where}.{alias}: model and CRD disagree"
        items = prop.get("items", {})
        if items.get("type") not in (None, "object"):
            assert item_bounds(field.annotation) == schema_bounds(items), f"{where}.{alias}[]: model and CRD disagree"
        inner = nested_model(field.annotation)
        if inner is not None:
            assert_same_bounds(inner, prop.get("additionalProperties", prop.get("items", prop)), f"{where}.{alias}")


@pytest.mark.parametrize("model", KINDS)
def test_specs_have_the_crd_limits(model: Kind) -> None:
    """What the gateway writes is checked before it reaches the apiserver, so its refusal is never the first."""
    spec = nested_model(model.model_fields["spec"].annotation)
    assert spec is not None
    assert_same_bounds(spec, crd_schema(model.PLURAL)["properties"]["spec"], f"{model.KIND}.spec")


@pytest.mark.parametrize("model", KINDS)
def test_crd_names_match_models(model: Kind) -> None:
    crd = yaml.safe_load((CRDS / f"{model.PLURAL}.ucim.io.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == model.KIND
    assert crd["spec"]["group"] == model.GROUP
    assert crd["spec"]["versions"][0]["name"] == model.VERSION
    assert crd["spec"]["names"]["categories"] == ["ucim"]


def test_valid_samples_parse_and_round_trip() -> None:
    for path in sorted((CRDS / "samples" / "valid").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        model = {
            "UCloudJob": UCloudJob,
            "UserInstance": UserInstance,
            "UserConnection": UserConnection,
            "UCloudProject": UCloudProject,
        }[obj["kind"]]
        assert model.from_obj(obj).to_manifest() == obj, path.name


def test_manifest_leaves_status_to_the_subresource() -> None:
    job = UCloudJob.from_obj(yaml.safe_load((CRDS / "samples/valid/ucloudjob.yaml").read_text()))
    job.status.slurm_job_id = 42
    assert "status" not in job.to_manifest()
    assert job.status_patch()["status"]["slurmJobId"] == 42


def test_models_reject_what_the_crd_rejects() -> None:
    sample = yaml.safe_load((CRDS / "samples/valid/ucloudjob.yaml").read_text())["spec"]
    sample["resources"]["cpusPerNode"] = 0
    with pytest.raises(ValidationError):
        UCloudJobSpec.model_validate(sample)


@pytest.mark.parametrize("key", ["alice#1234", "Alice@Example.org", "x" * 300, "ÆØÅ", "--"])
def test_dns_names_are_valid_and_stable(key: str) -> None:
    name = dns_name("local", key)
    assert len(name) <= 63
    assert name == dns_name("local", key)
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name)
    assert name[0].isalnum() and name[-1].isalnum()


def test_dns_names_keep_distinct_keys_apart() -> None:
    assert dns_name("local", "Alice") != dns_name("local", "alice")


def test_the_delivery_log_holds_every_status_line_a_job_may_add_and_its_states() -> None:
    """Dynamic targets, queue lines and extensions each have a cap, and together leave room for the states
    (in queue, running, a final one and a few requeues): a full log would refuse the job's end."""
    assert MAX_DYNAMIC_TARGETS + MAX_QUEUE_LINES + MAX_EXTENSIONS + 8 <= MAX_TRANSITIONS

"""One UserInstance factory for the gateway and the operator: what it creates, and when it asks again."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.fake_kube import FakeKube
from ucim.common import user_instances
from ucim.common.kube import Kube
from ucim.common.reasons import MAPPED, READY, REQUESTED_AT_ANNOTATION
from ucim.common.resources import UserInstance
from ucim.common.times import parse_rfc3339, rfc3339

T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def instance(
    ready: str | None = None, *, changed: datetime = T0, endpoint: str | None = "http://b/i/alice", **extra: Any
) -> UserInstance:
    obj: dict[str, Any] = {
        "metadata": {"name": "local-alice-1234-abcd", "annotations": extra.pop("annotations", {})},
        "spec": {"ucloudUsername": "alice#1234", "cluster": "local"},
        "status": {"endpoint": endpoint, "conditions": extra.pop("conditions", [])},
    }
    if ready is not None:
        obj["status"]["conditions"].append(condition(READY, ready, changed))
    return UserInstance.from_obj(obj)


def condition(type_: str, status: str, changed: datetime = T0, reason: str = "Because") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "m", "lastTransitionTime": rfc3339(changed)}


def test_serving_needs_ready_and_an_endpoint() -> None:
    assert user_instances.serving(instance("True"))
    assert not user_instances.serving(instance("True", endpoint=None))
    assert not user_instances.serving(instance("False"))
    assert not user_instances.serving(instance())


def test_a_refused_mapping_is_read_from_mapped() -> None:
    assert user_instances.refusal(instance()) is None
    refused = instance(conditions=[condition(MAPPED, "False", reason="MappingRefused")])
    assert user_instances.refusal(refused) == "m"


def test_waking_is_asked_once_in_a_while() -> None:
    asked = user_instances.requested_at(T0)
    # Never asked: ask.
    assert user_instances.wake_due(instance("Unknown"), T0)
    # Asked a moment ago: let the bridge work.
    assert not user_instances.wake_due(instance("Unknown", annotations=asked), T0 + timedelta(seconds=5))
    # Asked long ago: ask again.
    assert user_instances.wake_due(instance("Unknown", annotations=asked), T0 + timedelta(seconds=31))
    # It stopped after we asked (idle, died), even within the same second: ask again at once.
    stopped = instance("False", changed=T0.replace(microsecond=0), annotations=asked)
    assert user_instances.wake_due(stopped, T0 + timedelta(seconds=1))
    # A garbled annotation, or the epoch float an older gateway wrote, is as good as none.
    assert user_instances.wake_due(instance("Unknown", annotations={REQUESTED_AT_ANNOTATION: "soon"}), T0)
    assert user_instances.wake_due(instance("Unknown", annotations={REQUESTED_AT_ANNOTATION: "1764000000.123"}), T0)


def test_a_new_instance_is_labelled_and_asks_to_be_started_in_rfc3339_with_milliseconds() -> None:
    created = user_instances.new_user_instance("ucim", "alice#1234", "local", idle_timeout_seconds=600, now=T0)
    assert created.metadata.name == UserInstance.name_for("alice#1234", "local")
    assert created.metadata.labels == {"ucim.io/cluster": "local"}
    assert created.metadata.annotations == {REQUESTED_AT_ANNOTATION: "2026-03-01T12:00:00.250Z"}
    assert parse_rfc3339(created.metadata.annotations[REQUESTED_AT_ANNOTATION]) == T0
    spec = created.to_manifest()["spec"]
    assert spec == {"ucloudUsername": "alice#1234", "cluster": "local", "idleTimeoutSeconds": 600}


async def ensure(kube: FakeKube, now: datetime, *, retry_refused: bool) -> UserInstance:
    return await user_instances.ensure_user_instance(
        typing.cast(Kube, kube), "ns", "alice#1234", "local", idle_timeout_seconds=60, now=now,
        retry_refused=retry_refused,
    )  # fmt: skip


async def test_the_gateway_asks_a_refused_user_again_and_the_operator_does_not() -> None:
    kube = FakeKube()
    created = await ensure(kube, T0, retry_refused=False)
    name = created.metadata.name
    refused = [
        condition(MAPPED, "False", T0 + timedelta(seconds=1)),
        condition(READY, "False", T0 + timedelta(seconds=1)),
    ]
    await kube.patch_status(UserInstance, "ns", name, {"conditions": refused})
    later = T0 + timedelta(seconds=2)
    operator = await ensure(kube, later, retry_refused=False)
    assert (operator.metadata.annotations or {})[REQUESTED_AT_ANNOTATION] == rfc3339(T0, fraction=True)
    gateway = await ensure(kube, later, retry_refused=True)
    assert (gateway.metadata.annotations or {})[REQUESTED_AT_ANNOTATION] == rfc3339(later, fraction=True)
    # The idle timeout is the one the factory was given, whoever created the instance.
    assert gateway.spec.idle_timeout_seconds == 60

"""The operator's side of UserInstances: ensure one exists for a job's owner, and read whether it serves.

Who does what: the operator (and the gateway) *create* a UserInstance and ask for
it to run by stamping the ``ucim.io/requested-at`` annotation; the slurm_bridge
owns everything about the process (mapping the user, spawning the sidecar as
that uid, restarting it when it dies, stopping it when idle) and writes the
instance's status and conditions. The bridge has the processes in front of it,
so only it can tell that one died or went idle; the operator only reads Ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, cast

import kopf

from ucim.common.conditions import find_condition, is_true
from ucim.common.kube import ConflictError, Kube
from ucim.common.reasons import MAPPED, READY, REQUESTED_AT_ANNOTATION, WAITING_FOR_BRIDGE
from ucim.common.resources import Condition, ObjectMeta, UserInstance, UserInstanceSpec
from ucim.common.times import rfc3339
from ucim.operator.jobs import condition
from ucim.operator.outcomes import StatusFn

# Ask again at most this often while an instance does not come up.
WAKE_INTERVAL: Final = timedelta(seconds=30)


def serving(instance: UserInstance) -> bool:
    return is_true(instance.status.conditions, READY) and bool(instance.status.endpoint)


def refusal(instance: UserInstance) -> str | None:
    """Why the user can never have an instance (the mapping policy refused them), or None."""
    mapped = find_condition(instance.status.conditions, MAPPED)
    if mapped is not None and mapped.status == "False":
        return mapped.message or mapped.reason
    return None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def wake_due(instance: UserInstance, now: datetime) -> bool:
    """Whether to (re)stamp the requested-at annotation: never asked, asked before it last stopped, or long ago."""
    requested = _parse_time((instance.metadata.annotations or {}).get(REQUESTED_AT_ANNOTATION))
    if requested is None or requested.tzinfo is None:
        return True
    ready = find_condition(instance.status.conditions, READY)
    if ready is not None and ready.status == "False" and ready.last_transition_time > requested:
        return True  # it stopped (idle, died, failed) after we asked: ask again
    return now - requested >= WAKE_INTERVAL


def new_instance(namespace: str, owner: str, cluster: str, now: datetime) -> UserInstance:
    """A UserInstance that asks to be started; the bridge fills in the local user and uid."""
    return UserInstance(
        metadata=ObjectMeta(
            name=UserInstance.name_for(owner, cluster),
            namespace=namespace,
            annotations={REQUESTED_AT_ANNOTATION: rfc3339(now)},
        ),
        spec=UserInstanceSpec(ucloud_username=owner, cluster=cluster),
    )


async def ensure_instance(kube: Kube, namespace: str, owner: str, cluster: str, now: datetime) -> UserInstance:
    """The owner's UserInstance on ``cluster``: created when absent, asked to start when it does not serve.

    It is not adopted by the job: one instance serves all of its user's jobs and outlives each of them.
    """
    name = UserInstance.name_for(owner, cluster)
    instance = await kube.get(UserInstance, namespace, name)
    if instance is None:
        try:
            instance = await kube.create(new_instance(namespace, owner, cluster, now), namespace)
        except ConflictError:
            # The gateway (or another handler) created it a moment ago.
            instance = await kube.get(UserInstance, namespace, name)
            if instance is None:
                raise
    # A refused mapping is not asked again here: the bridge retries it when the user connects (gateway's init).
    if not serving(instance) and refusal(instance) is None and wake_due(instance, now):
        patch = {"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: rfc3339(now)}}}
        instance = await kube.patch(UserInstance, namespace, name, patch)
    return instance


def waiting_for_bridge(now: datetime) -> StatusFn:
    """Ready=Unknown until the bridge says more; applied only if the bridge has not written Ready yet."""
    set_ready = condition(READY, "Unknown", reason=WAITING_FOR_BRIDGE, message="Waiting for the bridge", now=now)

    def apply(body: kopf.RawBody) -> None:
        raw = cast(dict[str, Any], body)
        present = {c.get("type") for c in (raw.get("status") or {}).get("conditions") or []}
        if READY not in present:
            set_ready(body)

    return apply


def ready_flip(old: Sequence[dict[str, Any]] | None, new: Sequence[dict[str, Any]] | None) -> Condition | None:
    """The new Ready condition if Ready changed status between two condition lists, else None."""
    before = find_condition([Condition.model_validate(c) for c in old or []], READY)
    after = find_condition([Condition.model_validate(c) for c in new or []], READY)
    if after is None or (before is not None and before.status == after.status):
        return None
    return after

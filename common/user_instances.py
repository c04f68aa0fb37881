"""Asking for a user's instance: the one UserInstance factory of the gateway and the operator.

Who does what: the gateway (a user's first call) and the operator (a job to submit)
*create* the UserInstance and ask for it to run by stamping the
``ucim.io/requested-at`` annotation; the slurm_bridge owns everything about the process
(mapping the user, spawning the sidecar as that uid, restarting it when it dies,
stopping it when idle) and is the only writer of the instance's status. A new stamp is
what makes the bridge start an instance it stopped (idle, refused, backing off).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from ucim.common.conditions import find_condition, is_true
from ucim.common.kube import ConflictError, Kube
from ucim.common.reasons import MAPPED, READY, REQUESTED_AT_ANNOTATION
from ucim.common.resources import ObjectMeta, UserInstance, UserInstanceSpec, cluster_labels
from ucim.common.times import parse_rfc3339, rfc3339

# Ask again at most this often while an instance does not come up.
WAKE_INTERVAL: Final = timedelta(seconds=30)


def serving(instance: UserInstance) -> bool:
    """Ready, with an endpoint to reach it at."""
    return is_true(instance.status.conditions, READY) and bool(instance.status.endpoint)


def refusal(instance: UserInstance) -> str | None:
    """Why the user can never have an instance (the mapping policy refused them), or None."""
    mapped = find_condition(instance.status.conditions, MAPPED)
    if mapped is not None and mapped.status == "False":
        return mapped.message or mapped.reason
    return None


def wake_due(instance: UserInstance, now: datetime) -> bool:
    """Whether to (re)stamp requested-at: never asked, asked before it last stopped, or asked long ago."""
    requested = parse_rfc3339((instance.metadata.annotations or {}).get(REQUESTED_AT_ANNOTATION))
    if requested is None:
        return True
    ready = find_condition(instance.status.conditions, READY)
    # Conditions keep whole seconds: a stop in the same second as the ask may have come after it.
    if ready is not None and ready.status == "False" and ready.last_transition_time >= requested.replace(microsecond=0):
        return True  # it stopped (idle, died, failed, refused) after we asked: ask again
    return now - requested >= WAKE_INTERVAL


def requested_at(now: datetime) -> dict[str, str]:
    """The annotation that asks the bridge to start the instance (milliseconds: two asks differ)."""
    return {REQUESTED_AT_ANNOTATION: rfc3339(now, fraction=True)}


def new_user_instance(
    namespace: str, username: str, cluster: str, *, idle_timeout_seconds: int, now: datetime
) -> UserInstance:
    """A UserInstance that asks to be started; the bridge fills in the local user and uid."""
    return UserInstance(
        metadata=ObjectMeta(
            name=UserInstance.name_for(username, cluster),
            namespace=namespace,
            labels=cluster_labels(cluster),
            annotations=requested_at(now),
        ),
        spec=UserInstanceSpec(ucloud_username=username, cluster=cluster, idle_timeout_seconds=idle_timeout_seconds),
    )


async def ensure_user_instance(
    kube: Kube,
    namespace: str,
    username: str,
    cluster: str,
    *,
    idle_timeout_seconds: int,
    now: datetime,
    retry_refused: bool,
    known: tuple[UserInstance | None] | None = None,
) -> UserInstance:
    """The user's UserInstance on ``cluster``: created when absent, asked to start when it does not serve.

    ``retry_refused``: ask again even when the bridge refused the user (the gateway does,
    when the user comes back through Core: the account may exist by now; the operator
    does not, for a job cannot make an account appear). Asks are spaced by :func:`wake_due`.
    One instance serves all of its user's jobs and outlives each of them: no job adopts it.

    ``known``: the instance as a watch has it (``(None,)``: absent), in place of a read. A copy
    that is behind costs a conflict on create (then it is read) or an ask that was not needed.
    """
    name = UserInstance.name_for(username, cluster)
    instance = known[0] if known is not None else await kube.get(UserInstance, namespace, name)
    if instance is None:
        wanted = new_user_instance(namespace, username, cluster, idle_timeout_seconds=idle_timeout_seconds, now=now)
        try:
            return await kube.create(wanted, namespace)
        except ConflictError:
            # Created a moment ago by the other component (or a concurrent call): take that one.
            instance = await kube.get(UserInstance, namespace, name)
            if instance is None:
                raise
    if serving(instance) or (refusal(instance) is not None and not retry_refused) or not wake_due(instance, now):
        return instance
    patch: dict[str, Any] = {"metadata": {"annotations": requested_at(now)}}
    return await kube.patch(UserInstance, namespace, name, patch)

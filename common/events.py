"""Kubernetes Events about ucim's objects: what a component changed in the system, for ``kubectl describe``.

An Event is told, never relied on: posting one that fails is logged and forgotten, so it
can never stop the work it tells of. ``events.k8s.io/v1``, as controllers post them now.
"""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import UTC, datetime
from typing import Final, Literal

from ucim.common.kube import Kube
from ucim.common.resources import KubeEvent, ObjectMeta, ObjectReference, _Resource

log = logging.getLogger(__name__)

# An Event's note holds at most 1 KiB.
MAX_NOTE: Final = 1024


async def post_event(
    kube: Kube,
    regarding: _Resource,
    *,
    reason: str,
    note: str,
    controller: str,
    type_: Literal["Normal", "Warning"] = "Normal",
) -> None:
    """Post an Event about ``regarding`` (``controller``: e.g. ``ucim.io/bridge``); failures are only logged."""
    meta = regarding.metadata
    namespace = meta.namespace or ""
    event = KubeEvent(
        metadata=ObjectMeta(name=f"{meta.name}.{secrets.token_hex(8)}", namespace=namespace),
        regarding=ObjectReference(
            api_version=regarding.api_version(), kind=regarding.KIND, name=meta.name, namespace=namespace, uid=meta.uid
        ),
        reason=reason,
        note=note[:MAX_NOTE],
        type=type_,
        action=reason,
        event_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        reporting_controller=controller,
        reporting_instance=socket.gethostname()[:128],
    )
    try:
        await kube.create(event, namespace)
    except Exception as error:
        log.warning("event not posted (%s)", error, extra={"reason": reason, "object": meta.name})

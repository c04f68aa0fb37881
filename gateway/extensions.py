"""``jobs/extend``'s work on one job: record the request in its UCloudJob, then wait for the bridge's outcome.

What may be asked is :mod:`ucim.gateway.extension_policy`'s; the bridge applies it as root
(``slurm_bridge/extensions.py``). The wait is a watch of that one object (``Kube.wait_for``),
bounded within Core's budget for the call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ucim.common.kube import ConflictError, Kube
from ucim.common.protocol import JobExtendRequestItem
from ucim.common.resources import TimeExtension, UCloudJob
from ucim.common.times import now_utc
from ucim.gateway.errors import ProviderError
from ucim.gateway.extension_policy import plan_extension

if TYPE_CHECKING:
    from ucim.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Tries to record an extension while other writers (another replica, another request) change the job.
_RECORD_TRIES = 3


async def extend_job(
    settings: GatewaySettings, kube: Kube, item: JobExtendRequestItem, acting_user: str | None, wait: float
) -> None:
    """Record one extension (unless this very request is recorded already) and wait ``wait`` s for its outcome."""
    name = UCloudJob.name_for(item.job.id)
    extension = await record_extension(settings, kube, item, acting_user)
    await wait_for_outcome(kube, settings.namespace, name, item.job.id, extension.id, wait=wait)


async def record_extension(
    settings: GatewaySettings, kube: Kube, item: JobExtendRequestItem, acting_user: str | None
) -> TimeExtension:
    """The extension of ``spec.extensions`` this request stands for, appended if it is new."""
    name = UCloudJob.name_for(item.job.id)
    for _ in range(_RECORD_TRIES):
        job = await kube.get(UCloudJob, settings.namespace, name)
        if job is None:
            raise ProviderError(404, f"job {item.job.id} is not known to this provider")
        if acting_user is not None and acting_user != job.spec.owner:
            # Root applies it: without this check any user could extend anyone's job.
            raise ProviderError(403, f"job {item.job.id} belongs to {job.spec.owner!r}; only its owner can extend it")
        extension = plan_extension(settings.extension, job, item, now_utc())
        recorded = job.spec.extensions or []
        if any(e.id == extension.id for e in recorded):
            return extension
        # A merge patch replaces the list whole: guarded by the version it was computed from.
        patch = {
            "metadata": {"resourceVersion": job.metadata.resource_version},
            "spec": {"extensions": [*(e.to_dict() for e in recorded), extension.to_dict()]},
        }
        try:
            await kube.patch(UCloudJob, settings.namespace, name, patch)
        except ConflictError:
            continue
        log.info("walltime extension recorded", extra={"ucloudjob": name, "extension": extension.id})
        return extension
    raise ProviderError(409, f"job {item.job.id} kept changing while its extension was recorded; try again")


async def wait_for_outcome(kube: Kube, namespace: str, name: str, job_id: str, extension: str, *, wait: float) -> None:
    """Return once the bridge applied the extension; a 400 with its reason if it refused it."""

    def answered(job: UCloudJob | None) -> bool:
        return job is None or job.extension_outcome(extension) is not None

    try:
        async with asyncio.timeout(max(wait, 0.0)):
            job = await kube.wait_for(UCloudJob, namespace, name, answered)
    except TimeoutError as error:
        # Recorded, so the bridge applies it once it can; Core's retry of this call finds it (the same id).
        raise ProviderError(
            503, f"the extension of job {job_id} is recorded, but Slurm has not confirmed it within {wait:.1f} s; "
            "it is applied as soon as the cluster answers, and UCloud then shows the new time limit (asking again "
            "for the same time does not extend the job twice)"
        ) from error  # fmt: skip
    outcome = job.extension_outcome(extension) if job is not None else None
    if outcome is None:
        raise ProviderError(404, f"job {job_id} was removed while it was being extended")
    if outcome.result != "Applied":
        raise ProviderError(400, f"job {job_id} cannot be extended: {outcome.message}")

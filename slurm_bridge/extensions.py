"""Walltime extensions: the bridge, as root, applies the ones the gateway recorded in ``spec.extensions``.

Slurm lets no user raise their own job's time limit; root can, past every partition limit too,
so the bridge keeps each extension within the MaxTime of the job's partition (the site's own
policy was checked by the gateway before it recorded the request). It learns of a request from
the monitor's watch of its cluster's UCloudJobs (the same informer: no second list of every
job), applies it with ``scontrol update TimeLimit=`` and records the outcome in
``status.extensions``. An applied one also sets ``status.timeLimitMinutes`` and appends the job
update that carries Core's ``newTimeAllocation`` to ``status.transitions``, in one patch guarded by
the resourceVersion it was computed from (:func:`ucim.slurm_bridge.monitor.write_status`).

The limit sent to Slurm is absolute (the job's whole new limit, fixed by the gateway), so an
extension applied twice (the bridge stopped between Slurm's answer and the status write, or the
write met a conflict) changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter

from ucim.common.informer import Change, Informer
from ucim.common.kube import Kube
from ucim.common.resources import ExtensionOutcome, ExtensionResult, TimeExtension, UCloudJob
from ucim.common.retry import delay_after
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmError, SlurmUnavailableError
from ucim.common.times import minutes_text
from ucim.slurm_bridge.monitor import appended_transitions, write_status

log = logging.getLogger(__name__)

EXTENSIONS = Counter("ucim_time_extensions", "Walltime extensions the bridge answered, by result.", ["result"])
for _result in ("Applied", "Refused"):
    EXTENSIONS.labels(result=_result)


def outcome_patch(
    job: UCloudJob, extension: TimeExtension, result: ExtensionResult, message: str, now_ms: int
) -> dict[str, Any]:
    """The status patch that records ``extension``'s outcome (and, applied, tells Core the new limit)."""
    outcome = ExtensionOutcome(
        id=extension.id, result=result, message=message[:1024], at=datetime.fromtimestamp(now_ms / 1000, UTC)
    )
    patch: dict[str, Any] = {"extensions": [*(o.to_dict() for o in job.status.extensions), outcome.to_dict()]}
    if result == "Applied":
        patch["timeLimitMinutes"] = extension.time_limit_minutes
        line = {"message": message, "newTimeAllocation": extension.time_limit_minutes * 60_000}
        patch["transitions"] = appended_transitions(job, line, now_ms)
    return patch


def beyond_partition(extension: TimeExtension, max_time: timedelta | None) -> str | None:
    """Why ``extension`` would take the job past its partition's MaxTime; None if it stays within it."""
    if max_time is None or extension.time_limit_minutes * 60 <= max_time.total_seconds():
        return None
    limit = minutes_text(int(max_time.total_seconds() // 60))
    return (
        f"a time limit of {minutes_text(extension.time_limit_minutes)} is beyond the longest this job's Slurm "
        f"partition allows ({limit}, its MaxTime)"
    )


# Told of each answered extension: the job, the request, Applied or Refused, and the words Core got.
Recorder = Callable[[UCloudJob, TimeExtension, ExtensionResult, str], None]


class TimeExtensions:
    """Applies each job's pending extensions in order, one Slurm update each; woken by the jobs' watch."""

    def __init__(
        self,
        kube: Kube,
        slurm: SlurmClient,
        namespace: str,
        *,
        clock: Callable[[], float] = time.time,
        record: Recorder | None = None,
    ):
        self.kube, self.slurm, self.namespace = kube, slurm, namespace
        self._clock = clock
        self._record = record  # the audit trail: an extension is an action taken for the job's owner
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._failures: dict[str, int] = {}

    def on_event(self, change: Change, job: UCloudJob) -> None:
        if change != "DELETED" and job.pending_extensions():
            self._dirty.add(job.metadata.name)
            self._wake.set()

    async def run(self, jobs: Informer[UCloudJob]) -> None:
        """Work on the jobs ``on_event`` marked until cancelled; ``jobs`` is the informer that calls it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await jobs.synced.wait()
            names, self._dirty = self._dirty, set()
            for name in sorted(names):
                job = jobs.get(name)
                if job is not None and job.pending_extensions():
                    await self._extend_retried(job)

    async def _extend_retried(self, job: UCloudJob) -> None:
        name = job.metadata.name
        try:
            await self.extend(job)
        except Exception:
            # Slurm unreachable, say: the same request again after the one backoff; nothing is recorded meanwhile.
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            delay = delay_after(failures, first=1.0, cap=60.0)
            log.exception("walltime extension failed; again in %.0f s", delay, extra={"ucloudjob": name})
            asyncio.get_running_loop().call_later(delay, self._retry, name)
        else:
            self._failures.pop(name, None)

    def _retry(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    async def extend(self, job: UCloudJob) -> bool:
        """Answer the first pending extension of ``job`` (its next one comes with the watch's next copy).

        Raises what Slurm could not answer for now (SlurmUnavailableError); True if the outcome was written.
        """
        extension = job.pending_extensions()[0]
        result, message = await self._decide(job, extension)
        written = await write_status(
            self.kube, self.namespace, job, outcome_patch(job, extension, result, message, int(self._clock() * 1000))
        )
        if written:
            EXTENSIONS.labels(result=result).inc()
            if self._record is not None:
                self._record(job, extension, result, message)
            log.info(
                "walltime extension answered",
                extra={"ucloudjob": job.metadata.name, "extension": extension.id, "result": result, "why": message},
            )
        return written

    async def _decide(self, job: UCloudJob, extension: TimeExtension) -> tuple[ExtensionResult, str]:
        slurm_id, state = job.status.slurm_job_id, job.status.state
        if state is not None and state.is_final:
            return "Refused", f"job {job.spec.job_id} has ended ({state.value}); its time limit cannot change"
        if slurm_id is None:
            return "Refused", f"job {job.spec.job_id} is not in Slurm yet"
        try:
            if (why := beyond_partition(extension, await self.slurm.partition_max_time(slurm_id))) is not None:
                return "Refused", why
            await self.slurm.set_time_limit(slurm_id, extension.time_limit_minutes)
        except SlurmUnavailableError:
            raise
        except SlurmError as error:
            # Slurm's own refusal (the job ended meanwhile, say): final for this request.
            return "Refused", f"Slurm refused the new time limit: {error.detail or error.message}"
        added, total = minutes_text(extension.add_minutes), minutes_text(extension.time_limit_minutes)
        return "Applied", f"Time limit extended by {added} to {total}"

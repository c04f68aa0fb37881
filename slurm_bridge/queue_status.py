"""Where a waiting job stands in Slurm's queue, and when that is worth telling Core.

The monitor asks Slurm for the pending queue in **one** ``squeue`` (:meth:`SlurmClient.pending`,
every user's pending jobs of the partitions its waiting jobs are in), at most every
``interval`` seconds and only while one of its jobs waits. :func:`places` ranks that listing
as Slurm's scheduler does (by priority, then by job id), which gives each job its
:class:`QueuePlace`: its position in its partition (1 = next), how many jobs wait there, and
Slurm's estimate of its start (the backfill scheduler's, absent until it has run).

A place becomes a job update without a state (a status line, "Waiting in queue: position 3
of 12 in partition batch; Slurm estimates the start at 2026-12-08 14:05 UTC") only when it
changed meaningfully since the last one (:func:`is_meaningful`):

* the first place of the job (once Slurm has looked at it and given it a pending reason: most
  jobs start within a second, and a line for each would only be noise);
* the position moved by at least max(1, 10 % of the position told): every step from 10 on,
  steps of 20 at 200;
* the estimate appeared, went away, or moved by more than max(5 minutes, 10 % of the wait
  that was left until the estimate told).

``status.queuePosition``, ``queueLength`` and ``estimatedStartAt`` are written with that line and
so always say what Core was told; they are removed once Slurm no longer has the job pending.
``status.transitions`` holds 64 entries (the CRD's limit) and also carries the first state,
up to 16 dynamic targets, the start and the end: at most :data:`MAX_QUEUE_LINES` of them are
queue lines. After that the fields still follow the queue; Core's text keeps the last line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ucim.common.resources import UCloudJob, UCloudJobStatus
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_parsing import PendingJob, SlurmJobInfo
from ucim.common.times import rfc3339

QUEUE_LINE_PREFIX: Final = "Waiting in queue: "
MAX_QUEUE_LINES: Final = 16
# The estimate has moved meaningfully past this, or past a tenth of the wait that was left.
MIN_ESTIMATE_MOVE: Final = timedelta(minutes=5)
# Slurm's state of a job that waits.
PENDING: Final = "PENDING"


@dataclass(frozen=True, slots=True)
class QueuePlace:
    """Where one job waits: ``position`` among the ``pending`` jobs of ``partition`` (1 = next)."""

    partition: str
    position: int
    pending: int
    estimated_start: datetime | None


def places(listing: Iterable[PendingJob], wanted: Iterable[int]) -> dict[int, QueuePlace]:
    """The place of each ``wanted`` job id in the pending ``listing`` (ids not in it are left out).

    Slurm's scheduler takes a partition's jobs by priority, the older (lower id) first among
    equals; a job listed in several partitions gets the place where it is nearest the front.
    """
    wanted = set(wanted)
    by_partition: dict[str, list[PendingJob]] = {}
    for job in listing:
        by_partition.setdefault(job.partition, []).append(job)
    found: dict[int, QueuePlace] = {}
    for partition, jobs in by_partition.items():
        ranked = sorted(jobs, key=lambda j: (-j.priority, j.job_id if j.job_id is not None else 2**63))
        for index, job in enumerate(ranked):
            if job.job_id not in wanted:
                continue
            place = QueuePlace(partition, index + 1, len(ranked), job.estimated_start)
            current = found.get(job.job_id)
            if current is None or place.position < current.position:
                found[job.job_id] = place
    return found


def waits(info: SlurmJobInfo) -> bool:
    """Whether the job waits in the queue and Slurm has looked at it (it gave a reason why it waits)."""
    return info.state == PENDING and info.reason is not None


def is_meaningful(told: UCloudJobStatus, place: QueuePlace, now: datetime) -> bool:
    """Whether ``place`` differs enough from what the job's status says Core was told (the module's rule)."""
    if told.queue_position is None:
        return True
    if abs(place.position - told.queue_position) >= max(1.0, told.queue_position / 10):
        return True
    before, after = told.estimated_start_at, place.estimated_start
    if before is None or after is None:
        return (before is None) != (after is None)
    left = max(before - now, timedelta(0))
    return abs(after - before) > max(MIN_ESTIMATE_MOVE, left / 10)


def queue_line(place: QueuePlace) -> str:
    """The status text Core shows for a waiting job."""
    where = f"position {place.position} of {place.pending} in partition {place.partition}"
    if place.estimated_start is None:
        return f"{QUEUE_LINE_PREFIX}{where}; Slurm has no estimate of the start yet"
    start = place.estimated_start.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return f"{QUEUE_LINE_PREFIX}{where}; Slurm estimates the start at {start} UTC"


def queue_lines(status: UCloudJobStatus) -> int:
    """How many queue lines the job's transitions hold."""
    return sum(1 for t in status.transitions if t.state is None and (t.message or "").startswith(QUEUE_LINE_PREFIX))


@dataclass(frozen=True, slots=True)
class QueueUpdate:
    """What to write for a job's place: status ``fields`` (None deletes one) and the ``line`` for Core, if any."""

    fields: dict[str, Any]
    line: str | None = None


def _told(status: UCloudJobStatus) -> dict[str, Any]:
    return {
        "queuePosition": status.queue_position,
        "queueLength": status.queue_length,
        "estimatedStartAt": status.estimated_start_at,
    }


def queue_update(
    job: UCloudJob, info: SlurmJobInfo | None, place: QueuePlace | None, now: datetime
) -> QueueUpdate | None:
    """What a cycle writes about the job's place in the queue; None if nothing.

    ``info`` is what Slurm says about the job now (None: Slurm no longer knows it), ``place``
    its place in this cycle's listing (None: no listing this cycle, or the job is not in it).
    """
    status = job.status
    if info is None or info.state != PENDING:
        # Started, ended or gone: the queue is behind it, and the fields go (None deletes them).
        held = [key for key, value in _told(status).items() if value is not None]
        return QueueUpdate(dict.fromkeys(held)) if held else None
    if place is None or not waits(info) or not is_meaningful(status, place, now):
        return None
    fields = {
        "queuePosition": place.position,
        "queueLength": place.pending,
        "estimatedStartAt": rfc3339(place.estimated_start) if place.estimated_start is not None else None,
    }
    line = queue_line(place) if queue_lines(status) < MAX_QUEUE_LINES else None
    return QueueUpdate(fields, line)


def partitions_of(jobs: Iterable[UCloudJob]) -> set[str] | None:
    """The partitions the listing needs for ``jobs``; None (every partition) if one of them names none."""
    names = {job.spec.slurm.partition if job.spec.slurm is not None else None for job in jobs}
    return None if None in names else {name for name in names if name is not None}


def waiting(by_id: Mapping[int, UCloudJob], infos: Mapping[int, SlurmJobInfo]) -> dict[int, UCloudJob]:
    """The jobs of ``by_id`` that wait in the queue by ``infos``: the ones that need a place."""
    return {i: job for i, job in by_id.items() if (info := infos.get(i)) is not None and waits(info)}


class QueueReader:
    """Lists Slurm's pending queue for the monitor's waiting jobs: one ``squeue``, at most every ``interval`` s."""

    def __init__(self, slurm: SlurmClient, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.slurm = slurm
        self.interval = interval
        self._clock = clock
        self._next = 0.0

    async def places(self, jobs: Mapping[int, UCloudJob]) -> dict[int, QueuePlace]:
        """The places of ``jobs`` (Slurm id → job); {} when none waits or the last listing is too recent.

        Raises SlurmError if squeue fails; the next listing is an ``interval`` later all the same.
        """
        if not jobs or self._clock() < self._next:
            return {}
        self._next = self._clock() + self.interval
        listing = await self.slurm.pending(partitions_of(jobs.values()))
        return places(listing, jobs)

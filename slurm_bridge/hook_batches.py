"""Which Slurm jobs the hook said changed, and when the monitor asks Slurm about them.

The hook (``deploy/controller/ucim-slurm-hook``) runs inside slurmctld's PrologSlurmctld and
EpilogSlurmctld, that is *before* the change it announces is visible: a starting job is still
CONFIGURING, an ending one COMPLETING (for ~30-40 ms after the datagram arrives, measured on the
local platform; hence ``batch_seconds`` of 50 ms, so that the first query usually finds the
change). So a notification is kept until a query shows what it announced (``prolog_slurmctld``:
the job left the queue; ``epilog_slurmctld``: it is final; an unknown context: any answer), asked
again after ``followup_seconds`` (three times, then doubling), at most ``max_attempts`` times in all
(~3.9 s); after that the poll has it.

* Ids that arrive together are asked together: the first notification waits ``batch_seconds`` for
  the others of the same moment (slurmctld starts many jobs in one scheduling pass).
* Queries for notifications start at most every ``min_gap_seconds`` (30 ms: at most ~33 a second,
  each of a handful of ids, ~10-20 ms of squeue): a burst of thousands of job starts is a handful of
  queries, each for every id that arrived since the last.
* An id of no job the monitor tracks (another site user's job, or one whose ``slurmJobId`` the
  watch has not brought yet) costs no Slurm query; it is looked for again with the follow-ups.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from ucim.common.protocol import JobState
from ucim.common.slurm_parsing import SlurmJobInfo

PROLOG: Final = "prolog_slurmctld"
EPILOG: Final = "epilog_slurmctld"


@dataclass
class Pending:
    """One job the hook named: what it announced, how often it was asked about, when next."""

    context: str
    due: float
    attempts: int = 0


def answered(context: str, info: SlurmJobInfo | None) -> bool:
    """Whether Slurm's answer shows what the notification announced."""
    if info is None:
        return False
    state, _ = info.ucloud_state()
    if context == PROLOG:
        return state != JobState.IN_QUEUE
    if context == EPILOG:
        return state.is_final
    return True


@dataclass
class HookBatches:
    """The notified jobs waiting for a query."""

    batch_seconds: float = 0.05
    min_gap_seconds: float = 0.03
    followup_seconds: float = 0.03
    max_attempts: int = 10
    even_attempts: int = 3

    def __post_init__(self) -> None:
        self.pending: dict[int, Pending] = {}
        self._last_query = float("-inf")

    def notify(self, job_id: int, context: str, now: float) -> None:
        """The hook said ``job_id`` changed (``context``: which of slurmctld's hooks ran)."""
        known = self.pending.get(job_id)
        if known is None or known.context != context:
            self.pending[job_id] = Pending(context, now + self.batch_seconds)

    def wake_at(self) -> float | None:
        """When the next batch is due (monotonic seconds); None without notifications."""
        if not self.pending:
            return None
        return max(min(p.due for p in self.pending.values()), self._last_query + self.min_gap_seconds)

    def take(self, now: float) -> dict[int, Pending]:
        """The notifications due now (empty before the gap since the last query passed)."""
        if now < self._last_query + self.min_gap_seconds:
            return {}
        batch = {job_id: p for job_id, p in self.pending.items() if p.due <= now}
        for job_id in batch:
            del self.pending[job_id]
        return batch

    def queried(self, now: float) -> None:
        """A batch was sent to Slurm now: the next waits ``min_gap_seconds``."""
        self._last_query = now

    def settle(
        self, batch: Mapping[int, Pending], tracked: Collection[int], infos: Mapping[int, SlurmJobInfo], now: float
    ) -> None:
        """Keep, for a follow-up, what the answer did not show yet (or what is not tracked yet)."""
        for job_id, pending in batch.items():
            if job_id in tracked and answered(pending.context, infos.get(job_id)):
                continue
            attempts = pending.attempts + 1
            if attempts >= self.max_attempts or job_id in self.pending:
                continue  # the poll has it now; or a newer notification replaced it
            # Evenly at first (the change is usually a few tens of ms away), then doubling.
            delay = self.followup_seconds * 2 ** max(0, attempts - self.even_attempts)
            self.pending[job_id] = Pending(pending.context, now + delay, attempts)

"""The Slurm monitor's adaptive poll interval: fast while jobs change, slower while nothing does.

The rule (docs/operations.md, "How fast job states reach Core"):

* after a poll or a hook notification that changed a job, or a poll that found the set of tracked
  jobs changed (a job submitted, one finished), the next poll comes ``fastest`` seconds after the
  last one started;
* after a poll that found nothing new the interval doubles, up to ``slowest``;
* ``fastest`` is at least one second (the settings refuse less), so the poll, whose cost grows
  with the number of jobs, never asks Slurm more than once a second, whatever their number; a
  poll that takes longer than the interval is followed by the next at once, never by two at a time.

Without the hook the poll is the only source of job states, and ``slowest`` is ``fastest``: a
constant interval, as before the hook existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Gauge

POLL_INTERVAL = Gauge("ucim_slurm_poll_interval_seconds", "The interval until the Slurm monitor's next poll.")
MIN_INTERVAL_SECONDS: Final = 1.0


@dataclass
class PollInterval:
    """Seconds from the start of one poll to the start of the next."""

    fastest: float = MIN_INTERVAL_SECONDS
    slowest: float = MIN_INTERVAL_SECONDS
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.slowest = max(self.slowest, self.fastest)
        self.current = self.fastest
        POLL_INTERVAL.set(self.current)

    def after_poll(self, changed: bool) -> float:
        """The interval after a poll that ``changed`` something (or not)."""
        self.current = self.fastest if changed else min(self.slowest, self.current * 2)
        POLL_INTERVAL.set(self.current)
        return self.current

    def activity(self) -> None:
        """A job changed between polls (a hook notification): poll fast again."""
        self.current = self.fastest
        POLL_INTERVAL.set(self.current)

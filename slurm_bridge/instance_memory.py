"""What the running user instances cost in memory on the frontend, measured now and then for /metrics.

Each instance is measured by its PSS (proportional set size, ``/proc/<pid>/smaps_rollup``): the
instances are forked from one fork server and share its pages, and PSS splits each shared page
among the processes that map it, so the sum over the instances is what they take together (RSS
would count a shared page once per instance). The kernel walks a process's page tables for it,
so the measuring runs in a worker thread every ``interval`` seconds, never in a scrape or on the
loop that relays the users' calls. The labels stay bounded: a total and the largest, never a
series per user.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import Gauge

log = logging.getLogger(__name__)

INSTANCES_MEMORY = Gauge(
    "ucim_instances_memory_bytes",
    "Memory of the running user instances together (the sum of their PSS), as last measured.",
)
LARGEST_INSTANCE_MEMORY = Gauge(
    "ucim_instance_memory_max_bytes",
    "Memory (PSS) of the largest running user instance, as last measured.",
)


def pss_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process's PSS in bytes; None when it is gone (or the kernel has no smaps_rollup)."""
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    return None


def measure(pids: Iterable[int], proc: Path = Path("/proc")) -> list[int]:
    """Set the gauges from the PSS of ``pids`` (those still there); the sizes measured."""
    sizes = [size for pid in pids if (size := pss_bytes(pid, proc)) is not None]
    INSTANCES_MEMORY.set(sum(sizes))
    LARGEST_INSTANCE_MEMORY.set(max(sizes, default=0))
    return sizes


async def measure_forever(pids: Callable[[], list[int]], interval: float) -> None:
    """Measure the instances ``pids()`` names every ``interval`` seconds, until cancelled."""
    while True:
        try:
            await asyncio.to_thread(measure, pids())
        except Exception:
            # Only a figure on a dashboard is late: the bridge goes on serving.
            log.exception("measuring the instances' memory failed")
        await asyncio.sleep(interval)

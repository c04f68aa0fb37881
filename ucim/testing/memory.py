"""Resident memory of processes while some work runs: what the e2e tests and benches check stays flat."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

SAMPLE_SECONDS = 0.02


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set size (``VmRSS``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no VmRSS")


class ResidentPeaks:
    """``async with ResidentPeaks({"gateway": pid}) as peaks:`` samples each process's RSS every 20 ms.

    ``before`` is taken on entry, ``peak`` is the highest sample (``before`` included).
    """

    def __init__(self, pids: Mapping[str, int | str]) -> None:
        self.pids = dict(pids)
        self.before = {name: resident_bytes(pid) for name, pid in self.pids.items()}
        self.peak = dict(self.before)
        self._sampler: asyncio.Task[None] | None = None

    def growth(self) -> dict[str, int]:
        return {name: self.peak[name] - self.before[name] for name in self.pids}

    def _sample_once(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], resident_bytes(pid))

    async def _sample(self) -> None:
        while True:
            self._sample_once()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def __aenter__(self) -> Self:
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        self._sample_once()

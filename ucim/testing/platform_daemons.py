"""Crashing and restarting the local platform's daemons from a test, without blocking its event loop.

``hack/local_platform.py kill <daemon>...`` SIGKILLs daemons as a crash would; ``start
[<daemon>...]`` starts the ones that are not running (all of them without names) the way ``up``
does, each until it is healthy. ``PlatformDaemons`` runs those commands as child processes, so the
tests' event loop (which serves Core's stand-in) keeps running while a daemon starts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

# This module lives in <repo>/ucim/testing/; the platform script in <repo>/hack/.
PLATFORM_SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "local_platform.py"
# Daemons the drills crash, by the names hack/local_platform.py gives them.
SLURMCTLD = "slurmctld"
SLURMDBD = "slurmdbd"
ETCD = "etcd"
APISERVER = "kube-apiserver"


class PlatformCommandError(AssertionError):
    """A kill or start of the platform failed (an AssertionError, so pytest reports it as a failed check)."""


@dataclass(frozen=True)
class PlatformDaemons:
    """``kill`` and ``start`` of hack/local_platform.py, awaited; each bounded by ``timeout`` seconds."""

    script: Path = PLATFORM_SCRIPT
    timeout: float = 120.0

    async def kill(self, *daemons: str) -> float:
        """SIGKILL the daemons and wait until they are gone; the seconds it took."""
        return await self._run("kill", *daemons)

    async def start(self, *daemons: str) -> float:
        """Start the daemons (every daemon of the platform for none) and wait until each is healthy; the seconds."""
        return await self._run("start", *daemons)

    @asynccontextmanager
    async def killed(self, *daemons: str) -> AsyncIterator[None]:
        """The daemons are dead inside the block and started again after it, whatever the block raised."""
        await self.kill(*daemons)
        try:
            yield
        finally:
            await self.start(*daemons)

    async def _run(self, command: str, *daemons: str) -> float:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(self.script),
            command,
            *daemons,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(self.timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise PlatformCommandError(
                f"local_platform.py {command} {' '.join(daemons)} took over {self.timeout} s"
            ) from None
        text = output.decode(errors="replace")
        if process.returncode != 0:
            raise PlatformCommandError(f"local_platform.py {command} {' '.join(daemons)} failed:\n{text}")
        return time.monotonic() - started

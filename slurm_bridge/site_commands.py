"""Running the site's tools and scripts as the bridge (root): argument lists, a bare environment, a timeout.

Nothing here goes through a shell: each argument reaches the program as one argv element, whatever it
holds. A child runs in its own session from ``/`` with only the environment it is given (by default
``PATH``); on a timeout or a cancellation its whole process group is killed, so a script's own children
do not outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SAFE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(Exception):
    """A command could not run or did not finish in time; the message says which, for people."""


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes

    def stderr_tail(self, lines: int = 5, chars: int = 1000) -> str:
        """The last non-empty lines of stderr on one line (`` | `` between them), at most ``chars`` long."""
        text = self.stderr.decode("utf-8", "replace").splitlines()
        tail = " | ".join([line.strip() for line in text if line.strip()][-lines:])
        return tail if len(tail) <= chars else "…" + tail[-chars:]

    def why(self, lines: int = 5, chars: int = 1000) -> str:
        """What the program said on stderr, or its exit status when it said nothing."""
        return self.stderr_tail(lines, chars) or f"exit status {self.returncode}"


async def run(
    argv: Sequence[str],
    *,
    what: str,
    timeout_seconds: float,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """Run ``argv`` to its end; CommandError (naming ``what``) if it cannot start or outlives ``timeout_seconds``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else {"PATH": SAFE_PATH},
            cwd="/",
            start_new_session=True,
        )
    except OSError as error:
        raise CommandError(f"{what} cannot run: {error}") from error
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that comes as the
        # command ends (as in ucim.common.slurm).
        async with asyncio.timeout(timeout_seconds):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        await _kill(proc)
        raise CommandError(f"{what} did not answer within {timeout_seconds:g} s") from None
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    return Finished(proc.returncode if proc.returncode is not None else -1, out, err)


async def run_script(script: Path, request: object, *, what: str, timeout_seconds: float) -> Finished:
    """Run a site script as ``script <file>``, the file holding ``request`` as JSON (the anchor's way).

    The script must be root's (:func:`check_script`); the file is made 0600 (mkstemp), so only root
    reads it, and deleted afterwards (UCloud/IM leaves it). CommandError for every failure to run.
    """
    check_script(script, what)
    path: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix="ucim-request-", suffix=".json")
        path = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(request, file)
        return await run([str(script), str(path)], what=what, timeout_seconds=timeout_seconds)
    except OSError as error:
        raise CommandError(f"the request for {what} cannot be written: {error}") from error
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    # start_new_session made the child a group leader: its pid is the group's id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def check_script(script: Path, what: str) -> None:
    """Refuse a site script that someone other than root could change: it runs as root."""
    if not script.is_absolute():
        raise CommandError(f"{what} {script} must be an absolute path")
    try:
        info = script.stat()
    except OSError as error:
        raise CommandError(f"{what} cannot be used: {error}") from error
    if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CommandError(f"{what} {script} must be owned by root and writable only by root")

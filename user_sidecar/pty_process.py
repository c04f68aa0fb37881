"""A program in a pseudo-terminal, as the instance's user: read, write, resize, end.

The child leads its own session with the PTY as its controlling terminal, so job control,
``stty`` and Ctrl-C work, and ending it ends everything it started: ``close`` hangs up the
process group (SIGHUP, as a terminal closing does), then SIGKILLs what is left after a grace.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

READ_BYTES: Final = 4096  # as IM2 reads
HANGUP_GRACE_SECONDS: Final = 2.0


def set_size(fd: int, cols: int, rows: int) -> None:
    """The terminal's window size (TIOCSWINSZ); the kernel tells the foreground group (SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


def _take_terminal() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """One program on a PTY; ``read`` gives its output as text, ``None`` once it has ended."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self.master = master
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character split over reads stays whole
        self._output: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self._writable = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self._closed = False

    @classmethod
    async def start(cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], cols: int, rows: int) -> PtyProcess:
        """Start ``argv`` in ``cwd`` on a new PTY of ``cols`` x ``rows``; OSError if it cannot start."""
        master, slave = os.openpty()
        try:
            set_size(master, cols, rows)
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as error:  # EIO: every holder of the terminal's other side has gone
            if error.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._stop_reading()
            self._output.put_nowait(None)
            return
        self._output.put_nowait(data)
        if self._output.full():  # the socket is slow: the program waits on a full terminal instead
            asyncio.get_running_loop().remove_reader(self.master)

    def _stop_reading(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)

    async def read(self) -> str | None:
        """The next output, or None once the program and all it started have closed the terminal."""
        if self._closed:
            return None
        was_full = self._output.full()
        data = await self._output.get()
        if was_full and data is not None:
            asyncio.get_running_loop().add_reader(self.master, self._readable)
        if data is None:
            return None
        return self._decoder.decode(data)

    async def write(self, text: str) -> None:
        """Keystrokes to the program; waits while the terminal's input buffer is full."""
        data = memoryview(text.encode("utf-8", "surrogatepass"))
        loop = asyncio.get_running_loop()
        while data:
            try:
                written = os.write(self.master, data)
            except BlockingIOError:
                self._writable.clear()
                loop.add_writer(self.master, self._writable.set)
                try:
                    await self._writable.wait()
                finally:
                    loop.remove_writer(self.master)
                continue
            data = data[written:]

    def resize(self, cols: int, rows: int) -> None:
        set_size(self.master, cols, rows)

    async def close(self) -> None:
        """End the program's process group (hang-up, then SIGKILL after a grace) and release the terminal."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
        try:
            async with asyncio.timeout(HANGUP_GRACE_SECONDS):
                await self.process.wait()
        except TimeoutError:
            pass
        # What the program started in its group and left behind goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.returncode is None:
            await self.process.wait()
        os.close(self.master)

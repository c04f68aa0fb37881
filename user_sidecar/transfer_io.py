"""The file-descriptor work of transfers: partial files, the files a download sends, chunk bodies to disk.

The data of an unfinished upload lives next to its target, in a hidden file
``.ucim-upload-<16 hex>.part`` (mode 0600, opened with ``O_NOFOLLOW`` relative to the
folder's fd), so that finishing is one atomic link or rename on one file system
(``conflicts.commit``) and an incomplete file is never visible under the target's name.
The partial file's size is the upload's progress: it survives a crash or a restart, and
a chunk cut off halfway keeps what arrived (``receive``).

A download's file is opened through its drive's folder fds with ``O_NOFOLLOW`` on every
component, so a symbolic link swapped in after the token was made is refused.

Everything here but ``receive`` blocks: call it from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ucim.common.file_writes import pwrite_all
from ucim.common.splice import BodyIdleError, BodyStoppedError, SocketBody
from ucim.user_sidecar.paths import PathRefusedError, refusal
from ucim.user_sidecar.transfer_sessions import Location, UploadSession

log = logging.getLogger(__name__)

# Received data is written in pieces of about this size: never a whole chunk in memory.
WRITE_PIECE_BYTES: Final = 1 << 20
# A chunk's body: straight from the request's socket when it can be (splice), else its pieces.
ChunkBody = SocketBody | AsyncIterator[bytes]

_OPEN_PARTIAL = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_NONBLOCK: a FIFO swapped in cannot make the open hang; it is refused by the fstat after.
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class TransferRefusedError(PathRefusedError):
    """A transfer request that cannot be served; ``status`` is the HTTP answer.

    ``expected_offset`` is set when the client should continue from another offset.
    """

    def __init__(self, why: str, status: int = 400, *, expected_offset: int | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.expected_offset = expected_offset


class BodyInterruptedError(Exception):
    """The client stopped sending a chunk's body (it disconnected, or the body was malformed)."""


# --- opening ------------------------------------------------------------------


def _check_regular(mode: int, shown: str) -> None:
    if stat.S_ISLNK(mode):
        raise TransferRefusedError(f"{shown} is a symbolic link; links are not followed")
    if stat.S_ISDIR(mode):
        raise TransferRefusedError(f"{shown} is a folder; download the files in it one by one")
    if not stat.S_ISREG(mode):
        raise TransferRefusedError(f"{shown} is not a regular file")


def open_regular(folder_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    """Open a regular file in ``folder_fd`` for reading, never through a link; (fd, its stat)."""
    try:
        # Looked at first, so that no device or FIFO is ever opened ...
        _check_regular(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode, shown)
        fd = os.open(name, _OPEN_READ, dir_fd=folder_fd)
    except OSError as error:
        raise refusal(error, shown) from error
    # ... and checked again on what was opened, since the name may have been swapped in between.
    st = os.fstat(fd)
    try:
        _check_regular(st.st_mode, shown)
    except TransferRefusedError:
        os.close(fd)
        raise
    return fd, st


def open_folder(location: Location) -> int:
    """An fd (O_PATH) of the folder a transfer's file is in, every component walked without links."""
    with location.drives().open_folder(location.folder) as fd:
        return os.dup(fd)


def open_download(location: Location) -> tuple[int, os.stat_result]:
    """The download's file, opened for reading (fd, its stat); the caller closes the fd."""
    folder_fd = open_folder(location)
    try:
        return open_regular(folder_fd, location.parts[-1], location.file_id.ucloud_id)
    finally:
        os.close(folder_fd)


def open_partial(session: UploadSession) -> tuple[int, int, int]:
    """(folder fd, partial file fd, its size); the partial file is created if it is not there."""
    location = session.location
    shown = f"the partial file of the upload to {location.file_id.ucloud_id}"
    folder_fd = open_folder(location)
    try:
        fd = os.open(session.partial_name, _OPEN_PARTIAL, 0o600, dir_fd=folder_fd)
    except OSError as error:
        os.close(folder_fd)
        raise refusal(error, shown) from error
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
        return folder_fd, fd, st.st_size
    os.close(fd)
    os.close(folder_fd)
    raise TransferRefusedError(
        f"{location.folder.ucloud_id}/{session.partial_name} is not this upload's data; "
        "remove it and start the upload again",
        409,
    )


def stored_size(session: UploadSession) -> int:
    """How many bytes of the upload its partial file holds (0 when there is none)."""
    folder_fd = open_folder(session.location)
    try:
        st = os.stat(session.partial_name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    finally:
        os.close(folder_fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def remove_partial(session: UploadSession) -> None:
    """Remove an expired upload's partial file, if it is still one of ours; best effort."""
    try:
        folder_fd = open_folder(session.location)
    except PathRefusedError:
        return  # the folder is gone, and the partial file with it
    try:
        st = os.stat(session.partial_name, dir_fd=folder_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            os.unlink(session.partial_name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("an expired upload's partial file could not be removed", extra={"error": str(error)})
    finally:
        os.close(folder_fd)


def sync_folder(folder_fd: int) -> None:
    """Make a rename in the folder durable; best effort (the folder may not be readable)."""
    with contextlib.suppress(OSError):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


# --- receiving a chunk --------------------------------------------------------


@dataclass
class Received:
    """How much of a chunk's body arrived and how much of that is on disk."""

    arrived: int = 0
    written: int = 0


async def receive(
    fd: int, *, start: int, length: int, body: ChunkBody, received: Received, shown: str, idle_seconds: float
) -> None:
    """Write the body at ``start`` as it arrives: by splice from the socket, or piece by piece.

    A body that sends nothing for ``idle_seconds`` is cut off; what arrived until then is kept.
    """
    if isinstance(body, SocketBody):
        try:
            received.arrived = received.written = await body.to_file(fd, start, idle_seconds)
        except BodyIdleError as stopped:
            received.arrived = received.written = stopped.moved
            raise _idle(start, received, idle_seconds) from None
        except BodyStoppedError as stopped:
            received.arrived = received.written = stopped.moved
            raise _cut_off(start, length, received) from None
        except OSError as error:  # the disk's refusal (full, quota, ...)
            raise refusal(error, shown) from error
    else:
        await _receive_pieces(
            fd, start=start, length=length, body=body, received=received, shown=shown, idle_seconds=idle_seconds
        )
    if received.written < length:
        raise TransferRefusedError(
            f"the body ended after {received.written} of {length} bytes; they are kept: "
            f"continue at offset {start + received.written}",
            expected_offset=start + received.written,
        )


def _idle(start: int, received: Received, idle_seconds: float) -> TransferRefusedError:
    return TransferRefusedError(
        f"no data arrived for {idle_seconds:g} s; the {received.written} bytes of "
        f"the chunk that did are kept: continue at offset {start + received.written}",
        408,
        expected_offset=start + received.written,
    )


def _cut_off(start: int, length: int, received: Received) -> TransferRefusedError:
    return TransferRefusedError(
        f"the chunk was cut off after {received.written} of {length} bytes; they are kept: "
        f"continue at offset {start + received.written}",
        expected_offset=start + received.written,
    )


async def _receive_pieces(
    fd: int,
    *,
    start: int,
    length: int,
    body: AsyncIterator[bytes],
    received: Received,
    shown: str,
    idle_seconds: float,
) -> None:
    """Write the pieces of ``body`` at ``start`` as they arrive (``_DiskWriter``)."""
    writer = _DiskWriter(fd, start, received, shown)
    try:
        while True:
            try:
                async with asyncio.timeout(idle_seconds):
                    piece = await anext(body, None)
            except TimeoutError:
                await writer.flush()
                raise _idle(start, received, idle_seconds) from None
            except BodyInterruptedError:
                await writer.flush()
                raise _cut_off(start, length, received) from None
            if piece is None:
                break
            received.arrived += len(piece)
            if received.arrived > length:
                await writer.flush()
                raise TransferRefusedError(f"the body is longer than its Content-Length ({length} bytes)")
            await writer.add(piece)
        await writer.flush()
    finally:
        await writer.settle()


def _write_pieces(fd: int, pieces: Sequence[bytes], position: int, shown: str) -> None:
    """Write ``pieces`` one after the other at ``position``; a refusal (a full disk) as the user is shown it."""
    try:
        pwrite_all(fd, pieces, position)
    except OSError as error:
        raise refusal(error, shown) from error


class _DiskWriter:
    """Writes a chunk's pieces at their place in the partial file, in batches of about WRITE_PIECE_BYTES.

    A batch is written in a worker thread while the next one arrives, so the disk and the network
    work at the same time; at most two batches are held. ``received.written`` counts what is on disk.
    """

    def __init__(self, fd: int, start: int, received: Received, shown: str) -> None:
        self._fd, self._start, self._received, self._shown = fd, start, received, shown
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writing: asyncio.Future[None] | None = None
        self._writing_bytes = 0

    async def add(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes >= WRITE_PIECE_BYTES:
            await self._wait()
            self._start_writing()

    async def flush(self) -> None:
        """Everything added is on disk (or the write's refusal is raised)."""
        await self._wait()
        self._start_writing()
        await self._wait()

    async def settle(self) -> None:
        """No write is left running on the fd (the caller closes it next); a failure was reported already.

        Waits even when the request is being cancelled: the worker thread cannot be stopped, and
        closing its fd under it could let it write into a file opened later with the same number.
        """
        writing = self._writing
        if writing is not None:
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # looked at: the refusal it carries was raised already, or is moot

    def _start_writing(self) -> None:
        if not self._pending:
            return
        batch, at = self._pending, self._start + self._received.written
        self._pending, self._writing_bytes, self._pending_bytes = [], self._pending_bytes, 0
        self._writing = asyncio.ensure_future(asyncio.to_thread(_write_pieces, self._fd, batch, at, self._shown))

    async def _wait(self) -> None:
        writing = self._writing
        if writing is None:
            return
        try:
            await asyncio.shield(writing)  # a cancelled request does not cancel the write under way
        finally:
            if writing.done():
                self._writing = None
        self._received.written += self._writing_bytes

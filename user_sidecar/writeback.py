"""Starting a file range's way to disk early, with Linux ``sync_file_range(2)``.

An upload answers its last chunk only once the file is on disk (``fsync``). Left to itself the
kernel holds a whole 1 GiB upload in the page cache and writes it all at that fsync; asking it
to start writing each chunk as soon as the chunk is in makes the disk work while the network
does, and the final fsync finds little left. Python has no binding for the call, hence ctypes;
where it is missing this does nothing (the fsync still makes the file safe, only later).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Any, Final

log = logging.getLogger(__name__)

SYNC_FILE_RANGE_WRITE: Final = 2  # start writing the dirty pages of the range; do not wait


def _binding() -> Any:
    try:
        call = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)  # int, off64_t, off64_t, flags
    call.restype = ctypes.c_int
    return call


_sync_file_range = _binding()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel begin writing ``length`` bytes at ``offset`` of ``fd`` to disk, without waiting for it."""
    if _sync_file_range is None or length <= 0:
        return
    if _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0:
        # Only an early start is lost: the upload's final fsync still writes everything.
        log.debug("sync_file_range failed", extra={"errno": ctypes.get_errno()})


class BackgroundWriteBack:
    """Starts write-backs in worker threads and does not wait for them (the call may wait for the disk's queue).

    Each works on its own duplicate of the file's descriptor, so the caller may close its own at once.
    """

    def __init__(self) -> None:
        self._running: set[asyncio.Future[None]] = set()

    def start(self, fd: int, offset: int, length: int) -> None:
        if _sync_file_range is None or length <= 0:
            return
        running = asyncio.ensure_future(asyncio.to_thread(_start_and_close, os.dup(fd), offset, length))
        self._running.add(running)  # kept until done: the loop holds only weak references to tasks
        running.add_done_callback(self._running.discard)


def _start_and_close(fd: int, offset: int, length: int) -> None:
    try:
        start_writeback(fd, offset, length)
    finally:
        os.close(fd)

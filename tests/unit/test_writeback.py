"""user_sidecar.writeback: starting a range's write-back early, on a real file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ucim.user_sidecar import writeback
from ucim.user_sidecar.writeback import BackgroundWriteBack, start_writeback


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def test_the_call_is_bound_on_linux_and_starts_a_write_back(tmp_path: Path) -> None:
    assert writeback._sync_file_range is not None
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * (1 << 20))
        start_writeback(fd, 0, 1 << 20)  # returns without waiting; the data stays as written
        start_writeback(fd, 0, 0)  # nothing to write: nothing asked
    finally:
        os.close(fd)
    assert (tmp_path / "data").read_bytes() == b"x" * (1 << 20)


async def test_background_write_backs_close_their_own_descriptor(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    before = open_fds()
    background = BackgroundWriteBack()
    os.write(fd, b"y" * (4 << 20))
    for offset in range(0, 4 << 20, 1 << 20):
        background.start(fd, offset, 1 << 20)
    os.close(fd)  # the caller may close its own at once
    await asyncio.gather(*background._running)
    assert open_fds() == before - 1  # the caller's fd closed, no duplicate left open
    assert (tmp_path / "data").read_bytes() == b"y" * (4 << 20)

"""ucim.common.file_writes: received pieces written whole, in calls of at most WRITE_BYTES."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ucim.common.file_writes import WRITE_BYTES, pwrite_all

SIZES = [0, 1, 4096, 70_000, WRITE_BYTES - 1, WRITE_BYTES, WRITE_BYTES + 1, 3 * WRITE_BYTES + 5]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every pwritev, each one short by a byte when it can be (as a disk may answer)."""
    sizes: list[int] = []
    real = os.pwritev

    def short_pwritev(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        asked = sum(len(buffer) for buffer in buffers)
        sizes.append(asked)
        joined = b"".join(buffers)
        return real(fd, [joined[: max(1, asked - 1)]], offset)

    monkeypatch.setattr(os, "pwritev", short_pwritev)
    return sizes


@pytest.mark.parametrize("at", [0, 10])
def test_every_piece_lands_in_order_at_its_position(tmp_path: Path, calls: list[int], at: int) -> None:
    pieces = [os.urandom(size) for size in SIZES]
    path = tmp_path / "file"
    path.write_bytes(b"x" * at)
    fd = os.open(path, os.O_WRONLY)
    try:
        written = pwrite_all(fd, pieces, at)
    finally:
        os.close(fd)
    assert written == sum(SIZES)
    assert path.read_bytes() == b"x" * at + b"".join(pieces)
    assert max(calls) <= WRITE_BYTES


def test_small_pieces_go_together(tmp_path: Path, calls: list[int]) -> None:
    fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT)
    try:
        pwrite_all(fd, [b"a" * 1000] * 100, 0)
    finally:
        os.close(fd)
    assert calls[0] == 100_000  # one call for all of them (then what each short write left)


def test_nothing_to_write_writes_nothing(tmp_path: Path, calls: list[int]) -> None:
    fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT)
    try:
        assert pwrite_all(fd, [b"", memoryview(b"")], 0) == 0
    finally:
        os.close(fd)
    assert calls == []

"""Reading a job's output files from where a reader left off, then as they grow.

The files (``ucim.user_sidecar.sbatch`` names rank 0's; a job may write more ranks):
``stdout.txt`` and ``stderr.txt`` are rank 0's, ``std-<rank>.out`` and ``std-<rank>.err`` any rank's.
Files that appear later are picked up, and every file is read from its offset (0: the whole history).

The instance runs as its user, so every open here is the user's own. Memory stays bounded:
reads of at most ``chunk_bytes``, one decoder per file. Waiting is event-driven: inotify on
the job folder (asyncinotify) wakes the reader when a file is written or created; a fallback
tick every ``fallback_seconds`` reads and lists again anyway, for file systems whose changes
inotify does not see (NFS, Lustre written from the compute nodes).
"""

from __future__ import annotations

import asyncio
import codecs
import os
import re
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from asyncinotify import Inotify, Mask

from ucim.common.instance_api import LogChunk

# 8 KiB: a chunk's JSON line stays well under the 128 KiB a reader's readline takes, even all escaped.
CHUNK_BYTES: Final = 8192
FALLBACK_SECONDS: Final = 1.0
_WAKE: Final = Mask.MODIFY | Mask.CLOSE_WRITE | Mask.CREATE | Mask.MOVED_TO
_NEW_FILE: Final = Mask.CREATE | Mask.MOVED_TO | Mask.Q_OVERFLOW
_NAME: Final = re.compile(r"std-(?P<rank>\d{1,6})\.(?P<ext>out|err)|(?P<std>stdout|stderr)\.txt")

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class OutputFile:
    name: str
    rank: int
    stream: Stream


def output_file(name: str) -> OutputFile | None:
    """The output file ``name`` is (rank and stream), or None for any other file of the folder."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    if match["std"] is not None:
        return OutputFile(name, 0, "stdout" if match["std"] == "stdout" else "stderr")
    return OutputFile(name, int(match["rank"]), "stdout" if match["ext"] == "out" else "stderr")


@dataclass
class _Reader:
    file: OutputFile
    offset: int
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def read(self, folder: Path, size: int) -> LogChunk | None:
        """The next chunk from ``offset``, or None when there is nothing new (or the file went)."""
        try:
            with (folder / self.file.name).open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read(size)
        except FileNotFoundError:
            return None
        if not data:
            return None
        self.offset += len(data)
        text = self.decoder.decode(data)
        # Bytes of a character not yet complete stay in the decoder: a later reader starts before them.
        end = self.offset - len(self.decoder.getstate()[0])
        return LogChunk(file=self.file.name, rank=self.file.rank, stream=self.file.stream, text=text, end=end)


class LogTailer:
    """The output files of one job folder, read from ``offsets`` (by file name) on."""

    def __init__(
        self,
        folder: Path,
        offsets: Mapping[str, int] | None = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        fallback_seconds: float = FALLBACK_SECONDS,
    ) -> None:
        self.folder = folder
        self.chunk_bytes = chunk_bytes
        self.fallback_seconds = fallback_seconds
        self._offsets = dict(offsets or {})
        self._readers: dict[str, _Reader] = {}

    def _list(self) -> None:
        """Start reading the output files not read yet (rank 0's first, then by rank)."""
        with os.scandir(self.folder) as entries:
            names = [entry.name for entry in entries if entry.name not in self._readers]
        for name in names:
            found = output_file(name)
            if found is not None:
                self._readers[name] = _Reader(found, self._offsets.get(name, 0))
        self._readers = dict(sorted(self._readers.items(), key=lambda item: (item[1].file.rank, item[0])))

    def _drain(self) -> Iterator[LogChunk]:
        """Everything the files hold now, a chunk at a time, file by file."""
        for reader in list(self._readers.values()):
            while (chunk := reader.read(self.folder, self.chunk_bytes)) is not None:
                if chunk.text:
                    yield chunk

    async def read_all(self) -> AsyncGenerator[LogChunk, None]:
        """What the files hold now, from the offsets, then the end."""
        self._list()
        for chunk in self._drain():
            yield chunk

    async def follow(self) -> AsyncGenerator[LogChunk | None, None]:
        """The files' chunks as they come, for ever; None at every wake-up that found nothing (the caller's tick)."""
        with Inotify() as inotify:
            inotify.add_watch(self.folder, _WAKE)
            self._list()
            while True:
                found = False
                for chunk in self._drain():
                    found = True
                    yield chunk
                if not found:
                    yield None
                if await self._wait(inotify):
                    self._list()

    async def _wait(self, inotify: Inotify) -> bool:
        """Until the folder changes or the fallback tick; True if files may have appeared (list again)."""
        try:
            async with asyncio.timeout(self.fallback_seconds):
                event = await inotify.get()
        except TimeoutError:
            return True
        return bool(event.mask & _NEW_FILE)

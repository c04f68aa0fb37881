"""Folder uploads (UCloud's WEBSOCKET_V2): many files over one websocket, written as the instance's user.

``GET FOLDER_UPLOAD_PATH?token=<t>`` upgrades to the protocol of ``ucim.common.upload_frames``.
Before the upgrade the token is checked and the upload's folder made under the session's
conflict policy (``folder_upload_io.open_top``), so a refusal is a readable 4xx. Then:

* LISTING entries queue up; at most MAX_OPEN_FILES are open at once. A batch of them is
  opened in one worker thread call, each answered OK (send the data) or SKIP (not needed:
  the same file is there, or it is refused: a hostile name, REJECT and a taken name, too
  large). Answers go out as soon as there are any, coalesced into one frame (IM2 waits for
  its 50 ms tick; the protocol does not ask it to).
* CHUNKs are kept until a file is complete (a small file is one chunk) and then finished
  with the other complete files in one thread call (``finish_all``: write, mtime, mode,
  fsync, commit); a large file's data is written as it comes, 1 MiB at a time. At most
  MAX_BUFFERED_BYTES of received data wait for the disk; beyond that the socket is not
  read (backpressure). A file's data before its OK breaks the protocol, as do more than
  MAX_LISTED_FILES files listed and not done.
* FILES_COMPLETED, the cumulative count of files done (written or skipped), is the
  protocol's progress; the web client waits for it before it sends the next listing.

The connection ends when the client sends CLOSE (the session is then used up), closes the
socket (the session stays, until it expires, so the client may reconnect: what is there
already is skipped), breaks the protocol (closed with 1008 and why), or after IDLE_SECONDS
with no file in flight (as IM2). Files cut off are never seen under their names: their
partial files are removed. One connection per session at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

from ucim.common.upload_frames import (
    Chunk,
    Close,
    Completed,
    Entry,
    FrameError,
    Ok,
    ServerMessage,
    Skip,
    encode_server,
    parse_client_frame,
)
from ucim.user_sidecar import folder_upload_io as io
from ucim.user_sidecar.metrics import TRANSFER_EVENTS, UPLOAD_BYTES
from ucim.user_sidecar.paths import PathRefusedError
from ucim.user_sidecar.transfer_io import WRITE_PIECE_BYTES
from ucim.user_sidecar.transfer_sessions import FolderUploadSession, TransferLimits

log = logging.getLogger(__name__)

MAX_OPEN_FILES: Final = 64
MAX_BUFFERED_BYTES: Final = 64 << 20
IDLE_SECONDS: Final = 30.0
# Files listed and not yet done (the web client lists at most 5,000 before it waits for them).
MAX_LISTED_FILES: Final = 100_000
# Refusals a connection's summary names (the rest are counted).
SHOWN_REFUSALS: Final = 5


class ProtocolViolationError(Exception):
    """The client broke the protocol; the connection is closed with this reason."""


@dataclass(eq=False)
class _File:
    entry: Entry
    partial: str
    state: str = "waiting"  # waiting → open → finishing → done
    opened: io.OpenedFile | None = None
    received: int = 0
    pending: list[bytes | memoryview] = field(default_factory=list)
    pending_bytes: int = 0
    writer: asyncio.Task[None] | None = None
    given_up: bool = False  # the client sent SKIP

    @property
    def complete(self) -> bool:
        return self.received == self.entry.size


class FolderUpload:
    """One connection of a folder upload session; ``run`` serves it until it ends."""

    def __init__(
        self,
        socket: web.WebSocketResponse,
        folders: io.Folders,
        *,
        key: str,
        session: FolderUploadSession,
        file_mode: int,
        limits: TransferLimits,
    ) -> None:
        self._socket = socket
        self._folders = folders
        self._key = key
        self._policy = session.conflict_policy
        self._mode = file_mode
        self._limits = limits
        self._files: dict[int, _File] = {}
        self._waiting: deque[_File] = deque()
        self._ready: list[_File] = []
        self._open = 0
        self._in_flight = 0  # listed and not done
        self._buffered = 0
        self._completed = 0
        self._sent_completed = 0
        self._out: list[ServerMessage] = []
        self._opener_wake, self._finisher_wake, self._sender_wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._finishing = 0
        self._settled = asyncio.Event()
        self._opener_idle = asyncio.Event()
        self._opener_idle.set()
        self._ending = False
        self.outcomes: Counter[str] = Counter()
        self.refusals: list[str] = []
        self.closed_by_client = False

    # --- the connection ---

    def report(self) -> None:
        """Count the connection's files in the metrics and log what became of them."""
        for outcome, count in self.outcomes.items():
            TRANSFER_EVENTS.labels("folder", outcome.replace(" ", "_")).inc(count)
        log.info(
            "a folder upload's connection ended",
            extra={"files": dict(self.outcomes), "refusals": self.refusals, "closed_by_client": self.closed_by_client},
        )

    async def run(self) -> None:
        loops = [asyncio.create_task(loop()) for loop in (self._opener, self._finisher, self._sender)]
        try:
            try:
                await self._read()
            except ProtocolViolationError as error:
                log.info("a folder upload broke the protocol", extra={"why": str(error)})
                await self._socket.close(code=WSCloseCode.POLICY_VIOLATION, message=str(error)[:120].encode())
        finally:
            # Also when aiohttp cancels the handler (the client went away): no partial file may stay behind.
            try:
                await self._settle()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                await asyncio.to_thread(self._folders.close)
                await self._socket.close()

    async def _read(self) -> None:
        last_frame = time.monotonic()
        while True:
            try:
                message = await self._socket.receive(timeout=IDLE_SECONDS)
            except TimeoutError:
                stalled = time.monotonic() - last_frame >= self._limits.body_idle_seconds
                if not self._in_flight or stalled:
                    return
                continue
            if message.type == WSMsgType.TEXT:
                if message.data == "ping":
                    await self._socket.send_str("pong")
                continue
            if message.type != WSMsgType.BINARY:
                return  # closed, closing or broken
            last_frame = time.monotonic()
            try:
                messages = parse_client_frame(message.data)
            except FrameError as error:
                raise ProtocolViolationError(str(error)) from error
            for parsed in messages:
                if isinstance(parsed, Close):
                    self.closed_by_client = True
                    return
                self._take(parsed)
            while self._buffered >= MAX_BUFFERED_BYTES:
                self._room.clear()
                await self._room.wait()

    def _take(self, message: Entry | Chunk | Skip) -> None:
        if isinstance(message, Entry):
            if message.file_id in self._files:
                raise ProtocolViolationError(f"file {message.file_id} is listed twice")
            if self._in_flight >= MAX_LISTED_FILES:
                raise ProtocolViolationError(f"more than {MAX_LISTED_FILES} files listed and not done")
            file = _File(message, io.partial_name(self._key, message.file_id))
            self._files[message.file_id] = file
            self._waiting.append(file)
            self._in_flight += 1
            self._opener_wake.set()
            return
        known = self._files.get(message.file_id)
        if known is None:
            raise ProtocolViolationError(f"file {message.file_id} was never listed")
        if isinstance(message, Skip):
            self._given_up(known)
        elif known.state == "waiting" and message.data:
            # Data the server did not ask for yet would wait in memory for a file it may never open.
            raise ProtocolViolationError(f"data for file {message.file_id} before its OK")
        elif known.state != "done" and message.data:
            self._chunk(known, message.data)

    def _chunk(self, file: _File, data: memoryview) -> None:
        file.received += len(data)
        if file.received > file.entry.size:
            raise ProtocolViolationError(f"file {file.entry.file_id} got more than its {file.entry.size} bytes")
        file.pending.append(data)
        file.pending_bytes += len(data)
        self._buffered += len(data)
        if file.state == "open":
            self._advance(file)

    def _advance(self, file: _File) -> None:
        """An open file's next step: finish it when complete, write what is pending when there is enough."""
        if file.writer is not None:
            return  # it looks again when it is done
        if file.complete:
            file.state = "finishing"
            self._ready.append(file)
            self._finisher_wake.set()
        elif file.pending_bytes >= WRITE_PIECE_BYTES:
            file.writer = asyncio.create_task(self._write(file))

    def _given_up(self, file: _File) -> None:
        file.given_up = True
        if file.state == "waiting":
            self._done(file, "given up")
        elif file.state == "open" and file.writer is None:
            self._abandon(file, "given up")

    # --- opening ---

    async def _opener(self) -> None:
        while True:
            await self._opener_wake.wait()
            self._opener_wake.clear()
            while self._waiting and self._open < MAX_OPEN_FILES and not self._ending:
                batch: list[_File] = []
                while self._waiting and self._open + len(batch) < MAX_OPEN_FILES:
                    file = self._waiting.popleft()
                    if file.state == "waiting":
                        batch.append(file)
                self._open += len(batch)
                self._opener_idle.clear()
                try:
                    opened = await asyncio.to_thread(self._open_batch, [file.entry for file in batch], batch)
                    for file, result in zip(batch, opened, strict=True):
                        self._opened(file, result)
                finally:
                    self._opener_idle.set()

    def _open_batch(self, entries: list[Entry], files: list[_File]) -> list[io.OpenedFile | io.Outcome]:
        max_bytes = self._limits.max_upload_bytes
        return [
            io.open_file(self._folders, entry, self._policy, file.partial, max_bytes)
            for entry, file in zip(entries, files, strict=True)
        ]

    def _opened(self, file: _File, result: io.OpenedFile | io.Outcome) -> None:
        if isinstance(result, io.Outcome):
            self._open -= 1
            self._out.append(Skip(file.entry.file_id))
            self._done(file, "same file there" if result.why == "" else "refused", result.why)
            return
        file.opened, file.state = result, "open"
        if file.given_up or (self._ending and not file.complete):
            self._abandon(file, "given up")
            return
        self._out.append(Ok(file.entry.file_id))
        self._sender_wake.set()
        self._advance(file)

    # --- writing and finishing ---

    async def _write(self, file: _File) -> None:
        assert file.opened is not None  # noqa: S101 (only open files are written)
        try:
            while file.pending and not (file.complete or file.given_up):
                file.opened.pending, taken = file.pending, file.pending_bytes
                file.pending, file.pending_bytes = [], 0
                try:
                    UPLOAD_BYTES.inc(await asyncio.to_thread(io.write, file.opened))
                except PathRefusedError as error:
                    file.writer = None
                    self._release(taken)
                    self._abandon(file, "refused", str(error))
                    return
                self._release(taken)
        finally:
            file.writer = None
        if file.given_up:
            self._abandon(file, "given up")
        elif file.state == "open":
            self._advance(file)

    async def _finisher(self) -> None:
        while True:
            await self._finisher_wake.wait()
            self._finisher_wake.clear()
            while self._ready:
                batch, self._ready = self._ready, []
                self._finishing += len(batch)
                taken = 0
                for file in batch:
                    assert file.opened is not None  # noqa: S101 (only open files finish)
                    file.opened.pending, taken = file.pending, taken + file.pending_bytes
                    file.pending, file.pending_bytes = [], 0
                pairs = [(file.opened, file.entry) for file in batch if file.opened is not None]
                try:
                    outcomes = await asyncio.to_thread(io.finish_all, pairs, self._policy, self._mode)
                except Exception:  # a bug, not a refusal (those are outcomes): the files are lost, the upload goes on
                    log.exception("finishing uploaded files failed")
                    outcomes = [io.Outcome(why="the provider failed to store the file")] * len(batch)
                finally:
                    self._finishing -= len(batch)
                self._release(taken)
                UPLOAD_BYTES.inc(taken)
                for file, outcome in zip(batch, outcomes, strict=True):
                    self._open -= 1
                    self._done(file, "refused" if outcome.name is None else "completed", outcome.why)
                self._opener_wake.set()
            self._settled.set()

    def _abandon(self, file: _File, outcome: str, why: str | None = None) -> None:
        """Give up an open file: its partial file goes, in the background."""
        opened, file.opened = file.opened, None
        self._open -= 1
        self._done(file, outcome, why)
        self._opener_wake.set()
        if opened is not None:
            self._finishing += 1
            task = asyncio.create_task(asyncio.to_thread(io.discard, opened))
            task.add_done_callback(lambda _: self._discarded())

    def _discarded(self) -> None:
        self._finishing -= 1
        self._settled.set()

    def _release(self, size: int) -> None:
        self._buffered -= size
        if self._buffered < MAX_BUFFERED_BYTES:
            self._room.set()

    def _done(self, file: _File, outcome: str, why: str | None = None) -> None:
        self._release(file.pending_bytes)
        file.pending, file.pending_bytes = [], 0
        file.state = "done"
        self._in_flight -= 1
        self._completed += 1
        self.outcomes[outcome] += 1
        if why and len(self.refusals) < SHOWN_REFUSALS:
            self.refusals.append(why)
        self._sender_wake.set()

    # --- answering ---

    async def _sender(self) -> None:
        while True:
            await self._sender_wake.wait()
            self._sender_wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        """What there is to say, in one frame: OKs and SKIPs, and the count of files done when it changed."""
        messages, self._out = self._out, []
        if self._completed != self._sent_completed:
            self._sent_completed = self._completed
            messages.append(Completed(self._completed))
        if messages and not self._socket.closed:
            with contextlib.suppress(ConnectionError):
                await self._socket.send_bytes(encode_server(messages))

    # --- the end ---

    async def _settle(self) -> None:
        """Finish what is complete, give up the rest, and wait until no thread works on a file."""
        self._ending = True
        await self._opener_idle.wait()  # the batch being opened is open (or done) now
        for file in list(self._files.values()):
            if file.state == "waiting":
                self._done(file, "aborted")
            elif file.state == "open" and not file.complete:
                file.given_up = True
                if file.writer is None:
                    self._abandon(file, "aborted")
        while True:
            writers = [file.writer for file in self._files.values() if file.writer is not None]
            if writers:
                await asyncio.wait(writers)
            elif self._ready or self._finishing:
                self._settled.clear()
                self._finisher_wake.set()
                await self._settled.wait()
            else:
                break
        await self._flush()

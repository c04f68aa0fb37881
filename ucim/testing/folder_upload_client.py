"""The browser's side of a folder upload (WEBSOCKET_V2), as UCloud's web client drives it (``Files/Uploader.tsx``).

Written from the protocol (PROTOCOL-SCHEMAS §7.4, ``ucim.common.upload_frames``):

* the socket is the endpoint ``files/upload`` answered, ``http`` → ``ws`` (no Core JWT: the
  token in its query is the credential);
* the files go in listing batches of up to 5,000 (the web client's ``fileFetcher``), each
  batch in LISTING frames of at most 64 KiB, with paths relative to the uploaded folder; the
  next batch is listed only once FILES_COMPLETED reached every file listed so far;
* a file's data goes only after the server's OK for it, in CHUNKs of at most 16,000,000 bytes
  (a 0-byte file as one empty CHUNK), with at most 256 files started and not completed;
* a SKIP from the server means the file is not sent;
* at the end the browser just closes the socket (its protocol enum has no CLOSE); IM2's Go
  client sends CLOSE first (``send_close``).

``cut_after_bytes`` closes the socket mid-stream once that much file data went out, as a tab
closed during an upload does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from ucim.common.transfer_contract import WEB_CLIENT_CHUNK_BYTES
from ucim.common.upload_frames import (
    Completed,
    Entry,
    Ok,
    Skip,
    encode_chunk,
    encode_close,
    encode_listing,
    parse_server_frame,
)

LISTING_BATCH: Final = 5000  # Uploader.tsx's fileFetcher gathers up to 5,000 entries per call
MAX_CONCURRENT_FILES: Final = 256  # UploadConfig.MAX_CONCURRENT_UPLOADS_IN_FOLDER


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: its path relative to the folder, its data (bytes, or a file read as it goes), mtime in ms."""

    path: str
    source: bytes | Path
    modified_at: int

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


def files_of(folder: Path) -> list[LocalFile]:
    """Every regular file below ``folder``, as a browser's folder drop lists them (sorted here, for repeatability)."""
    found = []
    for root, folders, names in os.walk(folder):
        folders.sort()
        for name in sorted(names):
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            found.append(LocalFile(relative, path, int(path.stat().st_mtime * 1000)))
    return found


@dataclass
class FolderUploadResult:
    """What the client saw: the files the server took (OK) and skipped, the last FILES_COMPLETED, how it ended."""

    accepted: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    files_completed: int = 0
    listed: int = 0
    close_code: int | None = None
    close_message: str = ""
    frames_received: int = 0
    completions_seen: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.listed > 0 and self.files_completed >= self.listed


class _Client:
    def __init__(self, socket: aiohttp.ClientWebSocketResponse, files: Sequence[LocalFile], chunk_bytes: int) -> None:
        self.socket = socket
        self.files = dict(enumerate(files))
        self.chunk_bytes = chunk_bytes
        self.result = FolderUploadResult()
        self.ready: asyncio.Queue[int] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.started = 0
        self.sent_bytes = 0
        self.closed = False

    async def read(self) -> None:
        while True:
            message = await self.socket.receive()
            if message.type == aiohttp.WSMsgType.CLOSE:
                self.result.close_message = str(message.extra or "")
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                break
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            self.result.frames_received += 1
            for parsed in parse_server_frame(message.data):
                if isinstance(parsed, Ok):
                    self.result.accepted.add(self.files[parsed.file_id].path)
                    self.ready.put_nowait(parsed.file_id)
                elif isinstance(parsed, Skip):
                    self.result.skipped.add(self.files[parsed.file_id].path)
                elif isinstance(parsed, Completed):
                    self.result.files_completed = parsed.count
                    self.result.completions_seen.append(parsed.count)
            self.changed.set()
        self.closed = True
        self.result.close_code = self.socket.close_code
        self.changed.set()

    async def send(self, cut_after_bytes: int | None) -> None:
        while True:
            file_id = await self.ready.get()
            while self.started - self.result.files_completed >= MAX_CONCURRENT_FILES and not self.closed:
                self.changed.clear()
                await self.changed.wait()
            self.started += 1
            file = self.files[file_id]
            source = file.source if isinstance(file.source, bytes) else await asyncio.to_thread(file.source.read_bytes)
            for piece in _pieces(source, self.chunk_bytes):
                if cut_after_bytes is not None and self.sent_bytes + len(piece) > cut_after_bytes:
                    keep = max(0, cut_after_bytes - self.sent_bytes)
                    if keep:
                        await self.socket.send_bytes(encode_chunk(file_id, piece[:keep]))
                    await self.socket.close()  # a tab closed mid-upload
                    return
                await self.socket.send_bytes(encode_chunk(file_id, piece))
                self.sent_bytes += len(piece)

    async def list_all(self, batch: int) -> None:
        ids = list(self.files)
        for start in range(0, len(ids), batch):
            entries = [
                Entry(file_id, self.files[file_id].size, self.files[file_id].modified_at, self.files[file_id].path)
                for file_id in ids[start : start + batch]
            ]
            for frame in encode_listing(entries):
                await self.socket.send_bytes(frame)
            self.result.listed += len(entries)
            while self.result.files_completed < self.result.listed and not self.closed:
                self.changed.clear()
                await self.changed.wait()
            if self.closed:
                return


def _pieces(data: bytes, chunk_bytes: int) -> list[bytes]:
    """The file's CHUNK payloads (one empty one for an empty file)."""
    return [data[at : at + chunk_bytes] for at in range(0, len(data), chunk_bytes)] or [b""]


def socket_url(endpoint: str) -> str:
    """The endpoint as the web client opens it: ``http`` → ``ws``, ``https`` → ``wss``."""
    return endpoint.replace("http://", "ws://", 1).replace("https://", "wss://", 1)


async def upload_folder(
    endpoint: str,
    files: Sequence[LocalFile],
    *,
    session: aiohttp.ClientSession | None = None,
    listing_batch: int = LISTING_BATCH,
    chunk_bytes: int = WEB_CLIENT_CHUNK_BYTES,
    send_close: bool = False,
    cut_after_bytes: int | None = None,
) -> FolderUploadResult:
    """Upload ``files`` over one WEBSOCKET_V2 connection as the web client does; what it saw.

    A refusal before the upgrade raises ``aiohttp.WSServerHandshakeError`` (its ``status``).
    """
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        socket = await stack.enter_async_context(session.ws_connect(socket_url(endpoint), max_msg_size=0))
        client = _Client(socket, files, chunk_bytes)
        reader = asyncio.create_task(client.read())
        sender = asyncio.create_task(client.send(cut_after_bytes))
        try:
            lister = asyncio.create_task(client.list_all(listing_batch))
            await asyncio.wait([lister, sender, reader], return_when=asyncio.FIRST_COMPLETED)
            if lister.done():
                lister.result()
                if send_close and not client.closed:
                    await socket.send_bytes(encode_close())
            else:
                lister.cancel()
        finally:
            sender.cancel()
            if not socket.closed:
                await socket.close()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, aiohttp.ClientError):
                await sender
            await reader
        client.result.close_code = socket.close_code
        return client.result

"""Uploads (UCloud's CHUNKED protocol) and downloads through the user's own instance: the service.

``Transfers`` makes the sessions Core asks for (``transfer_sessions.py`` stores them),
takes upload chunks, opens downloads and sweeps expired sessions, and the partial files
of expired uploads, at start-up and periodically; the file work is ``transfer_io.py``.

Uploads. Offsets follow the CHUNKED rules: ``-1`` appends; an offset at or below the
stored size truncates to it and writes (a client re-sends an aborted chunk); one beyond
it is a 409 that names the offset to send. One chunk at a time per upload. If the
conflict policy refuses the finished file (REJECT, and someone created the target
meanwhile), the data and the session are kept: the client may clear the name and send
the last chunk again (or an empty one at the end) to finish. A finished upload answers
progress requests (complete, with the id the file got) until it expires, but takes no
more chunks.

Downloads. A token names one regular file and is used once: the first answer that
sends the file (200 or 206; a HEAD does not count) consumes it, by unlinking the
session's file, so two concurrent requests cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from ucim.common.instance_api import UploadProgress
from ucim.common.protocol import FilesProviderCreateDownloadRequestItem, FilesProviderCreateUploadRequestItem
from ucim.common.transfer_contract import MAX_CHUNK_BYTES
from ucim.user_sidecar import folder_upload_io, transfer_io
from ucim.user_sidecar.conflicts import ConflictError, commit
from ucim.user_sidecar.metrics import TRANSFER_EVENTS, UPLOAD_BYTES
from ucim.user_sidecar.paths import DriveResolver, FileId
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.transfer_io import ChunkBody, Received, TransferRefusedError
from ucim.user_sidecar.transfer_plans import Kind, plan_download, plan_each, plan_upload
from ucim.user_sidecar.transfer_sessions import (
    AnySession,
    DownloadSession,
    FolderUploadSession,
    SessionStore,
    TransferLimits,
    UploadSession,
    digest,
    expires_at,
)
from ucim.user_sidecar.writeback import BackgroundWriteBack

log = logging.getLogger(__name__)

# How long a folder upload's new connection waits for its last one to end.
FOLDER_TAKEOVER_SECONDS: Final = 10.0
# Sessions a sweep reads at a time.
SWEEP_BATCH: Final = 100
# secrets.token_urlsafe(32) is 43 characters; anything else cannot be one of ours.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")

S = TypeVar("S", UploadSession, FolderUploadSession, DownloadSession)


@dataclass
class OpenedDownload:
    """A download's file, opened; the caller closes ``fd``."""

    key: str
    session: DownloadSession
    fd: int
    name: str
    size: int


# --- the transfers of one instance --------------------------------------------


class Transfers:
    """The upload and download sessions of one instance's user.

    ``drives`` roots the drives Core resolved for a request. Methods that walk paths
    without awaiting are blocking: call them from a worker thread; the ``async`` ones do
    so themselves.
    """

    def __init__(
        self,
        folder: Path,
        drives: DriveResolver,
        limits: TransferLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = SessionStore(folder)
        self.limits = limits or TransferLimits()
        self._drives = drives
        self._clock = clock
        # Uploads with a chunk being written (or sessions being swept): one at a time each.
        self._busy: set[str] = set()
        # The folder uploads with a connection: set when it has ended.
        self._folder_connections: dict[str, asyncio.Event] = {}
        # Folder uploads the client finished (CLOSE): a connection whose read of the session began before the
        # session was removed must not take it up again (and save it back). One key per finished upload, for
        # the instance's life.
        self._used_up: set[str] = set()
        self._write_back = BackgroundWriteBack()
        # A finished upload gets the mode a newly created file of the user's would have.
        self._file_mode = 0o666 & ~transfer_io.umask()

    @classmethod
    def for_instance(cls, settings: SidecarSettings, drives: DriveResolver) -> Transfers:
        """The transfers of an instance: sessions below its user's home, limits from its settings."""
        limits = TransferLimits(
            upload_idle_seconds=settings.upload_idle_seconds,
            upload_max_age_seconds=settings.upload_max_age_seconds,
            download_lifetime_seconds=settings.download_lifetime_seconds,
            max_upload_bytes=settings.upload_max_bytes,
            body_idle_seconds=settings.upload_body_idle_seconds,
            sweep_interval_seconds=settings.transfer_sweep_interval_seconds,
        )
        return cls(drives.home / settings.transfer_folder, drives, limits)

    # --- creating sessions (blocking) ---

    def create_uploads(self, items: Sequence[FilesProviderCreateUploadRequestItem]) -> list[str]:
        """A token per item, same order; nothing is created unless every item is valid."""
        now = self._clock()
        planned = plan_each(
            items, "upload", lambda item: plan_upload(self._drives.resolve(item.resolved_collection), item, now)
        )
        return self._record("upload", planned)

    def create_downloads(self, items: Sequence[FilesProviderCreateDownloadRequestItem]) -> list[str]:
        now = self._clock()
        planned = plan_each(
            items,
            "download",
            lambda item: plan_download(self._drives.resolve(item.resolved_collection), item, now),
        )
        return self._record("download", planned)

    def _record(self, kind: Kind, planned: Sequence[tuple[str, AnySession]]) -> list[str]:
        saved: list[str] = []
        try:
            for token, session in planned:
                key = digest(token)
                self.store.save(key, session)
                saved.append(key)
        except OSError as error:
            for key in saved:
                self.store.remove(key)
            log.warning("a transfer session could not be recorded", extra={"error": str(error)})
            raise TransferRefusedError(
                f"the {kind} could not be recorded: {os.strerror(error.errno or 0)}", 503
            ) from error
        TRANSFER_EVENTS.labels(kind, "created").inc(len(planned))
        return [token for token, _ in planned]

    # --- finding sessions ---

    async def _find(self, token: str | None, kind: type[S]) -> tuple[str, S]:
        what = "download" if kind is DownloadSession else "upload"
        unknown = TransferRefusedError(f"unknown or expired {what} token", 404)
        if not token or not _TOKEN.match(token):
            raise unknown
        key = digest(token)
        session = self.store.cached(key) or await asyncio.to_thread(self.store.get, key)
        if not isinstance(session, kind) or self._clock() >= expires_at(session, self.limits):
            raise unknown
        return key, session

    # --- uploads ---

    async def upload_progress(self, token: str | None) -> UploadProgress:
        """How much of the upload is stored (lets a client resume after a crash)."""
        _, session = await self._find(token, UploadSession)
        if session.final_id is not None:
            total = session.total_size or 0
            return UploadProgress(offset=total, total_size=total, complete=True, id=session.final_id)
        stored = await asyncio.to_thread(transfer_io.stored_size, session)
        return UploadProgress(offset=stored, total_size=session.total_size)

    async def write_chunk(
        self, token: str | None, *, offset: int, total_size: int, length: int, body: ChunkBody
    ) -> UploadProgress:
        """Store one chunk of ``length`` bytes from ``body`` at ``offset`` (-1: at the end).

        ``body`` is the request's socket (spliced to the file) or its pieces, which raise
        BodyInterruptedError when the client stops sending; what arrived until then is kept.
        """
        if length > MAX_CHUNK_BYTES:
            raise TransferRefusedError(f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes, not {length}", 413)
        if total_size > self.limits.max_upload_bytes:
            raise TransferRefusedError(
                f"the file is larger than the {self.limits.max_upload_bytes} bytes an upload may hold", 413
            )
        if offset < -1 or total_size < 0 or length < 0:
            raise TransferRefusedError("the offset must be -1 or more, the sizes 0 or more")
        key, session = await self._find(token, UploadSession)
        if session.final_id is not None:
            raise TransferRefusedError(f"this upload is complete ({session.final_id}); it takes no more chunks", 404)
        if key in self._busy:
            raise TransferRefusedError("another chunk of this upload is being written; send one chunk at a time", 409)
        self._busy.add(key)
        try:
            return await self._write_chunk(key, session, offset=offset, total_size=total_size, length=length, body=body)
        finally:
            self._busy.discard(key)

    async def _write_chunk(
        self, key: str, session: UploadSession, *, offset: int, total_size: int, length: int, body: ChunkBody
    ) -> UploadProgress:
        if session.total_size is not None and total_size != session.total_size:
            raise TransferRefusedError(f"this upload's total size is {session.total_size} bytes, not {total_size}")
        folder_fd, fd, stored = await asyncio.to_thread(transfer_io.open_partial, session)
        try:
            start = stored if offset == -1 else offset
            if start > stored:
                raise TransferRefusedError(
                    f"the upload holds {stored} bytes: send the chunk at offset {stored}, not {offset}",
                    409,
                    expected_offset=stored,
                )
            if start + length > total_size:
                raise TransferRefusedError(
                    f"the chunk ends at byte {start + length}, beyond the total size {total_size}"
                )
            if start < stored:
                await asyncio.to_thread(os.ftruncate, fd, start)  # the client sends this part again
            session = session.model_copy(update={"total_size": total_size})
            completes = start + length == total_size
            received, arrived_whole = Received(), False
            try:
                shown = f"the upload to {session.location.file_id.ucloud_id}"
                await transfer_io.receive(
                    fd,
                    start=start,
                    length=length,
                    body=body,
                    received=received,
                    shown=shown,
                    idle_seconds=self.limits.body_idle_seconds,
                )
                arrived_whole = True
            finally:
                UPLOAD_BYTES.inc(received.written)
                # Also after an interruption: what arrived is kept, and the attempt counts as activity.
                session = session.model_copy(update={"last_activity": self._clock()})
                if not (completes and arrived_whole):  # else _finish records the session, whatever happens
                    if self.store.must_write(key, session):
                        await asyncio.to_thread(self.store.save, key, session)
                    else:
                        self.store.keep(key, session)
            if not completes:
                self._write_back.start(fd, start, length)  # the disk works while the next chunk arrives
                return UploadProgress(offset=start + length, total_size=total_size)
            final_id = await asyncio.to_thread(self._finish, key, session, folder_fd, fd)
        finally:
            os.close(fd)
            os.close(folder_fd)
        TRANSFER_EVENTS.labels("upload", "completed").inc()
        return UploadProgress(offset=total_size, total_size=total_size, complete=True, id=final_id)

    def _finish(self, key: str, session: UploadSession, folder_fd: int, fd: int) -> str:
        """Put the complete file in place under the conflict policy and record the session; the UCloud id it got.

        One call in one thread, for a small file's sake: its upload is a single chunk. When the
        file cannot be put in place, the session is recorded as it is (its data stays for a retry).
        """
        location = session.location
        try:
            os.fsync(fd)
            name = commit(folder_fd, session.partial_name, folder_fd, location.parts[-1], session.conflict_policy)
        except BaseException as error:
            with contextlib.suppress(OSError):  # the original error is what the client must see
                self.store.save(key, session)
            if not isinstance(error, ConflictError):
                raise
            TRANSFER_EVENTS.labels("upload", "conflict").inc()
            minutes = self.limits.upload_idle_seconds / 60
            raise TransferRefusedError(
                f"{error}; the uploaded data is kept for {minutes:g} minutes: move the existing file away, "
                "then send the last chunk again to finish",
                409,
            ) from error
        os.fchmod(fd, self._file_mode)
        transfer_io.sync_folder(folder_fd)
        final_id = FileId(location.drive, (*location.parts[:-1], name)).ucloud_id
        self.store.save(key, session.model_copy(update={"final_id": final_id, "last_activity": self._clock()}))
        return final_id

    # --- folder uploads (the protocol is ``folder_uploads.py``'s) ---

    @property
    def file_mode(self) -> int:
        return self._file_mode

    async def begin_folder_upload(self, token: str | None) -> tuple[str, FolderUploadSession]:
        """The session of a folder upload's connection; one connection per session at a time."""
        key, session = await self._find(token, FolderUploadSession)
        ending = self._folder_connections.get(key)
        if ending is not None:
            # A client that reconnects at once may find its last connection still settling: it waits for that.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FOLDER_TAKEOVER_SECONDS):
                    await ending.wait()
            # Read again: that connection may have moved the session on.
            key, session = await self._find(token, FolderUploadSession)
        if key in self._used_up:  # finished while it was read (no await from here on: this check holds)
            raise TransferRefusedError("unknown or expired upload token", 404)
        if key in self._busy:
            raise TransferRefusedError("this folder upload is open on another connection; close that one first", 409)
        self._busy.add(key)
        self._folder_connections[key] = asyncio.Event()
        return key, session

    def open_folder_upload(self, key: str, session: FolderUploadSession) -> tuple[int, FolderUploadSession]:
        """The upload's folder (an fd), made at the first connection; the session then names it (blocking)."""
        fd, name = folder_upload_io.open_top(session)
        if session.folder_name != name:
            session = session.model_copy(update={"folder_name": name, "last_activity": self._clock()})
            try:
                self.store.save(key, session)
            except BaseException:
                os.close(fd)
                raise
        return fd, session

    async def end_folder_upload(self, key: str, session: FolderUploadSession, *, used_up: bool) -> None:
        """The connection ended: the session is gone when the client said it finished, else it lives on."""
        if used_up:
            self._used_up.add(key)
        try:
            if used_up:
                await asyncio.to_thread(self.store.remove, key)
            else:
                session = session.model_copy(update={"last_activity": self._clock()})
                await asyncio.to_thread(self.store.save, key, session)
        finally:
            self._busy.discard(key)
            ended = self._folder_connections.pop(key, None)
            if ended is not None:
                ended.set()

    # --- downloads ---

    async def open_download(self, token: str | None) -> OpenedDownload:
        """Open the token's file (the token stays valid until ``consume``)."""
        key, session = await self._find(token, DownloadSession)
        fd, st = await asyncio.to_thread(transfer_io.open_download, session.location)
        return OpenedDownload(key=key, session=session, fd=fd, name=session.location.parts[-1], size=st.st_size)

    async def consume(self, key: str) -> bool:
        """Use the download's token up; False when another request already did."""
        return await asyncio.to_thread(self.store.remove, key)

    async def restore(self, key: str, session: DownloadSession) -> None:
        """Give back a token whose request did not send the file (304, 412, 416)."""
        await asyncio.to_thread(self.store.save, key, session)

    # --- expiry ---

    async def sweep(self) -> int:
        """Remove expired sessions (and the partial files of unfinished uploads); how many.

        Sessions are read SWEEP_BATCH at a time: thousands of them (a bulk upload of small files
        leaves one per file for a while) cost an instance no more memory than a few hundred.
        """
        # Never closed early: a cancelled sweep may leave it running in its thread. Its folder closes when it ends.
        sessions = self.store.on_disk()
        removed = 0
        while batch := await asyncio.to_thread(list, itertools.islice(sessions, SWEEP_BATCH)):
            now = self._clock()
            expired = [
                (key, session)
                for key, session in batch
                if key not in self._busy and now >= expires_at(session, self.limits)
            ]
            keys = {key for key, _ in expired}
            self._busy |= keys  # no chunk starts on a session while it goes
            try:
                await asyncio.to_thread(self._discard, expired)
            finally:
                self._busy -= keys
            removed += len(expired)
        return removed

    def _discard(self, sessions: list[tuple[str, AnySession]]) -> None:
        for key, session in sessions:
            if isinstance(session, UploadSession) and session.final_id is None:
                transfer_io.remove_partial(session)
            if self.store.remove(key) and not (isinstance(session, UploadSession) and session.final_id):
                TRANSFER_EVENTS.labels(session.kind, "expired").inc()

    async def sweep_forever(self) -> None:
        """Sweep now (what earlier runs left behind) and then every ``sweep_interval_seconds``.

        In the background: an instance serves at once, however many sessions it finds.
        """
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping transfer sessions failed")
            await asyncio.sleep(self.limits.sweep_interval_seconds)

"""Uploads (UCloud's CHUNKED protocol) and downloads through the user's own instance.

A transfer starts with a *session*, made by the instance when Core asks for one and named
by a token (``secrets.token_urlsafe(32)``). Only the token's SHA-256 is kept: one JSON
file per session in a 0700 folder of the user's home, written atomically, plus an
in-memory cache. The files let a session outlive the instance (instances stop when
idle); keeping them in the user's home means a token only ever works on the instance
of the user it was made for. Expired sessions, and the partial files of expired
uploads, are swept at start-up and periodically.

Uploads. The data of an unfinished upload lives next to its target, in a hidden file
``.ucim-upload-<16 hex>.part`` (mode 0600, opened with ``O_NOFOLLOW`` relative to the
folder's fd), so that finishing is one atomic link or rename on one file system
(``conflicts.commit``) and an incomplete file is never visible under the target's name.
The partial file's size is the upload's progress: it survives a crash or a restart, and
a chunk cut off halfway keeps what arrived. Offsets follow the CHUNKED rules: ``-1``
appends; an offset at or below the stored size truncates to it and writes (a client
re-sends an aborted chunk); one beyond it is a 409 that names the offset to send.
One chunk at a time per upload. If the conflict policy refuses the finished file
(REJECT, and someone created the target meanwhile), the data and the session are kept:
the client may clear the name and send the last chunk again (or an empty one at the
end) to finish. A finished upload answers progress requests (complete, with the id the
file got) until it expires, but takes no more chunks.

Downloads. A token names one regular file and is used once: the first answer that
sends the file (200 or 206; a HEAD does not count) consumes it, by unlinking the
session's file, so two concurrent requests cannot both win. The file is opened
through its drive's folder fds with ``O_NOFOLLOW`` on every component, so a symbolic
link swapped in after the token was made is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal, Protocol, TypeVar

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ucim.common.file_writes import pwrite_all
from ucim.common.instance_api import UploadProgress
from ucim.common.protocol import (
    FilesProviderCreateDownloadRequestItem,
    FilesProviderCreateUploadRequestItem,
    WriteConflictPolicy,
)
from ucim.common.splice import BodyIdleError, BodyStoppedError, SocketBody
from ucim.user_sidecar.conflicts import ConflictError, commit
from ucim.user_sidecar.paths import DriveResolver, Drives, FileId, PathRefusedError, refusal
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.writeback import BackgroundWriteBack

log = logging.getLogger(__name__)

# The CHUNKED spec's limit per chunk (the web client sends 16 MB).
MAX_CHUNK_BYTES: Final = 32_000_000
# Received data is written in pieces of about this size: never a whole chunk in memory.
WRITE_PIECE_BYTES: Final = 1 << 20
# A session whose only change is its activity time is written at most this often.
ACTIVITY_WRITE_SECONDS: Final = 10.0
# Sessions a sweep reads at a time.
SWEEP_BATCH: Final = 100
# A chunk's body: straight from the request's socket when it can be (splice), else its pieces.
ChunkBody = SocketBody | AsyncIterator[bytes]
PARTIAL_PREFIX: Final = ".ucim-upload-"
PARTIAL_SUFFIX: Final = ".part"
# secrets.token_urlsafe(32) is 43 characters; anything else cannot be one of ours.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
_SESSION_FILE = re.compile(r"^[0-9a-f]{64}\.json$")
_TEMP_PREFIX: Final = ".tmp-"
# A temporary session file older than this was left by a crash mid-write.
_STALE_TEMP_SECONDS: Final = 300
SHOWN_ID_CHARS: Final = 200

_OPEN_PARTIAL = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_NONBLOCK: a FIFO swapped in cannot make the open hang; it is refused by the fstat after.
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

UPLOAD_BYTES = Counter("ucim_instance_upload_bytes", "Bytes of upload chunks written to disk by this instance.")
DOWNLOAD_BYTES = Counter("ucim_instance_download_bytes", "Bytes of files this instance sent to downloads.")
TRANSFER_EVENTS = Counter(
    "ucim_instance_transfers",
    "Transfer sessions by kind (upload, download) and outcome "
    "(created, refused, completed, conflict, served, aborted, expired).",
    ["kind", "outcome"],
)

Kind = Literal["upload", "download"]


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


@dataclass(frozen=True)
class TransferLimits:
    """How long sessions live and how much an upload may hold."""

    # An upload lives this long after its last chunk (CHUNKED: at least 30 min) ...
    upload_idle_seconds: float = 30 * 60
    # ... but never longer than this after it was created (CHUNKED: at most 48 h).
    upload_max_age_seconds: float = 48 * 3600
    download_lifetime_seconds: float = 15 * 60
    max_upload_bytes: int = 1 << 40
    # A chunk's body that sends nothing for this long is cut off (the data so far is kept).
    body_idle_seconds: float = 60.0
    sweep_interval_seconds: float = 5 * 60


# --- sessions -----------------------------------------------------------------


class Location(BaseModel):
    """Where a transfer's file is: its drive, the local root the drive stood for, the path below it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drive: str
    root: str
    parts: tuple[str, ...]

    @property
    def file_id(self) -> FileId:
        return FileId(self.drive, self.parts)

    def drives(self) -> Drives:
        # The root is the one resolved when the session began; every component below it is walked again.
        return Drives({self.drive: Path(self.root)})

    @property
    def folder(self) -> FileId:
        return FileId(self.drive, self.parts[:-1])


class UploadSession(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["upload"] = "upload"
    location: Location
    conflict_policy: WriteConflictPolicy
    created_at: float
    last_activity: float
    total_size: int | None = None  # unknown until the first chunk names it
    partial_name: str
    final_id: str | None = None  # set when finished: the token takes no more chunks

    @property
    def finished(self) -> bool:
        return self.final_id is not None


class DownloadSession(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["download"] = "download"
    location: Location
    created_at: float


Session = Annotated[UploadSession | DownloadSession, Field(discriminator="kind")]
_SESSION: TypeAdapter[UploadSession | DownloadSession] = TypeAdapter(Session)
S = TypeVar("S", UploadSession, DownloadSession)


def digest(token: str) -> str:
    """The key a session is stored under: the SHA-256 of its token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def expires_at(session: UploadSession | DownloadSession, limits: TransferLimits) -> float:
    if isinstance(session, DownloadSession):
        return session.created_at + limits.download_lifetime_seconds
    return min(session.last_activity + limits.upload_idle_seconds, session.created_at + limits.upload_max_age_seconds)


class SessionStore:
    """Sessions by key: one JSON file each in ``folder`` (0700), cached in memory but for finished uploads.

    Safe to use from the event loop and from worker threads.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, UploadSession | DownloadSession] = {}
        self._written_activity: dict[str, float] = {}  # the activity time on disk, of the sessions written here
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _ensure_folder(self) -> None:
        """Make the folder and any missing parent 0700 (the ones that exist are left as they are)."""
        missing = []
        folder = self.folder
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)
            folder.chmod(0o700)  # mkdir's mode went through the umask

    def save(self, key: str, session: UploadSession | DownloadSession) -> None:
        """Write the session atomically (a temporary file renamed over the old one).

        Not fsync-ed: a crash loses at most the newest activity time, which only shortens a session.
        """
        self._ensure_folder()
        fd, temp = _mkstemp(self.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(session.model_dump_json().encode())
            Path(temp).replace(self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                Path(temp).unlink()
            raise
        with self._lock:
            if not _kept_in_memory(session):
                self._cache.pop(key, None)
                self._written_activity.pop(key, None)
                return
            self._cache[key] = session
            if isinstance(session, UploadSession):
                self._written_activity[key] = session.last_activity

    def must_write(self, key: str, session: UploadSession) -> bool:
        """Whether ``session`` must go to disk, or only its activity time changed since it was kept.

        The activity time alone is written when the one on disk is ACTIVITY_WRITE_SECONDS old: a
        1 GiB upload then writes its session a few times instead of once per chunk, and a crash
        loses at most that much of a 30-minute lifetime.
        """
        with self._lock:
            kept = self._cache.get(key)
            written = self._written_activity.get(key, 0.0)
        same = kept is not None and kept.model_copy(update={"last_activity": session.last_activity}) == session
        return not same or session.last_activity - written >= ACTIVITY_WRITE_SECONDS

    def keep(self, key: str, session: UploadSession | DownloadSession) -> None:
        """Remember ``session`` without writing it (``must_write`` said it need not be)."""
        with self._lock:
            self._cache[key] = session

    def get(self, key: str) -> UploadSession | DownloadSession | None:
        """The cached session, or the one on disk (made by an earlier run of the instance)."""
        with self._lock:
            cached = self._cache.get(key)
        return cached if cached is not None else self._load(key)

    def cached(self, key: str) -> UploadSession | DownloadSession | None:
        with self._lock:
            return self._cache.get(key)

    def _load(self, key: str) -> UploadSession | DownloadSession | None:
        session = self._read(key)
        if session is None or not _kept_in_memory(session):
            return session
        with self._lock:
            return self._cache.setdefault(key, session)

    def _read(self, key: str) -> UploadSession | DownloadSession | None:
        try:
            raw = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return _SESSION.validate_json(raw)
        except ValidationError:
            log.warning("an unreadable transfer session was removed", extra={"file": self._path(key).name})
            self._unlink(key)
            return None

    def remove(self, key: str) -> bool:
        """Forget the session; True when this call removed its file (so exactly one caller wins)."""
        with self._lock:
            self._cache.pop(key, None)
            self._written_activity.pop(key, None)
        return self._unlink(key)

    def _unlink(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def on_disk(self) -> Generator[tuple[str, UploadSession | DownloadSession], None, None]:
        """Every session on disk, read one by one as the caller goes, without caching it (the sweep's view).

        Unreadable sessions and stale temporary files are removed on the way.
        """
        try:
            entries = os.scandir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                if _SESSION_FILE.match(entry.name):
                    key = entry.name.removesuffix(".json")
                    session = self.cached(key) or self._read(key)
                    if session is not None:
                        yield key, session
                elif entry.name.startswith(_TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_TEMP_SECONDS:
                            Path(entry.path).unlink()


def _kept_in_memory(session: UploadSession | DownloadSession) -> bool:
    """All but finished uploads: those are asked for rarely, and an instance that takes thousands of
    small files should not hold them all (the session on disk answers, until it expires)."""
    return not (isinstance(session, UploadSession) and session.finished)


def _mkstemp(folder: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX)


# --- files ----------------------------------------------------------------------


def _check_regular(mode: int, shown: str) -> None:
    if stat.S_ISLNK(mode):
        raise TransferRefusedError(f"{shown} is a symbolic link; links are not followed")
    if stat.S_ISDIR(mode):
        raise TransferRefusedError(f"{shown} is a folder; download the files in it one by one")
    if not stat.S_ISREG(mode):
        raise TransferRefusedError(f"{shown} is not a regular file")


def _open_regular(folder_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
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


def _folder_fd(location: Location) -> int:
    """An fd (O_PATH) of the folder a transfer's file is in, every component walked without links."""
    with location.drives().open_folder(location.folder) as fd:
        return os.dup(fd)


def _write_pieces(fd: int, pieces: Sequence[bytes], position: int, shown: str) -> None:
    """Write ``pieces`` one after the other at ``position``; a refusal (a full disk) as the user is shown it."""
    try:
        pwrite_all(fd, pieces, position)
    except OSError as error:
        raise refusal(error, shown) from error


def _sync_folder(folder_fd: int) -> None:
    """Make a rename in the folder durable; best effort (the folder may not be readable)."""
    with contextlib.suppress(OSError):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@dataclass
class _Received:
    """How much of a chunk's body arrived and how much of that is on disk."""

    arrived: int = 0
    written: int = 0


class _DiskWriter:
    """Writes a chunk's pieces at their place in the partial file, in batches of about WRITE_PIECE_BYTES.

    A batch is written in a worker thread while the next one arrives, so the disk and the network
    work at the same time; at most two batches are held. ``received.written`` counts what is on disk.
    """

    def __init__(self, fd: int, start: int, received: _Received, shown: str) -> None:
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
        self._write_back = BackgroundWriteBack()
        # A finished upload gets the mode a newly created file of the user's would have.
        self._file_mode = 0o666 & ~_umask()

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
        planned = _each(
            items, "upload", lambda item: self._plan_upload(self._drives.resolve(item.resolved_collection), item, now)
        )
        return self._record("upload", planned)

    def create_downloads(self, items: Sequence[FilesProviderCreateDownloadRequestItem]) -> list[str]:
        now = self._clock()
        planned = _each(
            items,
            "download",
            lambda item: self._plan_download(self._drives.resolve(item.resolved_collection), item, now),
        )
        return self._record("download", planned)

    def _record(self, kind: Kind, planned: Sequence[tuple[str, UploadSession | DownloadSession]]) -> list[str]:
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

    @staticmethod
    def _target(drives: Drives, id_: str, kind: Kind) -> tuple[FileId, Location]:
        file_id = drives.parse(id_)
        if not file_id.parts:
            raise TransferRefusedError(f"{file_id.ucloud_id} is a whole drive: the {kind} needs a file in it")
        location = Location(drive=file_id.drive, root=str(drives.roots[file_id.drive]), parts=file_id.parts)
        return file_id, location

    def _plan_upload(
        self, drives: Drives, item: FilesProviderCreateUploadRequestItem, now: float
    ) -> tuple[str, UploadSession]:
        if "CHUNKED" not in item.supported_protocols:
            offered = ", ".join(item.supported_protocols) or "none"
            raise TransferRefusedError(
                f"this provider uploads with the CHUNKED protocol only; the request offers {offered}"
            )
        if item.type == "FOLDER":
            # The web client never uploads a folder over CHUNKED: it sends each file as its own upload.
            raise TransferRefusedError(
                "folder uploads are not supported over CHUNKED; create the folder and upload its files"
            )
        file_id, location = self._target(drives, item.id, "upload")
        folder = location.folder.ucloud_id
        with drives.open_parent(file_id) as (fd, name):
            if not os.access(".", os.W_OK | os.X_OK, dir_fd=fd):
                raise TransferRefusedError(f"permission denied: cannot write in {folder}", 403)
            try:
                existing: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            except OSError as error:
                raise refusal(error, file_id.ucloud_id) from error
        if existing is not None and item.conflict_policy == "REJECT":
            raise TransferRefusedError(f"{file_id.ucloud_id} already exists", 409)
        if existing is not None and item.conflict_policy == "REPLACE" and stat.S_ISDIR(existing.st_mode):
            raise TransferRefusedError(f"{file_id.ucloud_id} is a folder; a file cannot replace it", 409)
        token = secrets.token_urlsafe(32)
        session = UploadSession(
            location=location,
            conflict_policy=item.conflict_policy,
            created_at=now,
            last_activity=now,
            partial_name=f"{PARTIAL_PREFIX}{digest(token)[:16]}{PARTIAL_SUFFIX}",
        )
        return token, session

    def _plan_download(
        self, drives: Drives, item: FilesProviderCreateDownloadRequestItem, now: float
    ) -> tuple[str, DownloadSession]:
        file_id, location = self._target(drives, item.id, "download")
        with drives.open_parent(file_id) as (folder_fd, name):
            fd, _ = _open_regular(folder_fd, name, file_id.ucloud_id)
            os.close(fd)
        return secrets.token_urlsafe(32), DownloadSession(location=location, created_at=now)

    # --- finding sessions ---

    async def _find(self, token: str | None, kind: type[S]) -> tuple[str, S]:
        what = "upload" if kind is UploadSession else "download"
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
        stored = await asyncio.to_thread(self._stored_size, session)
        return UploadProgress(offset=stored, total_size=session.total_size)

    @staticmethod
    def _stored_size(session: UploadSession) -> int:
        folder_fd = _folder_fd(session.location)
        try:
            st = os.stat(session.partial_name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        finally:
            os.close(folder_fd)
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

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
        folder_fd, fd, stored = await asyncio.to_thread(self._open_partial, session)
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
            received, arrived_whole = _Received(), False
            try:
                shown = f"the upload to {session.location.file_id.ucloud_id}"
                await self._receive(fd, start=start, length=length, body=body, received=received, shown=shown)
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

    async def _receive(
        self, fd: int, *, start: int, length: int, body: ChunkBody, received: _Received, shown: str
    ) -> None:
        """Write the body at ``start`` as it arrives: by splice from the socket, or piece by piece."""
        if isinstance(body, SocketBody):
            try:
                received.arrived = received.written = await body.to_file(fd, start, self.limits.body_idle_seconds)
            except BodyIdleError as stopped:
                received.arrived = received.written = stopped.moved
                raise self._idle(start, received) from None
            except BodyStoppedError as stopped:
                received.arrived = received.written = stopped.moved
                raise self._cut_off(start, length, received) from None
            except OSError as error:  # the disk's refusal (full, quota, ...)
                raise refusal(error, shown) from error
        else:
            await self._receive_pieces(fd, start=start, length=length, body=body, received=received, shown=shown)
        if received.written < length:
            raise TransferRefusedError(
                f"the body ended after {received.written} of {length} bytes; they are kept: "
                f"continue at offset {start + received.written}",
                expected_offset=start + received.written,
            )

    def _idle(self, start: int, received: _Received) -> TransferRefusedError:
        return TransferRefusedError(
            f"no data arrived for {self.limits.body_idle_seconds:g} s; the {received.written} bytes of "
            f"the chunk that did are kept: continue at offset {start + received.written}",
            408,
            expected_offset=start + received.written,
        )

    @staticmethod
    def _cut_off(start: int, length: int, received: _Received) -> TransferRefusedError:
        return TransferRefusedError(
            f"the chunk was cut off after {received.written} of {length} bytes; they are kept: "
            f"continue at offset {start + received.written}",
            expected_offset=start + received.written,
        )

    async def _receive_pieces(
        self, fd: int, *, start: int, length: int, body: AsyncIterator[bytes], received: _Received, shown: str
    ) -> None:
        """Write the pieces of ``body`` at ``start`` as they arrive (``_DiskWriter``)."""
        writer = _DiskWriter(fd, start, received, shown)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.limits.body_idle_seconds):
                        piece = await anext(body, None)
                except TimeoutError:
                    await writer.flush()
                    raise self._idle(start, received) from None
                except BodyInterruptedError:
                    await writer.flush()
                    raise self._cut_off(start, length, received) from None
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

    def _open_partial(self, session: UploadSession) -> tuple[int, int, int]:
        """(folder fd, partial file fd, its size); the partial file is created if it is not there."""
        location = session.location
        shown = f"the partial file of the upload to {location.file_id.ucloud_id}"
        folder_fd = _folder_fd(location)
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
        _sync_folder(folder_fd)
        final_id = FileId(location.drive, (*location.parts[:-1], name)).ucloud_id
        self.store.save(key, session.model_copy(update={"final_id": final_id, "last_activity": self._clock()}))
        return final_id

    # --- downloads ---

    async def open_download(self, token: str | None) -> OpenedDownload:
        """Open the token's file (the token stays valid until ``consume``)."""
        key, session = await self._find(token, DownloadSession)
        fd, st = await asyncio.to_thread(self._open_download, session.location)
        return OpenedDownload(key=key, session=session, fd=fd, name=session.location.parts[-1], size=st.st_size)

    @staticmethod
    def _open_download(location: Location) -> tuple[int, os.stat_result]:
        folder_fd = _folder_fd(location)
        try:
            return _open_regular(folder_fd, location.parts[-1], location.file_id.ucloud_id)
        finally:
            os.close(folder_fd)

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

    def _discard(self, sessions: list[tuple[str, UploadSession | DownloadSession]]) -> None:
        for key, session in sessions:
            if isinstance(session, UploadSession) and session.final_id is None:
                self._remove_partial(session)
            if self.store.remove(key) and not (isinstance(session, UploadSession) and session.final_id):
                TRANSFER_EVENTS.labels(session.kind, "expired").inc()

    @staticmethod
    def _remove_partial(session: UploadSession) -> None:
        try:
            folder_fd = _folder_fd(session.location)
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


T = TypeVar("T")


class _Named(Protocol):
    id: str


Item = TypeVar("Item", bound=_Named)


def _each(items: Sequence[Item], kind: Kind, plan: Callable[[Item], T]) -> list[T]:
    """``plan`` of every item, in order; a refusal names its item, as the other bulk file calls do."""
    planned = []
    for number, item in enumerate(items, start=1):
        try:
            planned.append(plan(item))
        except PathRefusedError as error:
            TRANSFER_EVENTS.labels(kind, "refused").inc()
            shown = item.id[:SHOWN_ID_CHARS]
            raise TransferRefusedError(f"item {number} ({shown}): {error}", error.status) from error
    return planned

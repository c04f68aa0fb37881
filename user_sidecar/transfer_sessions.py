"""The on-disk store of transfer sessions, and what a session is.

A transfer starts with a *session*, made by the instance when Core asks for one and named
by a token (``secrets.token_urlsafe(32)``). Only the token's SHA-256 is kept: one JSON
file per session in a 0700 folder of the user's home, written atomically, plus an
in-memory cache. The files let a session outlive the instance (instances stop when
idle); keeping them in the user's home means a token only ever works on the instance
of the user it was made for. How long a session lives is ``TransferLimits``; the service
(``transfers.py``) sweeps the expired ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ucim.common.protocol import WriteConflictPolicy
from ucim.user_sidecar.paths import Drives, FileId

log = logging.getLogger(__name__)

# A session whose only change is its activity time is written at most this often.
ACTIVITY_WRITE_SECONDS: Final = 10.0
_SESSION_FILE = re.compile(r"^[0-9a-f]{64}\.json$")
_TEMP_PREFIX: Final = ".tmp-"
# A temporary session file older than this was left by a crash mid-write.
_STALE_TEMP_SECONDS: Final = 300


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


class _Upload(BaseModel):
    """What every upload's session holds: where, under which policy, since when, last active when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    location: Location
    conflict_policy: WriteConflictPolicy
    created_at: float
    last_activity: float


class UploadSession(_Upload):
    """A file's upload (CHUNKED)."""

    kind: Literal["upload"] = "upload"
    total_size: int | None = None  # unknown until the first chunk names it
    partial_name: str
    final_id: str | None = None  # set when finished: the token takes no more chunks

    @property
    def finished(self) -> bool:
        return self.final_id is not None


class FolderUploadSession(_Upload):
    """A folder upload (WEBSOCKET_V2): ``location`` is the folder as asked for."""

    kind: Literal["folder"] = "folder"
    # The name the folder got at the first connection (RENAME may pick another); later ones write there too.
    folder_name: str | None = None


class DownloadSession(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["download"] = "download"
    location: Location
    created_at: float


AnySession = UploadSession | FolderUploadSession | DownloadSession
Session = Annotated[AnySession, Field(discriminator="kind")]
_SESSION: TypeAdapter[AnySession] = TypeAdapter(Session)


def digest(token: str) -> str:
    """The key a session is stored under: the SHA-256 of its token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def expires_at(session: AnySession, limits: TransferLimits) -> float:
    if isinstance(session, DownloadSession):
        return session.created_at + limits.download_lifetime_seconds
    return min(session.last_activity + limits.upload_idle_seconds, session.created_at + limits.upload_max_age_seconds)


class SessionStore:
    """Sessions by key: one JSON file each in ``folder`` (0700), cached in memory but for finished uploads.

    Safe to use from the event loop and from worker threads.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, AnySession] = {}
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

    def save(self, key: str, session: AnySession) -> None:
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

    def keep(self, key: str, session: AnySession) -> None:
        """Remember ``session`` without writing it (``must_write`` said it need not be)."""
        with self._lock:
            self._cache[key] = session

    def get(self, key: str) -> AnySession | None:
        """The cached session, or the one on disk (made by an earlier run of the instance)."""
        with self._lock:
            cached = self._cache.get(key)
        return cached if cached is not None else self._load(key)

    def cached(self, key: str) -> AnySession | None:
        with self._lock:
            return self._cache.get(key)

    def _load(self, key: str) -> AnySession | None:
        session = self._read(key)
        if session is None or not _kept_in_memory(session):
            return session
        with self._lock:
            return self._cache.setdefault(key, session)

    def _read(self, key: str) -> AnySession | None:
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

    def on_disk(self) -> Generator[tuple[str, AnySession], None, None]:
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


def _kept_in_memory(session: AnySession) -> bool:
    """All but finished uploads: those are asked for rarely, and an instance that takes thousands of
    small files should not hold them all (the session on disk answers, until it expires)."""
    return not (isinstance(session, UploadSession) and session.finished)


def _mkstemp(folder: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX)

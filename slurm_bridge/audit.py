"""The audit trail, bridge side: the one writer of the root-owned audit file.

Every action a user instance takes as its user (``ucim.user_sidecar.audit``) arrives here as one
record over the audit socket (``AuditSettings.socket_path``, ``SOCK_SEQPACKET``). The instance
cannot forge who it is: the bridge takes the sender's pid and uid from the kernel (``SO_PEERCRED``,
fixed when it connected) and accepts a connection only from the process of one of its running
instances whose uid is that instance's user; every record is then written with that instance's
UCloud user, local user and uid, whatever the record says. Anyone else (a login shell of the same
user, another process) is refused, counted and logged.

The file is opened ``O_APPEND`` and created ``0600`` root (``file_mode``, and ``group`` for a
``root:adm 0640`` site), one JSON object a line. It is rotated by size (``max_bytes``, keeping
``backup_count`` files) with the standard library's ``RotatingFileHandler``; ``max_bytes: 0`` leaves
rotation to logrotate (``WatchedFileHandler`` reopens the file it moved away). Writes happen in the
bridge's event loop, one short line each; a write that fails is logged, never retried into a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import io
import json
import logging
import logging.handlers
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ucim.common.request_ids import PATTERN as REQUEST_ID_PATTERN

log = logging.getLogger(__name__)

RECORDS = Counter(
    "ucim_audit_records",
    "Audit records, by outcome: written, malformed (written as audit.malformed), failed (the file could not be "
    "written), lost (dropped by an instance whose socket was full or away, as its next record reports).",
    ["outcome"],
)
REFUSED = Counter(
    "ucim_audit_refused_connections",
    "Connections to the audit socket refused: the sender is not the process of a running instance, or not its user.",
)

# A record is one packet of at most this many bytes (the instance cuts its targets to fit).
MAX_RECORD_BYTES: Final = 32_768
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
# What the bridge writes itself; a record's own fields of these names are never taken.
TRUSTED_FIELDS: Final = frozenset({"time", "ucloud_user", "local_user", "uid", "instance", "pid"})
_MAX_EXTRA_FIELDS: Final = 10


class AuditSettings(BaseModel):
    """Where and how the audit trail is kept (``UCIM_BRIDGE_AUDIT__*``)."""

    enabled: bool = True
    # The file: root-owned, append-only, one JSON line per action.
    path: Path = Path("/var/log/ucim/audit.log")
    # The socket the instances send their records to. Its folder must be searchable by them (o+x), so not in
    # /run/ucim (0700, the instances' own sockets).
    socket_path: Path = Path("/run/ucim-audit.sock")
    # Rotate when the file reaches this size, keeping backup_count older files (audit.log.1, ...);
    # 0: the bridge never rotates, logrotate does (the file is reopened when it was moved away).
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    backup_count: int = Field(default=10, ge=1)
    # The file's mode, and its group (e.g. "adm" with 0o640); None keeps root's group.
    file_mode: int = 0o600
    group: str | None = None

    @field_validator("file_mode")
    @classmethod
    def _private(cls, mode: int) -> int:
        if mode & ~0o640 or not mode & 0o200:
            raise ValueError(f"the audit file's mode must be within 0640 and writable by root: {mode:#o}")
        return mode


@dataclass(frozen=True)
class Identity:
    """Who an instance acts for: what the bridge knows, never what a record says."""

    instance: str  # namespace/name of the UserInstance
    ucloud_user: str
    local_user: str
    uid: int
    pid: int


Scalar = str | int | float | bool | None


class InstanceRecord(BaseModel):
    """One record as an instance sends it (``ucim.user_sidecar.audit.record``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    action: str = Field(pattern=r"^[A-Za-z0-9_.:{}/ -]{1,200}$")
    targets: list[str] = Field(default_factory=list, max_length=100)
    targets_omitted: int | None = Field(default=None, ge=0)
    # Where the file ids among the targets are on this host (the instance's drive roots).
    paths: list[str] | None = Field(default=None, max_length=100)
    result: Literal["ok", "error"]
    status: int = Field(ge=100, le=599)
    why: str | None = Field(default=None, max_length=500)
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    phase: Literal["open", "end"] | None = None
    seconds: float | None = Field(default=None, ge=0)
    # Records this instance dropped (its socket full or away) since the last one that arrived: the gap, in the trail.
    dropped_before: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _few_plain_extras(self) -> InstanceRecord:
        """A handler's own fields (``note(bytes=...)``): a few plain values, none named like a trusted field."""
        extra = self.model_extra or {}
        if len(extra) > _MAX_EXTRA_FIELDS:
            raise ValueError(f"at most {_MAX_EXTRA_FIELDS} extra fields")
        for key, value in extra.items():
            if key in TRUSTED_FIELDS or not key.isidentifier() or len(key) > 40:
                raise ValueError(f"field {key[:40]!r} is not allowed")
            if not isinstance(value, Scalar) or (isinstance(value, str) and len(value) > 500):
                raise ValueError(f"field {key!r} must be a short plain value")
        return self


def audit_line(who: Identity, entry: dict[str, Any], now: datetime | None = None) -> str:
    """The JSON line: when, who (from the bridge) first, then what the instance said it did."""
    trusted = {
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "ucloud_user": who.ucloud_user,
        "local_user": who.local_user,
        "uid": who.uid,
        "instance": who.instance,
        "pid": who.pid,
    }
    said = {key: value for key, value in entry.items() if key not in TRUSTED_FIELDS and value is not None}
    return json.dumps({**trusted, **said}, separators=(",", ":"), ensure_ascii=False)


# --- the file ------------------------------------------------------------------------------------


class _RootFile:
    """Opens the audit file O_APPEND with the configured mode and group, whoever created it first."""

    baseFilename: str  # noqa: N815 (logging's name)
    encoding: str | None
    errors: str | None
    file_mode: int = 0o600
    gid: int = -1

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.file_mode)
        try:
            os.fchown(fd, os.geteuid(), self.gid)  # an existing file too: the mode and owner are the setting's
            os.fchmod(fd, self.file_mode)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: PTH123 (an fd, not a path)
        except BaseException:
            os.close(fd)
            raise


class _RotatingRootFile(_RootFile, logging.handlers.RotatingFileHandler):
    pass


class _WatchedRootFile(_RootFile, logging.handlers.WatchedFileHandler):
    pass


class AuditLog:
    """The audit file; :meth:`write` appends one line (a bridge-side action calls it too)."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        # A logger of its own, not propagated: audit lines never reach the bridge's own log, nor its lines this file.
        self._logger = logging.Logger("ucim.audit.file")
        self._logger.addHandler(handler)
        self._logger.propagate = False

    @classmethod
    def open(cls, settings: AuditSettings) -> AuditLog:
        settings.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        handler: _RotatingRootFile | _WatchedRootFile
        if settings.max_bytes > 0:
            handler = _RotatingRootFile(
                settings.path,
                maxBytes=settings.max_bytes,
                backupCount=settings.backup_count,
                encoding="utf-8",
                delay=True,
            )
        else:
            handler = _WatchedRootFile(settings.path, encoding="utf-8", delay=True)
        handler.file_mode = settings.file_mode
        handler.gid = grp.getgrnam(settings.group).gr_gid if settings.group else -1
        handler.setFormatter(logging.Formatter("%(message)s"))
        # Fail at start, not at the first action: the file must be writable.
        handler.stream = handler._open()
        return cls(handler)

    def write(self, who: Identity, entry: dict[str, Any]) -> None:
        """Append one record of an action ``who`` took; a failure is logged, the action is not undone."""
        try:
            self.handler.handle(logging.makeLogRecord({"msg": audit_line(who, entry), "levelno": logging.INFO}))
        except Exception:
            RECORDS.labels("failed").inc()
            log.exception("could not write the audit record", extra={"instance": who.instance})
            return
        RECORDS.labels("written").inc()

    def close(self) -> None:
        self.handler.close()


# --- the socket ----------------------------------------------------------------------------------


def peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """The connecting process's pid, uid and gid, as the kernel saw them at connect()."""
    pid, uid, gid = _PEERCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid, gid


def check_peer(pid: int, uid: int, identify: Callable[[int], Identity | None]) -> Identity | None:
    """The instance the process ``pid`` is, if it runs as that instance's uid; None refuses it."""
    who = identify(pid)
    return who if who is not None and who.uid == uid else None


def bind_socket(path: Path) -> socket.socket:
    """The listening socket: any local process may connect (mode 0666); only instances get further."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not path.parent.stat().st_mode & stat.S_IXOTH:
        raise ValueError(f"the audit socket's folder {path.parent} must be searchable by the instances' users (o+x)")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ValueError(f"{path} exists and is not a socket")
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener


class AuditListener:
    """Accepts the instances' connections and writes what they send."""

    def __init__(self, listener: socket.socket, audit: AuditLog, identify: Callable[[int], Identity | None]) -> None:
        self.listener = listener
        self.audit = audit
        self.identify = identify
        self._readers: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Serve until cancelled; then the socket and the file are closed."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                connection, _ = await loop.sock_accept(self.listener)
                task = loop.create_task(self._serve(connection), name="audit-connection")
                self._readers.add(task)
                task.add_done_callback(self._readers.discard)
        finally:
            for task in list(self._readers):
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            self.listener.close()
            self.audit.close()

    async def _serve(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with connection:
            pid, uid, _ = peer_credentials(connection)
            who = check_peer(pid, uid, self.identify)
            if who is None:
                REFUSED.inc()
                log.warning(
                    "audit connection refused: not a running instance's process", extra={"pid": pid, "uid": uid}
                )
                return
            try:
                while data := await loop.sock_recv(connection, MAX_RECORD_BYTES + 1):
                    if check_peer(pid, uid, self.identify) != who:
                        return  # the instance exited (or was replaced): its pid may be someone else's soon
                    self.receive(who, data)
            except ConnectionError:
                return  # the instance went away mid-packet: what arrived before is written

    def receive(self, who: Identity, data: bytes) -> None:
        """One packet of instance ``who``: its record, or an ``audit.malformed`` line that says why not."""
        why = f"the record is larger than {MAX_RECORD_BYTES} bytes"
        if len(data) <= MAX_RECORD_BYTES:
            try:
                entry = InstanceRecord.model_validate_json(data).model_dump(mode="json")
            except ValidationError as error:
                why = " ".join(str(error).split())[:500]
            else:
                self.audit.write(who, entry)
                RECORDS.labels("lost").inc(entry.get("dropped_before") or 0)
                return
        RECORDS.labels("malformed").inc()
        self.audit.write(who, {"action": "audit.malformed", "result": "error", "why": why, "bytes": len(data)})


def audit_trail(settings: AuditSettings, identify: Callable[[int], Identity | None]) -> AuditListener:
    """Open the file and the socket now (a failure stops the bridge at start); ``run()`` serves them.

    The listener's ``audit`` is the file: an action the bridge takes for a user writes its line there.
    """
    audit = AuditLog.open(settings)
    try:
        listener = bind_socket(settings.socket_path)
    except BaseException:
        audit.close()
        raise
    log.info("audit trail", extra={"path": str(settings.path), "socket": str(settings.socket_path)})
    return AuditListener(listener, audit, identify)

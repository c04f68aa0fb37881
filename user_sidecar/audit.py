"""The audit trail, instance side: one record per action taken as the user, sent to the bridge.

The instance runs as its user and cannot (and must not) write the root-owned audit file, so it
sends each record to the bridge's audit socket (``SidecarSettings.audit_socket``, a
``SOCK_SEQPACKET`` socket; ``ucim.slurm_bridge.audit``), which takes the sender's identity from
the kernel (``SO_PEERCRED``), never from the record, and appends the line. Sending never blocks
and never fails an action: a full or missing socket drops the record and counts it
(``ucim_instance_audit_records_total{outcome}``). The connection is close-on-exec: nothing the instance
runs for its user (a terminal's shell, sbatch) holds it, so no user program can speak with the instance's voice.

Where records come from:

* :func:`audit_actions`, a middleware, records every request the instance serves (except probes,
  metrics and CORS preflights) once it is answered: the action is named by :data:`ACTIONS` (a route
  that is not there is recorded under ``<METHOD> <path>``, so a new route is never silently left
  out), its targets are read from the request's JSON body (job ids, file ids, drives), and its
  result from the answer (status, and ``why`` of an error). Sessions (shell and web sockets, log
  follows) are recorded when they open and again when they end, with how long they lasted.
* :func:`note` adds what only a handler knows (the target of a download token) to its request's record.
* :func:`record` writes a record outside a request (e.g. one per file of a streamed folder upload).

Adding an action: a route gets a line in :data:`ACTIONS`; anything else calls ``record(app, ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from ucim.common import request_ids
from ucim.common.drives import InvalidLocatorError, Locator
from ucim.common.instance_api import (
    CANCEL_PATH,
    DOWNLOAD_FILE_PATH,
    DYNAMIC_PARAMETERS_PATH,
    FILES_BROWSE_PATH,
    FILES_COPY_PATH,
    FILES_DELETE_PATH,
    FILES_DOWNLOAD_PATH,
    FILES_EMPTY_TRASH_PATH,
    FILES_FOLDER_PATH,
    FILES_MOVE_PATH,
    FILES_RETRIEVE_PATH,
    FILES_TRASH_PATH,
    FILES_UPLOAD_PATH,
    FOLDER_UPLOAD_PATH,
    HEALTH_PATH,
    JOBS_FOLLOW_PATH,
    SUBMIT_PATH,
    UPLOAD_CHUNK_PATH,
)
from ucim.common.shell_protocol import SHELL_SESSIONS_PATH, SHELL_WEBSOCKET_PATH
from ucim.common.web_sessions import WEB_CLAIMS_PATH, WEB_CONNECT_PATH, WEB_GRANTS_PATH
from ucim.user_sidecar.keys import DRIVES
from ucim.user_sidecar.paths import DriveResolver, PathRefusedError, drive_root, parse_id

log = logging.getLogger(__name__)

RECORDS = Counter(
    "ucim_instance_audit_records",
    "Audit records by outcome: sent to the bridge, or dropped (full: the socket's buffer; unavailable: no bridge "
    "socket; too_large: over MAX_RECORD_BYTES even without its targets).",
    ["outcome"],
)

# One packet; the bridge reads at most this much (a bulk call's many targets are cut to fit, and say so).
MAX_RECORD_BYTES: Final = 32_768
MAX_TARGETS: Final = 100
MAX_WHY_CHARS: Final = 500
# A missing socket is looked for again after this long (not at every action).
RECONNECT_SECONDS: Final = 5.0
# The status of an action whose caller hung up before the answer (nginx's "client closed request").
CALLER_LEFT: Final = 499
# Never audited: probes, metrics.
EXEMPT_PATHS: Final = frozenset({HEALTH_PATH, "/readyz", "/metrics"})

Targets = Callable[[Any], list[str]]


class AuditSender:
    """Sends records to the bridge's audit socket without ever blocking; ``path`` None sends nothing."""

    def __init__(
        self,
        path: Path | None,
        *,
        reconnect_seconds: float = RECONNECT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._reconnect_seconds = reconnect_seconds
        self._clock = clock
        self._socket: socket.socket | None = None
        self._retry_at = 0.0
        # Dropped since the last record sent: the next one says so (``dropped_before``), so the trail shows the gap.
        self.dropped = 0

    def send(self, entry: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        data = encode({**entry, "dropped_before": self.dropped} if self.dropped else entry)
        if data is None:
            self._drop("too_large")
            return
        connection = self._connected()
        if connection is None:
            self._drop("unavailable")
            return
        try:
            connection.send(data, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except BlockingIOError:
            self._drop("full")
        except OSError as error:
            # The bridge went away (restarted) or refused us: look for it again later.
            log.warning("audit socket lost", extra={"error": str(error)})
            self.close()
            self._retry_at = self._clock() + self._reconnect_seconds
            self._drop("unavailable")
        else:
            self.dropped = 0
            RECORDS.labels("sent").inc()

    def _drop(self, why: str) -> None:
        self.dropped += 1
        RECORDS.labels(why).inc()

    def _connected(self) -> socket.socket | None:
        if self._socket is not None:
            return self._socket
        now = self._clock()
        if now < self._retry_at or self.path is None:
            return None
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            connection.connect(str(self.path))  # a unix socket connects at once, or fails at once
        except OSError as error:
            connection.close()
            self._retry_at = now + self._reconnect_seconds
            log.warning("no audit socket", extra={"path": str(self.path), "error": str(error)})
            return None
        self._socket = connection
        return connection

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


def encode(entry: Mapping[str, Any]) -> bytes | None:
    """One record as compact JSON, its targets (and their paths) cut to fit one packet; ``targets_omitted`` counts."""
    entry = dict(entry)
    targets = list(entry.get("targets") or [])
    if len(targets) > MAX_TARGETS:
        entry["targets"], entry["targets_omitted"] = targets[:MAX_TARGETS], len(targets) - MAX_TARGETS
    if "paths" in entry:
        entry["paths"] = entry["paths"][:MAX_TARGETS]
    data = json.dumps(entry, separators=(",", ":"), default=str).encode()
    while len(data) > MAX_RECORD_BYTES and (entry.get("targets") or entry.get("paths")):
        kept = entry["targets"][: len(entry["targets"]) // 2]
        entry["targets_omitted"] = entry.get("targets_omitted", 0) + len(entry["targets"]) - len(kept)
        entry["targets"] = kept
        if "paths" in entry:
            entry["paths"] = entry["paths"][: len(entry["paths"]) // 2]
        data = json.dumps(entry, separators=(",", ":"), default=str).encode()
    return data if len(data) <= MAX_RECORD_BYTES else None


# --- what each route is --------------------------------------------------------------------------


def _get(body: Any, *keys: str) -> Any:
    for key in keys:
        body = body.get(key) if isinstance(body, dict) else None
    return body


def _items(*keys: str, drives: tuple[str, ...] = ("resolvedCollection",)) -> Targets:
    """The ``keys`` of each item of a bulk request, then the drives (locators) they are on."""

    def targets(body: Any) -> list[str]:
        items = _get(body, "items")
        found: list[str] = []
        locators: list[str] = []
        for item in items if isinstance(items, list) else []:
            found += [str(item[key]) for key in keys if isinstance(item, dict) and item.get(key) is not None]
            for drive in drives:
                locator = _get(item, drive, "providerGeneratedId")
                if locator is not None and f"drive:{locator}" not in locators:
                    locators.append(f"drive:{locator}")
        return found + locators

    return targets


def _fields(*paths: tuple[str, ...], prefix: str = "") -> Targets:
    def targets(body: Any) -> list[str]:
        values = [_get(body, *path) for path in paths]
        return [f"{prefix}{value}" for value in values if value is not None and not isinstance(value, dict | list)]

    return targets


def _one_drive(*path: str, drive: tuple[str, ...] = ("resolvedCollection", "providerGeneratedId")) -> Targets:
    def targets(body: Any) -> list[str]:
        found = [str(value)] if (value := _get(body, *path)) is not None else []
        return found + ([f"drive:{locator}"] if (locator := _get(body, *drive)) is not None else [])

    return targets


def _slurm_jobs(body: Any) -> list[str]:
    ids = _get(body, "slurmJobIds")
    return [f"slurm:{i}" for i in ids] if isinstance(ids, list) else []


def _shell(body: Any) -> list[str]:
    if _get(body, "kind") == "folder":
        return _fields(("folder",))(body) + _fields(("drive",), prefix="drive:")(body)
    return _fields(("slurmJobId",), prefix="slurm:")(body) + _fields(("rank",), prefix="rank:")(body)


def _web_grant(body: Any) -> list[str]:
    return (
        _fields(("jobId",), prefix="job:")(body)
        + _fields(("slurmJobId",), prefix="slurm:")(body)
        + _fields(("rank",), prefix="rank:")(body)
        + _fields(("port",), prefix="port:")(body)
    )


def _nothing(_: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Action:
    """An audited route: its name, where its targets are in the request's JSON body, and what kind it is."""

    name: str
    targets: Targets = _nothing
    # The body is JSON (read for targets); False for streamed bodies, which are never read here.
    json_body: bool = True
    # A session (a socket, a stream): recorded when it opens and when it ends.
    session: bool = False
    # Only failures are recorded, and successes the handler marks with ``note`` (an upload's last chunk).
    noted_only: bool = False
    # Targets only the answer names (the Slurm id of a submitted job), read from a successful JSON answer.
    answer: Targets = _nothing
    # Its targets are UCloud file ids: the record names their local paths too (``paths``).
    files: bool = False


ACTIONS: Final[Mapping[tuple[str, str], Action]] = {
    ("POST", SUBMIT_PATH): Action(
        "jobs.submit", _fields(("jobId",), prefix="job:"), answer=_fields(("slurmJobId",), prefix="slurm:")
    ),
    ("POST", CANCEL_PATH): Action("jobs.cancel", _slurm_jobs),
    ("POST", DYNAMIC_PARAMETERS_PATH): Action("jobs.dynamic_parameters", _fields(("application", "name"))),
    ("POST", JOBS_FOLLOW_PATH): Action("jobs.follow", _fields(("jobFolder",)), session=True),
    ("POST", FILES_BROWSE_PATH): Action("files.browse", _one_drive("Browse", "flags", "path"), files=True),
    ("POST", FILES_RETRIEVE_PATH): Action("files.retrieve", _one_drive("retrieve", "id"), files=True),
    ("POST", FILES_FOLDER_PATH): Action("files.create_folder", _items("id"), files=True),
    ("POST", FILES_MOVE_PATH): Action(
        "files.move", _items("oldId", "newId", drives=("resolvedOldCollection", "resolvedNewCollection")), files=True
    ),
    ("POST", FILES_COPY_PATH): Action(
        "files.copy", _items("oldId", "newId", drives=("resolvedOldCollection", "resolvedNewCollection")), files=True
    ),
    ("POST", FILES_TRASH_PATH): Action("files.trash", _items("id"), files=True),
    ("POST", FILES_EMPTY_TRASH_PATH): Action("files.empty_trash", _items("id"), files=True),
    ("POST", FILES_DELETE_PATH): Action("files.delete", _items("id"), files=True),
    ("POST", FILES_UPLOAD_PATH): Action("files.upload", _items("id"), files=True),
    ("POST", FILES_DOWNLOAD_PATH): Action("files.download", _items("id"), files=True),
    # Chunks are many per file: a record for the last one (the file is in place) and for each refusal.
    ("POST", UPLOAD_CHUNK_PATH): Action("transfers.upload", json_body=False, noted_only=True, files=True),
    ("GET", UPLOAD_CHUNK_PATH): Action("transfers.upload_progress", json_body=False, noted_only=True),
    ("GET", DOWNLOAD_FILE_PATH): Action("transfers.download", json_body=False, files=True),
    # A folder upload's connection (WEBSOCKET_V2): when it opens, and when it ends with its files' outcomes.
    ("GET", FOLDER_UPLOAD_PATH): Action("transfers.folder_upload", json_body=False, session=True, files=True),
    ("HEAD", DOWNLOAD_FILE_PATH): Action("transfers.download_check", json_body=False, noted_only=True),
    ("POST", SHELL_SESSIONS_PATH): Action("shell.grant", _shell),
    ("GET", SHELL_WEBSOCKET_PATH): Action("shell.session", json_body=False, session=True),
    ("POST", WEB_GRANTS_PATH): Action("web.grant", _web_grant),
    ("POST", WEB_CLAIMS_PATH): Action("web.claim"),
    ("GET", WEB_CONNECT_PATH): Action("web.connect", json_body=False, session=True),
}


# --- the records ---------------------------------------------------------------------------------

SENDER: Final = web.AppKey("audit_sender", AuditSender)
# What the handler adds to its request's record (``note``), and when the request began.
_NOTES: Final = web.RequestKey("audit_notes", dict)
_STARTED: Final = web.RequestKey("audit_started", float)


def setup_audit(app: web.Application, socket_path: Path | None) -> None:
    """Audit every action of ``app``; put ``audit_actions`` first among its middlewares (it sees the final answer)."""
    sender = AuditSender(socket_path)
    app[SENDER] = sender
    app.on_response_prepare.append(_session_opened)

    async def close(_: web.Application) -> None:
        sender.close()

    app.on_cleanup.append(close)


def record(
    app: web.Application,
    action: str,
    targets: Iterable[str] = (),
    *,
    status: int = 200,
    why: str | None = None,
    request_id: str | None = None,
    **fields: Any,
) -> None:
    """Record one action taken as the user (the bridge adds who, when and as which uid). Never raises."""
    entry: dict[str, Any] = {
        "action": action,
        "targets": list(targets),
        "result": "ok" if status < 400 else "error",
        "status": status,
        "request_id": request_id or request_ids.CURRENT.get(),
        **fields,
    }
    if why is not None:
        entry["why"] = why[:MAX_WHY_CHARS]
    try:
        app[SENDER].send(entry)
    except Exception:  # an audit record must never break the action it records
        log.exception("could not send an audit record", extra={"action": action})


def note(request: web.Request, *, targets: Iterable[str] = (), **fields: Any) -> None:
    """Add targets (and fields) to the record of ``request``; marks a ``noted_only`` request for recording."""
    notes = request.setdefault(_NOTES, {})
    notes.setdefault("targets", []).extend(targets)
    notes.update(fields)


def action_of(request: web.Request) -> Action | None:
    if request.path in EXEMPT_PATHS or request.method == "OPTIONS":
        return None
    resource = request.match_info.route.resource
    if resource is None:
        return None  # no such route: a 404 of aiohttp's, no action
    found = ACTIONS.get((request.method, resource.canonical))
    return found or Action(f"{request.method} {resource.canonical}", json_body=False)


@web.middleware
async def audit_actions(request: web.Request, handler: Handler) -> web.StreamResponse:
    action = action_of(request)
    if action is None:
        return await handler(request)
    request[_STARTED] = time.monotonic()
    # The gateway's (or the operator's) id for this call; the same id for everything the request does.
    reset = request_ids.CURRENT.set(request_ids.valid_request_id(request.headers.get(request_ids.HEADER)))
    status: int = 500
    why: str | None = "the instance could not handle the request"
    try:
        response = await handler(request)
    except web.HTTPException as error:
        status, why = error.status, error.text or error.reason
        raise
    except asyncio.CancelledError:
        # The caller hung up mid-action (nginx's 499); what the action did so far stays done. Its body is
        # not read again: the connection is gone.
        status, why = CALLER_LEFT, "the caller went away before the answer"
        raise
    else:
        status, why = response.status, _why(response)
        if action.answer is not _nothing and status < 400:
            note(request, targets=action.answer(_json_answer(response)))
    finally:
        notes = request.get(_NOTES)
        if not (action.noted_only and status < 400 and notes is None):
            read = await _targets(request, action) if status != CALLER_LEFT else []
            targets = [*read, *(notes or {}).get("targets", [])]
            fields = {k: v for k, v in (notes or {}).items() if k != "targets"}
            if action.files and (paths := local_paths(request.app[DRIVES], targets)):
                fields["paths"] = paths
            if action.session:
                fields.update(phase="end", seconds=round(time.monotonic() - request[_STARTED], 3))
            record(request.app, action.name, targets, status=status, why=why if status >= 400 else None, **fields)
        request_ids.CURRENT.reset(reset)
    return response


def local_paths(drives: DriveResolver, targets: Iterable[str]) -> list[str]:
    """Where the file ids among ``targets`` are on this host: through the drives the request just rooted.

    Only drives the handler resolved (and so checked) are known to ``drives``; another user's home never is.
    """
    found = []
    for target in targets:
        if not target.startswith("/"):
            continue
        with contextlib.suppress(PathRefusedError, InvalidLocatorError):
            file_id = parse_id(target)
            drive = drives.recall(file_id.drive)
            if drive is not None:
                locator = Locator.parse(drive.provider_generated_id)
                root = drive_root(locator, drives.roots, drives.user, drives.home)
                found.append(str(root.joinpath(*file_id.parts)))
    return found


async def _session_opened(request: web.Request, response: web.StreamResponse) -> None:
    """A session's answer goes out (its 101, or the head of a stream): it is open from now on."""
    action = action_of(request)
    if action is None or not action.session or response.status >= 400:
        return
    targets = [*(await _targets(request, action)), *request.get(_NOTES, {}).get("targets", [])]
    record(request.app, action.name, targets, status=response.status, phase="open")


async def _targets(request: web.Request, action: Action) -> list[str]:
    """What the request acted on, from its JSON body (already read, and so cached, by the handler)."""
    if not action.json_body or action.targets is _nothing or not request.body_exists:
        return []
    try:
        return action.targets(json.loads(await request.read()))
    except (ValueError, TypeError, OSError, web.HTTPException):
        return []  # a body that is not JSON: the record says why the action failed, without targets


def _json_answer(response: web.StreamResponse) -> Any:
    """The JSON an answer holds whole (``web.json_response``), or None."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        return json.loads(response.body)
    except ValueError:
        return None


def _why(response: web.StreamResponse) -> str | None:
    """The ``why`` of an error answer (the instance's error envelope)."""
    why = _get(_json_answer(response), "why") if response.status >= 400 else None
    return str(why) if why is not None else None

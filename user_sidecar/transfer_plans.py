"""What Core's create-upload and create-download items become: each checked on disk, then a token and a session.

Nothing here records a session: the service (``transfers.py``) saves them only once every item
of a request was planned, so a request with one bad item creates nothing. Blocking: call it
from a worker thread.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol, TypeVar

from ucim.common.protocol import (
    FilesProviderCreateDownloadRequestItem,
    FilesProviderCreateUploadRequestItem,
    UploadProtocol,
)
from ucim.user_sidecar.metrics import TRANSFER_EVENTS
from ucim.user_sidecar.paths import SHOWN_ID_CHARS, Drives, FileId, PathRefusedError, refusal
from ucim.user_sidecar.transfer_io import TransferRefusedError, open_regular
from ucim.user_sidecar.transfer_sessions import (
    DownloadSession,
    FolderUploadSession,
    Location,
    UploadSession,
    digest,
)

PARTIAL_PREFIX: Final = ".ucim-upload-"
PARTIAL_SUFFIX: Final = ".part"
# The names a web client offers for a folder upload: "WEBSOCKET" is its legacy name, which it reads as V2 for folders.
FOLDER_PROTOCOLS: Final = frozenset({"WEBSOCKET_V2", "WEBSOCKET"})

Kind = Literal["upload", "download"]
T = TypeVar("T")


class _Named(Protocol):
    id: str


Item = TypeVar("Item", bound=_Named)


def plan_each(items: Sequence[Item], kind: Kind, plan: Callable[[Item], T]) -> list[T]:
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


def _target(drives: Drives, id_: str, kind: Kind) -> tuple[FileId, Location]:
    file_id = drives.parse(id_)
    if not file_id.parts:
        raise TransferRefusedError(f"{file_id.ucloud_id} is a whole drive: the {kind} needs a file in it")
    location = Location(drive=file_id.drive, root=str(drives.roots[file_id.drive]), parts=file_id.parts)
    return file_id, location


def protocol_of(item: FilesProviderCreateUploadRequestItem) -> UploadProtocol:
    """The protocol an upload's endpoint speaks: a folder's is WEBSOCKET_V2, a file's CHUNKED."""
    return "WEBSOCKET_V2" if item.type == "FOLDER" else "CHUNKED"


def _writable_entry(drives: Drives, file_id: FileId) -> os.stat_result | None:
    """What has ``file_id``'s name now (None: nothing), once its folder is known to be writable by the user."""
    with drives.open_parent(file_id) as (fd, name):
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=fd):
            raise TransferRefusedError(f"permission denied: cannot write in {file_id.parent.ucloud_id}", 403)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise refusal(error, file_id.ucloud_id) from error


def _offers(item: FilesProviderCreateUploadRequestItem, accepted: frozenset[str], what: str, name: str) -> None:
    if not accepted & set(item.supported_protocols):
        offered = ", ".join(item.supported_protocols) or "none"
        raise TransferRefusedError(
            f"this provider uploads {what} with the {name} protocol only; the request offers {offered}"
        )


def _upload_target(
    drives: Drives, item: FilesProviderCreateUploadRequestItem
) -> tuple[FileId, Location, os.stat_result | None]:
    """The upload's target, its location, and what has its name now (REJECT refuses any)."""
    file_id, location = _target(drives, item.id, "upload")
    existing = _writable_entry(drives, file_id)
    if existing is not None and item.conflict_policy == "REJECT":
        raise TransferRefusedError(f"{file_id.ucloud_id} already exists", 409)
    return file_id, location, existing


def plan_upload(
    drives: Drives, item: FilesProviderCreateUploadRequestItem, now: float
) -> tuple[str, UploadSession | FolderUploadSession]:
    """A token and its session for an upload to a file that may be written under its conflict policy."""
    if item.type == "FOLDER":
        return plan_folder_upload(drives, item, now)
    _offers(item, frozenset({"CHUNKED"}), "files", "CHUNKED")
    file_id, location, existing = _upload_target(drives, item)
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


def plan_folder_upload(
    drives: Drives, item: FilesProviderCreateUploadRequestItem, now: float
) -> tuple[str, FolderUploadSession]:
    """A token and its session for a folder upload (WEBSOCKET_V2); the folder is made at the first connection.

    REJECT refuses a name that is taken, REPLACE a name a file has (a folder upload merges into a
    folder, it never deletes a file for one); RENAME and MERGE_RENAME take any name.
    """
    _offers(item, FOLDER_PROTOCOLS, "folders", "WEBSOCKET_V2")
    file_id, location, existing = _upload_target(drives, item)
    if existing is not None and item.conflict_policy == "REPLACE" and not stat.S_ISDIR(existing.st_mode):
        raise TransferRefusedError(f"{file_id.ucloud_id} is a file; a folder upload does not replace it", 409)
    session = FolderUploadSession(
        location=location, conflict_policy=item.conflict_policy, created_at=now, last_activity=now
    )
    return secrets.token_urlsafe(32), session


def plan_download(
    drives: Drives, item: FilesProviderCreateDownloadRequestItem, now: float
) -> tuple[str, DownloadSession]:
    """A token and its session for a download of a regular file (opened once here, to check it)."""
    file_id, location = _target(drives, item.id, "download")
    with drives.open_parent(file_id) as (folder_fd, name):
        fd, _ = open_regular(folder_fd, name, file_id.ucloud_id)
        os.close(fd)
    return secrets.token_urlsafe(32), DownloadSession(location=location, created_at=now)

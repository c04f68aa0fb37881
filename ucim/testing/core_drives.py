"""Drives as UCloud/Core keeps them, and the file requests Core sends for them (for the Core stand-in).

Core stores the drives a provider registers (``/api/files/collections/control/register``)
under ids of its own, refuses a second drive with the same providerGeneratedId (409, as
core2's ``ResourceCreateEx`` does) and a product of another provider (403). On every file
call it resolves the drive of each file id (``/<drive id>/<path>``) and sends it along as
``resolvedCollection``, with the keys Go writes (``permissions``, ``updates``, ``status``)
even though a provider reads only a few of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ucim.common.protocol import (
    Drive,
    DriveSpecification,
    FileFlags,
    FilesProviderBrowseRequest,
    FilesProviderRetrieveRequest,
    PageV2,
    ProviderRegisteredResource,
    ResourceBrowseRequest,
    ResourceOwner,
    ResourceRetrieveRequest,
    SortDirection,
    dump,
    now_ms,
)

MAX_ITEMS_PER_PAGE: Final = 1000
DEFAULT_ITEMS_PER_PAGE: Final = 50
FIRST_DRIVE_ID: Final = 100
# The file calls whose items carry one file id and get that file's drive as ``resolvedCollection``.
SINGLE_DRIVE_CALLS: Final = frozenset({"folder", "trash", "emptyTrash", "upload", "download"})


class DriveRefusedError(Exception):
    """Core refuses a registration: ``status`` and ``why`` as Core answers them."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass
class DriveStore:
    """The drives Core holds for one provider, by Core's id."""

    provider_id: str
    drives: dict[str, Drive] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(FIRST_DRIVE_ID))

    def register(self, items: Sequence[ProviderRegisteredResource[DriveSpecification]]) -> list[str]:
        """Register in order, as core2 does: an item it refuses stops the rest, the earlier ones stay."""
        for item in items:
            product = item.spec.product
            if product is None:
                raise DriveRefusedError(400, "Invalid request supplied: spec.product is required")
            if product.provider != self.provider_id:
                raise DriveRefusedError(403, "Forbidden")
        ids = []
        for item in items:
            if item.provider_generated_id and self.by_provider_id(item.provider_generated_id) is not None:
                raise DriveRefusedError(409, "Already exists")
            drive_id = str(next(self._ids))
            self.drives[drive_id] = Drive(
                id=drive_id,
                created_at=now_ms(),
                owner=ResourceOwner(created_by=item.created_by or "_ucloud", project=item.project or None),
                provider_generated_id=item.provider_generated_id or "",
                specification=item.spec,
            )
            ids.append(drive_id)
        return ids

    def by_provider_id(self, provider_generated_id: str) -> Drive | None:
        return next((d for d in self.drives.values() if d.provider_generated_id == provider_generated_id), None)

    def browse(self, provider_ids: set[str] | None, items_per_page: int, next_token: str | None) -> PageV2[Drive]:
        """``control/browse``: the drives (only those providerGeneratedIds, if given), paged by position."""
        matching = [d for d in self.drives.values() if provider_ids is None or d.provider_generated_id in provider_ids]
        size = DEFAULT_ITEMS_PER_PAGE if items_per_page <= 0 else min(items_per_page, MAX_ITEMS_PER_PAGE)
        start = int(next_token) if next_token and next_token.isdigit() else 0
        page = matching[start : start + size]
        more = start + size < len(matching)
        return PageV2[Drive](items=page, items_per_page=size, next=str(start + size) if more else None)

    def retrieve(self, drive_id: str) -> dict[str, Any]:
        """``control/retrieve``: the drive as its provider sees it.

        core2 answers an id it does not find (or a drive of another provider) with 403 "Write permission is
        required", not 404 (resources.go ResourceRetrieveEx: no permissions at all reads as a missing one).
        """
        drive = self.drives.get(drive_id)
        if drive is None:
            raise DriveRefusedError(403, "Write permission is required")
        return provider_view(drive)

    def of_user(self, username: str) -> list[Drive]:
        """The user's personal drives (those registered with ``createdBy`` = the user, no project)."""
        return [d for d in self.drives.values() if d.owner.created_by == username and d.owner.project is None]

    def of_project(self, project: str) -> list[Drive]:
        return [d for d in self.drives.values() if d.owner.project == project]

    def drive_of(self, file_id: str) -> Drive:
        """The drive of a UCloud file id ``/<drive id>/...``."""
        drive_id = file_id.lstrip("/").split("/", 1)[0]
        drive = self.drives.get(drive_id)
        if drive is None:
            raise KeyError(f"{file_id!r} is in no drive Core knows (drive ids: {sorted(self.drives)})")
        return drive


def provider_view(drive: Drive) -> dict[str, Any]:
    """The drive as core2's ``files/collections/control`` calls write it for its provider (seen on the real Core)."""
    wire = dump(drive)
    return {
        "id": drive.id,
        "createdAt": drive.created_at,
        "owner": wire["owner"],
        "permissions": {"myself": ["READ", "PROVIDER"], "others": []},
        "providerGeneratedId": drive.provider_generated_id,
        "specification": {**wire["specification"], "labels": drive.specification.labels or {}},
        "updates": [],
        "status": {"preferredDrive": False, "resolvedSupport": None, "resolvedProduct": None},
    }


def resolved(drive: Drive) -> dict[str, Any]:
    """The drive as Core sends it in ``resolvedCollection``: Go's keys, the ones a provider ignores too."""
    return {
        **dump(drive),
        "permissions": {"myself": ["ADMIN"], "others": None},
        "updates": [],
        "status": {"preferredDrive": False, "resolvedSupport": None, "resolvedProduct": None},
    }


def browse_body(
    drive: Drive,
    path: str,
    *,
    items_per_page: int = 0,
    next_token: str | None = None,
    sort_by: str | None = None,
    sort_direction: SortDirection | None = None,
    flags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``files/browse`` as core2 writes it: the browse request under the Go field name ``Browse``."""
    request = FilesProviderBrowseRequest(
        browse=ResourceBrowseRequest[FileFlags](
            flags=FileFlags.model_validate({**(flags or {}), "path": path}),
            items_per_page=items_per_page,
            next=next_token,
            sort_by=sort_by,
            sort_direction=sort_direction,
        )
    )
    return {**dump(request), "resolvedCollection": resolved(drive)}


def retrieve_body(drive: Drive, file_id: str) -> dict[str, Any]:
    request = FilesProviderRetrieveRequest(retrieve=ResourceRetrieveRequest[FileFlags](flags=FileFlags(), id=file_id))
    return {**dump(request), "resolvedCollection": resolved(drive)}


def resolve_items(operation: str, items: Sequence[Mapping[str, Any]], store: DriveStore) -> list[dict[str, Any]]:
    """Core's provider request items for ``operation``: each item with its drive(s) resolved.

    An item that already names its drive (a test sending a wrong one) is left as it is.
    """
    result = []
    for item in items:
        full = dict(item)
        if operation in SINGLE_DRIVE_CALLS:
            full.setdefault("resolvedCollection", resolved(store.drive_of(full["id"])))
        elif operation in ("move", "copy"):
            full.setdefault("resolvedOldCollection", resolved(store.drive_of(full["oldId"])))
            full.setdefault("resolvedNewCollection", resolved(store.drive_of(full["newId"])))
        elif operation == "delete":
            full = deleted_file(store.drive_of(full["id"]), full["id"]) | full
        else:
            raise ValueError(f"unknown file operation {operation!r}")
        result.append(full)
    return result


def deleted_file(drive: Drive, file_id: str) -> dict[str, Any]:
    """An item of ``DELETE files``: a UFile with the drive's owner and product, and an empty status."""
    return {
        "id": file_id,
        "createdAt": drive.created_at,
        "owner": dump(drive.owner),
        "permissions": {"myself": ["ADMIN"], "others": None},
        "providerGeneratedId": "",
        "specification": {
            "collection": drive.id,
            "product": dump(drive.specification.product) if drive.specification.product else None,
        },
        "status": {
            "type": "",
            "sizeInBytes": None,
            "sizeIncludingChildrenInBytes": None,
            "fileCount": None,
            "directoryCount": None,
            "modifiedAt": 0,
            "accessedAt": 0,
            "unixMode": 0,
            "unixOwner": 0,
            "unixGroup": 0,
            "metadata": {"metadata": None},
        },
    }

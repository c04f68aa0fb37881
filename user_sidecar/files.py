"""Browse and retrieve, as the instance's user, inside the drives of :mod:`.paths`.

Browse lists a folder with one ``scandir`` on its fd, sorts by name, size or modification
time (ties broken by name) in either direction and pages with an opaque ``next`` that
holds the sort key of the last item sent (keyset paging: a page never repeats or skips
an entry that stayed in place while others came and went). Sorted by name, only the
entries on the page are ``stat``-ed.

Entries are shown as themselves: a symbolic link is a FILE with the link's own
metadata, never followed (browsing into one is refused by :mod:`.paths`). Names that
are not valid UTF-8 cannot be written as UCloud ids and are left out.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from ucim.common.protocol import FileIcon, PageV2, ProviderFile, UFileStatus
from ucim.user_sidecar.paths import Drives, FileId, PathRefusedError

DEFAULT_PAGE = 50
MAX_PAGE = 1000
TRASH_FOLDER = "Trash"

# What UCloud's clients send as sortBy (case does not matter), and what it means here.
SORT_FIELDS = {
    "": "name",
    "name": "name",
    "path": "name",
    "filename": "name",
    "file_name": "name",
    "size": "size",
    "sizeinbytes": "size",
    "size_in_bytes": "size",
    "modified_at": "modified",
    "modifiedat": "modified",
    "modified": "modified",
    "mtime": "modified",
}

SortKey = tuple[Any, str]
Row = tuple[SortKey, os.DirEntry[str]]


def sort_field(value: str | None) -> str:
    field = SORT_FIELDS.get((value or "").strip().lower())
    if field is None:
        choices = "name (PATH), size (SIZE) or modification time (MODIFIED_AT)"
        raise PathRefusedError(f"cannot sort by {value!r}: use {choices}")
    return field


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _valid_name(name: str) -> bool:
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Cursor:
    """The decoded ``next``: the sort it belongs to and the key of the last item sent."""

    field: str
    descending: bool
    key: SortKey

    def encode(self) -> str:
        raw = json.dumps([self.field, self.descending, *self.key], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, token: str, field: str, descending: bool) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            token_field, token_descending, primary, name = json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as error:
            raise PathRefusedError("the next token is not one this instance made") from error
        if (token_field, token_descending) != (field, descending):
            raise PathRefusedError("the next token belongs to a different sort order; start again without it")
        if not isinstance(name, str) or not isinstance(primary, str | int):
            raise PathRefusedError("the next token is not one this instance made")
        return cls(field, descending, (primary, name))


class Files:
    """The file operations of one instance."""

    def __init__(self, drives: Drives, jobs_folder: str = "ucloud-jobs") -> None:
        self.drives = drives
        self.icons: dict[str, FileIcon] = {TRASH_FOLDER: "DIRECTORY_TRASH", jobs_folder: "DIRECTORY_JOBS"}

    def describe(self, file_id: FileId, st: os.stat_result) -> ProviderFile:
        is_dir = stat.S_ISDIR(st.st_mode)
        icon: FileIcon = ""
        if is_dir and len(file_id.parts) == 1:
            icon = self.icons.get(file_id.parts[0], "")
        status = UFileStatus(
            type="DIRECTORY" if is_dir else "FILE",
            icon=icon,
            size_in_bytes=None if is_dir else st.st_size,
            modified_at=_ms(st.st_mtime_ns),
            accessed_at=_ms(st.st_atime_ns),
            unix_mode=stat.S_IMODE(st.st_mode),
            unix_owner=st.st_uid,
            unix_group=st.st_gid,
        )
        # Linux's stat has no birth time; the modification time is the closest stable stand-in.
        return ProviderFile(id=file_id.ucloud_id, status=status, created_at=_ms(st.st_mtime_ns))

    def retrieve(self, id_: str) -> ProviderFile:
        file_id = self.drives.parse(id_)
        return self.describe(file_id, self.drives.lstat(file_id))

    def browse(
        self,
        path: str,
        *,
        sort_by: str | None = None,
        descending: bool = False,
        items_per_page: int = DEFAULT_PAGE,
        next_token: str | None = None,
        filter_hidden: bool = False,
        extension: str | None = None,
    ) -> PageV2[ProviderFile]:
        field = sort_field(sort_by)
        size = DEFAULT_PAGE if items_per_page <= 0 else min(items_per_page, MAX_PAGE)
        cursor = Cursor.decode(next_token, field, descending) if next_token else None
        folder = self.drives.parse(path)
        with self.drives.open_folder(folder, listing=True) as fd:
            rows = self._rows(fd, field, filter_hidden, extension)
            keys = [key for key, _ in rows]
            if descending:
                end = bisect.bisect_left(keys, cursor.key) if cursor else len(rows)
                chosen = rows[max(0, end - size) : end][::-1]
                more = end - size > 0
            else:
                start = bisect.bisect_right(keys, cursor.key) if cursor else 0
                chosen = rows[start : start + size]
                more = start + size < len(rows)
            items = []
            for _, entry in chosen:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the listing
                items.append(self.describe(folder.child(entry.name), st))
        token = Cursor(field, descending, chosen[-1][0]).encode() if more and chosen else None
        return PageV2[ProviderFile](items=items, items_per_page=size, next=token)

    @staticmethod
    def _rows(fd: int, field: str, filter_hidden: bool, extension: str | None) -> list[Row]:
        rows: list[Row] = []
        with os.scandir(fd) as listing:
            for entry in listing:
                name = entry.name
                if (filter_hidden and name.startswith(".")) or not _valid_name(name):
                    continue
                if extension and not name.endswith(extension) and not entry.is_dir(follow_symlinks=False):
                    continue
                if field == "name":
                    rows.append(((0, name), entry))
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                # Folders have no size of their own: they sort before every file.
                primary = (-1 if stat.S_ISDIR(st.st_mode) else st.st_size) if field == "size" else st.st_mtime_ns
                rows.append(((primary, name), entry))
        rows.sort(key=lambda row: row[0])
        return rows

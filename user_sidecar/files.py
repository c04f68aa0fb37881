"""Browse and retrieve, as the instance's user, inside the drives of :mod:`.paths`.

Browse sorts a folder by name, size or modification time (ties broken by name) in either
direction and pages with an opaque ``next`` that holds the sort key of the last item sent
(keyset paging: a page never repeats or skips an entry that stayed in place while others
came and went). A page is the ``size + 1`` smallest (or largest) keys after the cursor,
taken with :mod:`heapq` rather than a sort of the whole folder; the extra one only says
whether a next page exists. Sorted by name, the folder is listed by name alone (one
``listdir`` on its fd, ``scandir`` when an extension filter must tell folders apart) and
only the entries on the page are ``stat``-ed; sorted by size or time, every entry is.

Entries are shown as themselves: a symbolic link is a FILE with the link's own
metadata, never followed (browsing into one is refused by :mod:`.paths`). Names that
are not valid UTF-8 cannot be written as UCloud ids and are left out.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import os
import stat
from collections.abc import Iterator
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
# A candidate for the page: its key and, when the listing needed it already, its stat.
Row = tuple[SortKey, os.stat_result | None]


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
        # Only these keys compare with the folder's: a name's primary is always 0, size and time are ints.
        if not isinstance(name, str) or not isinstance(primary, int) or (field == "name" and primary != 0):
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
        # One more than the page: it only tells whether a next page exists.
        query = _Query(field, descending, cursor, size + 1, filter_hidden, extension)
        folder = self.drives.parse(path)
        with self.drives.open_folder(folder, listing=True) as fd:
            chosen = _first_by_name(fd, query) if field == "name" else _first_by_stat(fd, query)
            more = len(chosen) > size
            del chosen[size:]
            items = []
            for (_, name), listed in chosen:
                st = listed if listed is not None else _lstat(fd, name)
                if st is None:
                    continue  # gone since the listing
                items.append(self.describe(folder.child(name), st))
        token = Cursor(field, descending, chosen[-1][0]).encode() if more and chosen else None
        return PageV2[ProviderFile](items=items, items_per_page=size, next=token)


def _shown(name: str, filter_hidden: bool) -> bool:
    return not (filter_hidden and name.startswith(".")) and _valid_name(name)


def _shown_names(names: list[str], filter_hidden: bool) -> list[str]:
    """The names that pass ``_shown``; the UTF-8 check runs once for the whole listing when all of it passes."""
    if filter_hidden:
        names = [name for name in names if not name.startswith(".")]
    if _valid_name("".join(names)):
        return names
    return [name for name in names if _valid_name(name)]


def _entries(fd: int, filter_hidden: bool, extension: str | None) -> Iterator[os.DirEntry[str]]:
    """The entries browse may show; folders pass the extension filter (d_type tells them apart)."""
    with os.scandir(fd) as listing:
        for entry in listing:
            name = entry.name
            if not _shown(name, filter_hidden):
                continue
            if extension and not name.endswith(extension) and not entry.is_dir(follow_symlinks=False):
                continue
            yield entry


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class _Query:
    """Which entries of the folder a page wants: the order, where it starts, how many, which ones."""

    field: str
    descending: bool
    cursor: Cursor | None
    count: int
    filter_hidden: bool
    extension: str | None


def _first_by_name(fd: int, query: _Query) -> list[Row]:
    """The first rows after the cursor by name: bare names, nothing ``stat``-ed yet."""
    if query.extension:
        names = [entry.name for entry in _entries(fd, query.filter_hidden, query.extension)]
    else:
        names = _shown_names(os.listdir(fd), query.filter_hidden)
    if query.cursor:
        # Every name's key is (0, name) and a name cursor's primary is 0: names compare as their keys do.
        last = query.cursor.key[1]
        names = [name for name in names if name < last] if query.descending else [name for name in names if name > last]
    take = heapq.nlargest if query.descending else heapq.nsmallest
    return [((0, name), None) for name in take(query.count, names)]


def _first_by_stat(fd: int, query: _Query) -> list[Row]:
    """The first rows after the cursor by size or time: every entry's key needs its stat."""
    rows: list[Row] = []
    for entry in _entries(fd, query.filter_hidden, query.extension):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone since the listing
        # Folders have no size of their own: they sort before every file.
        primary = (-1 if stat.S_ISDIR(st.st_mode) else st.st_size) if query.field == "size" else st.st_mtime_ns
        rows.append(((primary, entry.name), st))
    if query.cursor:
        after = query.cursor.key
        rows = [row for row in rows if row[0] < after] if query.descending else [row for row in rows if row[0] > after]
    # Keys are unique (names are), so two rows never get as far as comparing their stats.
    take = heapq.nlargest if query.descending else heapq.nsmallest
    return take(query.count, rows)

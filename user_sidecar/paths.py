"""UCloud file ids resolved to local files, never outside their drive's root.

A UCloud file id is ``/<drive id>/rel/path``. :class:`Drives` maps drive ids to local
roots. They come from the request: Core sends the drive of every file call
(``resolvedCollection``), whose ``providerGeneratedId`` is a locator (``ucim.common.drives``);
:meth:`Drives.for_request` turns those into roots with the site's ``drive_roots`` patterns
(``home:<user>`` is the instance user's own home, never another's). :func:`parse_id`
refuses, with a readable reason, what is never a valid path: NUL bytes, ``..``, empty
components (an absolute path glued into the relative part), components over 255 bytes,
ids over 4096 bytes, text that is not UTF-8 (lone surrogates) and drives the request
does not name.

Resolution opens the root and then every component *relative to its parent's fd* with
``O_NOFOLLOW``, so no symbolic link is ever followed, not even one swapped in between two
calls: **a symlink is never a path component**, whether it points to /etc or to a sibling
inside the root (the safe default; a link still shows up in a listing, as itself). The
instance runs as its user, so the OS already stops cross-user access; this layer stops
escapes within what the user may read.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ucim.common.drives import InvalidLocatorError, Locator
from ucim.common.protocol import Drive

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
REMEMBERED_DRIVES = 1000
# How much of an item's id a refusal of a bulk call shows ("item 3 (<id>): ...").
SHOWN_ID_CHARS = 200
DRIVE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")

# Walking: O_PATH needs only search permission on the folder, like the kernel's own walk.
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefusedError(Exception):
    """A file id that cannot be served; ``status`` is the HTTP answer, the message says why."""

    status = 400


class PathNotFoundError(PathRefusedError):
    status = 404


class PathForbiddenError(PathRefusedError):
    status = 403


class NoSpaceError(PathRefusedError):
    status = 507


@dataclass(frozen=True)
class FileId:
    """A parsed UCloud file id: the drive and the components below its root."""

    drive: str
    parts: tuple[str, ...] = ()

    @property
    def ucloud_id(self) -> str:
        return "/" + "/".join((self.drive, *self.parts))

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def parent(self) -> FileId:
        """The folder holding this file (a drive's root is its own parent)."""
        return FileId(self.drive, self.parts[:-1])

    def child(self, name: str) -> FileId:
        return FileId(self.drive, (*self.parts, name))

    def with_name(self, name: str) -> FileId:
        """The same folder, another name (what RENAME picked)."""
        return self.parent.child(name) if self.parts else self


def parse_id(text: str) -> FileId:
    """Check a UCloud file id and split it; raises PathRefusedError with the reason."""
    if "\x00" in text:
        raise PathRefusedError("the path contains a NUL byte")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise PathRefusedError("the path is not valid UTF-8") from error
    if size > MAX_PATH_BYTES:
        raise PathRefusedError(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if not text.startswith("/"):
        raise PathRefusedError(f"a file id is /<drive>/<path>, not {text[:100]!r}")
    drive, *rest = text[1:].split("/")
    if rest and rest[-1] == "":
        rest.pop()  # one trailing slash names the same folder
    if not drive:
        raise PathRefusedError("a file id starts with its drive: /<drive>/<path>")
    if not DRIVE_ID.match(drive):
        raise PathRefusedError(f"{drive[:100]!r} is not a drive id")
    parts = []
    for part in rest:
        if part == "":
            raise PathRefusedError("the path has an empty component (//): no absolute paths inside a drive")
        if part == "..":
            raise PathRefusedError("the path contains '..'")
        if part == ".":
            continue
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise PathRefusedError(f"a name in the path is longer than {MAX_COMPONENT_BYTES} bytes")
        parts.append(part)
    return FileId(drive, tuple(parts))


# errno -> the answer and how it reads; anything else is a 400 with the OS's words.
_REFUSALS: dict[int, tuple[type[PathRefusedError], str]] = {
    errno.ENOENT: (PathNotFoundError, "{what} does not exist"),
    errno.EACCES: (PathForbiddenError, "permission denied: {what}"),
    errno.EPERM: (PathForbiddenError, "permission denied: {what}"),
    errno.EROFS: (PathForbiddenError, "{what} is on a read-only file system"),
    errno.ENOSPC: (NoSpaceError, "{what}: no space left on the file system"),
    errno.EDQUOT: (NoSpaceError, "{what}: the disk quota is exceeded"),
    errno.ENAMETOOLONG: (PathRefusedError, "{what}: the name is too long"),
    errno.ELOOP: (PathRefusedError, "{what} is a symbolic link; links are not followed"),
}


def refusal(error: OSError, what: str) -> PathRefusedError:
    """The OS's refusal of ``what`` as an answer with a status: 404, 403, 507 or 400."""
    kind, text = _REFUSALS.get(error.errno or 0, (PathRefusedError, "{what}: " + os.strerror(error.errno or 0)))
    return kind(text.format(what=what))


def drive_root(locator: Locator, roots: Mapping[str, str], user: str, home: Path, drive_id: str = "") -> Path:
    """The local folder of ``locator`` for an instance of ``user`` (whose home is ``home``).

    ``locator.name`` is a checked local name (no "/", never "..") so formatting cannot leave the pattern.
    """
    shown = f"drive {drive_id} ({locator})" if drive_id else f"drive {locator}"
    pattern = roots.get(locator.kind)
    if pattern is None:
        raise PathRefusedError(f"{shown}: {locator.kind} drives are not configured")
    if locator.kind == "home" and locator.name != user:
        raise PathForbiddenError(f"{shown} is the home of another user")
    text = pattern.format(name=locator.name)
    return home / text[2:] if text == "~" or text.startswith("~/") else Path(text)


Identity = tuple[int, int]


def identity(st: os.stat_result) -> Identity:
    """What makes a file itself, whatever its name: (device, inode)."""
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class DriveResolver:
    """What an instance needs to root the drives of a request: the site's patterns and its account.

    It also remembers the drives requests named (id -> locator; Core never changes either):
    Core's ``DELETE files`` names its drive by id only, and :meth:`recall` finds it again.
    """

    roots: Mapping[str, str]
    user: str
    home: Path
    seen: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, *collections: Drive) -> Drives:
        drives = Drives.for_request(collections, self.roots, self.user, self.home)
        for collection in collections:
            if collection.id in drives.roots:
                self.seen.pop(collection.id, None)
                self.seen[collection.id] = collection.provider_generated_id
        while len(self.seen) > REMEMBERED_DRIVES:
            del self.seen[next(iter(self.seen))]  # the least recently named
        return drives

    def recall(self, drive_id: str) -> Drive | None:
        """The drive ``drive_id`` as a request since the instance started named it, if one did."""
        locator = self.seen.get(drive_id)
        return None if locator is None else Drive(id=drive_id, provider_generated_id=locator)


class Drives:
    """The drives of one request: drive id -> local root folder."""

    def __init__(self, roots: Mapping[str, Path]) -> None:
        for drive in roots:
            if not DRIVE_ID.match(drive):
                raise ValueError(f"{drive!r} is not a valid drive id")
        self.roots = dict(roots)

    @classmethod
    def for_request(cls, collections: Iterable[Drive], roots: Mapping[str, str], user: str, home: Path) -> Drives:
        """The drives Core resolved for a request, rooted by their locators (see :func:`drive_root`).

        A collection without id and locator is one the request left out. Raises
        PathRefusedError: 400 for a locator that is not ours or a kind the site has no root
        for, 403 for another user's home.
        """
        found: dict[str, Path] = {}
        for collection in collections:
            if not collection.id and not collection.provider_generated_id:
                continue
            if not DRIVE_ID.match(collection.id):
                raise PathRefusedError(f"{collection.id[:100]!r} is not a drive id")
            try:
                locator = Locator.parse(collection.provider_generated_id)
            except InvalidLocatorError as error:
                raise PathRefusedError(f"drive {collection.id}: {error}") from error
            root = drive_root(locator, roots, user, home, collection.id)
            if found.setdefault(collection.id, root) != root:
                raise PathRefusedError(f"drive {collection.id} is sent with two different locators")
        return cls(found)

    def parse(self, text: str) -> FileId:
        file_id = parse_id(text)
        if file_id.drive not in self.roots:
            if not self.roots:
                raise PathRefusedError(f"{text[:200]} is not in a drive: the request names none (resolvedCollection)")
            raise PathRefusedError(f"{text[:200]} is not in drive {', '.join(sorted(self.roots))}")
        return file_id

    def _open_root(self, file_id: FileId, flags: int) -> int:
        try:
            # The configured root itself may be reached through links (a site's /home -> /data/home).
            return os.open(self.roots[file_id.drive], flags & ~os.O_NOFOLLOW)
        except OSError as error:
            raise refusal(error, f"drive {file_id.drive!r}") from error

    def _step(self, parent: int, name: str, flags: int, file_id: FileId, depth: int) -> int:
        """Open ``name`` in ``parent`` as a folder without following a link."""
        shown = "/" + "/".join((file_id.drive, *file_id.parts[: depth + 1]))
        try:
            return os.open(name, flags, dir_fd=parent)
        except OSError as error:
            if error.errno in (errno.ENOTDIR, errno.ELOOP):
                try:
                    mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
                except OSError as second:
                    raise refusal(second, shown) from second
                if stat.S_ISLNK(mode):
                    raise PathRefusedError(f"{shown} is a symbolic link; links are not followed") from error
                raise PathRefusedError(f"{shown} is not a folder") from error
            raise refusal(error, shown) from error

    @contextmanager
    def open_folder(
        self, file_id: FileId, *, listing: bool = False, lineage: list[Identity] | None = None
    ) -> Iterator[int]:
        """An fd of the folder ``file_id`` (readable when ``listing``); every component checked.

        ``lineage`` collects the identity of the root and of every folder on the way down.
        """
        last = len(file_id.parts) - 1
        fd = self._open_root(file_id, _LIST if listing and last < 0 else _WALK)
        try:
            if lineage is not None:
                lineage.append(identity(os.fstat(fd)))
            for depth, name in enumerate(file_id.parts):
                child = self._step(fd, name, _LIST if listing and depth == last else _WALK, file_id, depth)
                os.close(fd)
                fd = child
                if lineage is not None:
                    lineage.append(identity(os.fstat(fd)))
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open_parent(self, file_id: FileId) -> Iterator[tuple[int, str]]:
        """The parent folder's fd and the last name (``"."`` for a drive's root)."""
        if not file_id.parts:
            with self.open_folder(file_id) as fd:
                yield fd, "."
            return
        with self.open_folder(FileId(file_id.drive, file_id.parts[:-1])) as fd:
            yield fd, file_id.parts[-1]

    def lstat(self, file_id: FileId) -> os.stat_result:
        """The file's own metadata (a link is not followed)."""
        with self.open_parent(file_id) as (fd, name):
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as error:
                raise refusal(error, file_id.ucloud_id) from error

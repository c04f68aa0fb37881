"""UCloud file ids resolved to local files, never outside their drive's root.

A UCloud file id is ``/<drive id>/rel/path``. :class:`Drives` maps drive ids to local
roots (for now the user's home; project drives later). :func:`parse_id` refuses, with a
readable reason, what is never a valid path: NUL bytes, ``..``, empty components (an
absolute path glued into the relative part), components over 255 bytes, ids over 4096
bytes, text that is not UTF-8 (lone surrogates) and unknown drives.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
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


@dataclass(frozen=True)
class FileId:
    """A parsed UCloud file id: the drive and the components below its root."""

    drive: str
    parts: tuple[str, ...] = ()

    @property
    def ucloud_id(self) -> str:
        return "/" + "/".join((self.drive, *self.parts))

    def child(self, name: str) -> FileId:
        return FileId(self.drive, (*self.parts, name))


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


def _refusal(error: OSError, what: str) -> PathRefusedError:
    if error.errno in (errno.ENOENT,):
        return PathNotFoundError(f"{what} does not exist")
    if error.errno in (errno.EACCES, errno.EPERM):
        return PathForbiddenError(f"permission denied: {what}")
    if error.errno == errno.ENAMETOOLONG:
        return PathRefusedError(f"{what}: the name is too long")
    return PathRefusedError(f"{what}: {os.strerror(error.errno or 0)}")


class Drives:
    """The drives this instance serves: drive id -> local root folder."""

    def __init__(self, roots: Mapping[str, Path]) -> None:
        for drive in roots:
            if not DRIVE_ID.match(drive):
                raise ValueError(f"{drive!r} is not a valid drive id")
        self.roots = dict(roots)

    @classmethod
    def from_settings(cls, drives: Mapping[str, str], home: Path) -> Drives:
        """``drives`` as configured: "~" (or "~/sub") is below the user's home, anything else absolute."""
        roots = {}
        for drive, root in drives.items():
            if root == "~" or root.startswith("~/"):
                roots[drive] = home / root[2:]
            elif root.startswith("/"):
                roots[drive] = Path(root)
            else:
                raise ValueError(f"the root of drive {drive!r} must be absolute or start with ~: {root!r}")
        return cls(roots)

    def parse(self, text: str) -> FileId:
        file_id = parse_id(text)
        if file_id.drive not in self.roots:
            raise PathRefusedError(f"unknown drive {file_id.drive!r}")
        return file_id

    def _open_root(self, file_id: FileId, flags: int) -> int:
        try:
            # The configured root itself may be reached through links (a site's /home -> /data/home).
            return os.open(self.roots[file_id.drive], flags & ~os.O_NOFOLLOW)
        except OSError as error:
            raise _refusal(error, f"drive {file_id.drive!r}") from error

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
                    raise _refusal(second, shown) from second
                if stat.S_ISLNK(mode):
                    raise PathRefusedError(f"{shown} is a symbolic link; links are not followed") from error
                raise PathRefusedError(f"{shown} is not a folder") from error
            raise _refusal(error, shown) from error

    @contextmanager
    def open_folder(self, file_id: FileId, *, listing: bool = False) -> Iterator[int]:
        """An fd of the folder ``file_id`` (readable when ``listing``); every component checked."""
        last = len(file_id.parts) - 1
        fd = self._open_root(file_id, _LIST if listing and last < 0 else _WALK)
        try:
            for depth, name in enumerate(file_id.parts):
                child = self._step(fd, name, _LIST if listing and depth == last else _WALK, file_id, depth)
                os.close(fd)
                fd = child
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
                raise _refusal(error, file_id.ucloud_id) from error

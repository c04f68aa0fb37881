"""UCloud's write-conflict policies, applied atomically where a name is taken.

* REJECT: the name is taken -> 409, nothing written.
* RENAME and MERGE_RENAME: the first free name of ``name(1).ext``, ``name(2).ext``, ...
  (for files MERGE_RENAME is RENAME; merging folders is the caller's business).
* REPLACE: the new file takes the name; the old one is gone.

:func:`commit` puts a finished file in place without a window where a check and a write
race: a fresh name is claimed with ``link`` (fails if the name exists), a replacement
is one ``rename``. Everything works on directory fds, so no path is resolved again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Final

from ucim.common.protocol import WriteConflictPolicy
from ucim.user_sidecar.paths import PathRefusedError

RENAME_LIMIT: Final = 10_000


class ConflictError(PathRefusedError):
    status = 409


def numbered(name: str, n: int) -> str:
    """``report.txt`` -> ``report(n).txt``; a leading dot is not an extension (``.bashrc(n)``)."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        return f"{name}({n})"
    return f"{stem}({n}).{extension}"


def candidates(name: str) -> Iterator[str]:
    """The names RENAME tries after ``name`` itself."""
    for n in range(1, RENAME_LIMIT + 1):
        yield numbered(name, n)


def exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def free_name(dir_fd: int, name: str) -> str:
    """``name`` if free, else the first free numbered name (racy: claim it with an atomic call)."""
    if not exists(dir_fd, name):
        return name
    for candidate in candidates(name):
        if not exists(dir_fd, candidate):
            return candidate
    raise ConflictError(f"{name!r} and {RENAME_LIMIT} numbered names after it are taken")


def commit(src_fd: int, src_name: str, dst_fd: int, dst_name: str, policy: WriteConflictPolicy) -> str:
    """Move the finished file ``src_name`` to ``dst_name`` under ``policy``; the name it got.

    Both folders must be on one file system (callers write next to the target).
    """
    if policy == "REPLACE":
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except IsADirectoryError as error:
            raise ConflictError(f"{dst_name!r} is a folder; a file cannot replace it") from error
        return dst_name
    names = [dst_name] if policy == "REJECT" else [dst_name, *candidates(dst_name)]
    for name in names:
        try:
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise
            continue
        os.unlink(src_name, dir_fd=src_fd)
        return name
    if policy == "REJECT":
        raise ConflictError(f"{dst_name!r} already exists")
    raise ConflictError(f"{dst_name!r} and {RENAME_LIMIT} numbered names after it are taken")

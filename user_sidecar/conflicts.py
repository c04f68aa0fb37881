"""UCloud's write-conflict policies, applied atomically where a name is taken.

* REJECT: the name is taken -> 409, nothing written.
* RENAME and MERGE_RENAME: the first free name of ``name(1).ext``, ``name(2).ext``, ...
  (for files MERGE_RENAME is RENAME; merging folders is the caller's business).
* REPLACE: the new file takes the name; the old one is gone.

:func:`commit` puts a finished file in place without a window where a check and a write
race: a fresh name is claimed with ``link`` (fails if the name exists), a replacement
is one ``rename``. :func:`place` does the same for anything, folders included: a fresh
name is claimed with ``renameat2(RENAME_NOREPLACE)``, and what REPLACE displaces is first
parked under a hidden name and only removed once the new entry has its name, so a failed
replacement puts the old one back. Everything works on directory fds, so no path is
resolved again.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import Final

from ucim.common.protocol import WriteConflictPolicy
from ucim.user_sidecar.paths import PathRefusedError

RENAME_LIMIT: Final = 10_000
# Hidden names of entries in transit; a crash may leave one behind, never a half-written file under a real name.
PARKED_PREFIX: Final = ".ucim-replaced-"
_RENAME_NOREPLACE: Final = 1  # <linux/fs.h>
# glibc >= 2.28 has renameat2; loaded here, at import, because an instance cannot read libraries later.
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


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
    # Lazily: RENAME_LIMIT names made for every commit cost more than a small file's whole upload.
    names = [dst_name] if policy == "REJECT" else itertools.chain([dst_name], candidates(dst_name))
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


def rename_noreplace(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
    """``rename`` that raises FileExistsError instead of replacing ``dst_name``.

    Atomic where the file system supports RENAME_NOREPLACE (ext4, xfs, btrfs, tmpfs, ...);
    elsewhere a check right before the rename, the best POSIX offers for folders.
    """
    if _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(src_name), dst_fd, os.fsencode(dst_name), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), dst_name)
    if exists(dst_fd, dst_name):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst_name)
    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove a file, a link (not what it points to) or a whole folder, all relative to ``dir_fd``."""
    if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        # rmtree with dir_fd is fd based on Linux: it opens each folder and checks it is the one it stat-ed.
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def place(src_fd: int, src_name: str, dst_fd: int, dst_name: str, policy: WriteConflictPolicy) -> str:
    """Rename the file, link or folder ``src_name`` to ``dst_name`` under ``policy``; the name it got.

    MERGE_RENAME is RENAME here (merging is the caller's: it needs the content of both).
    Both folders must be on one file system.
    """
    if policy == "REPLACE":
        replace(src_fd, src_name, dst_fd, dst_name)
        return dst_name
    # Lazily: RENAME_LIMIT names made for every commit cost more than a small file's whole upload.
    names = [dst_name] if policy == "REJECT" else itertools.chain([dst_name], candidates(dst_name))
    for name in names:
        try:
            rename_noreplace(src_fd, src_name, dst_fd, name)
        except FileExistsError:
            continue
        return name
    if policy == "REJECT":
        raise ConflictError(f"{dst_name!r} already exists")
    raise ConflictError(f"{dst_name!r} and {RENAME_LIMIT} numbered names after it are taken")


def replace(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
    """Give ``src_name`` the name ``dst_name``, removing whatever had it (a folder included)."""
    src = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
    for _ in range(RENAME_LIMIT):
        try:
            dst = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            try:
                rename_noreplace(src_fd, src_name, dst_fd, dst_name)
            except FileExistsError:
                continue  # taken meanwhile: look again
            return
        if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
            return  # already there under that name
        if not stat.S_ISDIR(src.st_mode) and not stat.S_ISDIR(dst.st_mode):
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)  # one atomic step
            return
        parked = _park(dst_fd, dst_name)
        try:
            rename_noreplace(src_fd, src_name, dst_fd, dst_name)
        except BaseException:
            os.rename(parked, dst_name, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
            raise
        remove(dst_fd, parked)
        return
    raise ConflictError(f"{dst_name!r} keeps changing; try again")


def _park(dir_fd: int, name: str) -> str:
    """Move ``name`` aside to a fresh hidden name in the same folder; that name."""
    while True:
        parked = PARKED_PREFIX + secrets.token_hex(8)
        try:
            rename_noreplace(dir_fd, name, dir_fd, parked)
        except FileExistsError:
            continue
        return parked

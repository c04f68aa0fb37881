"""Folder, move, copy, trash, empty trash and delete, as the instance's user, inside :mod:`.paths`' drives.

Every operation works on directory fds that :class:`~.paths.Drives` opened component by
component, so no path is resolved twice and no symbolic link is followed: a link inside a
tree is moved, copied (as a new link with the same target text) or deleted as itself.
The functions block; the views run them in a thread.

Conflicts follow :mod:`.conflicts`: REJECT is 409; RENAME picks ``name(1).ext``, ...;
REPLACE removes what had the name (only once the new entry is complete); MERGE_RENAME
merges a folder into a folder (inner conflicts renamed) and is RENAME otherwise. A copy
is written under a hidden name next to its target and only then given its name, so no
half-written file ever carries a real name. A move is one ``rename`` on one file system
and a copy, then a delete, across two.

Trash is the drive root's ``Trash`` folder (made when first needed); trashing what is
already in it deletes it for good.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from ucim.common.protocol import WriteConflictPolicy
from ucim.user_sidecar.conflicts import ConflictError, candidates, place, remove
from ucim.user_sidecar.files import TRASH_FOLDER
from ucim.user_sidecar.paths import Drives, FileId, Identity, PathRefusedError, identity, refusal

# Where a copy is built before it gets its name.
COPY_PREFIX: Final = ".ucim-copy-"
_CHUNK: Final = 1 << 30
_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a name swapped for a FIFO after the lstat must not hang the open; fstat then tells.
_OPEN_FILE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# copy_file_range cannot do it (old kernel, two file systems, a special file system): sendfile can.
_NO_COPY_FILE_RANGE: Final = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """OSError as the readable refusal the caller answers with; EEXIST and ENOTEMPTY are conflicts.

    Inside a tree the OS names the entry it failed on (relative to a folder fd): it is added.
    """
    try:
        yield
    except OSError as error:
        where = what
        if isinstance(error.filename, str) and error.filename not in (".", what.rpartition("/")[2]):
            where = f"{what} (at {error.filename!r})"
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ConflictError(f"{where}: {os.strerror(error.errno)}") from error
        raise refusal(error, where) from error


def _refuse_root(file_id: FileId, action: str) -> None:
    if file_id.is_root:
        raise PathRefusedError(f"cannot {action} {file_id.ucloud_id}: it is the root of drive {file_id.drive}")


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@contextmanager
def _open_dir(dir_fd: int, name: str) -> Iterator[int]:
    fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


# --- folder -------------------------------------------------------------------


def create_folder(drives: Drives, folder: FileId, policy: WriteConflictPolicy) -> FileId:
    """Make ``folder`` (mode 0o777 less the umask); its id (RENAME may pick another name)."""
    _refuse_root(folder, "create")
    with drives.open_parent(folder) as (parent, name), _os_errors(folder.ucloud_id):
        return folder.with_name(make_folder(parent, name, policy))


def make_folder(parent: int, name: str, policy: WriteConflictPolicy) -> str:
    """Make the folder ``name`` in ``parent`` under ``policy`` (REPLACE, MERGE_RENAME keep a folder there); its name."""
    if policy == "RENAME":
        return _mkdir_fresh(parent, name)
    try:
        os.mkdir(name, 0o777, dir_fd=parent)
    except FileExistsError:
        if policy == "REJECT":
            raise ConflictError(f"{name!r} already exists") from None
    else:
        return name
    there = _lstat(parent, name)
    if there is None:
        return make_folder(parent, name, policy)  # gone meanwhile: again
    if stat.S_ISDIR(there.st_mode):
        return name  # REPLACE and MERGE_RENAME: the folder is there, nothing to do
    if policy == "REPLACE":
        os.unlink(name, dir_fd=parent)
        return make_folder(parent, name, policy)
    return _mkdir_fresh(parent, name)  # MERGE_RENAME onto a file: a folder of its own


def _mkdir_fresh(parent: int, name: str) -> str:
    for candidate in itertools.chain([name], candidates(name)):  # lazily: there are RENAME_LIMIT of them
        try:
            os.mkdir(candidate, 0o777, dir_fd=parent)
        except FileExistsError:
            continue
        return candidate
    raise ConflictError(f"{name!r} and every numbered name after it are taken")


# --- move and copy ------------------------------------------------------------


def move(drives: Drives, source: FileId, target: FileId, policy: WriteConflictPolicy) -> FileId:
    """Move ``source`` to ``target`` (any drives of the request); the id it got."""
    return _move_or_copy(drives, source, target, policy, keep_source=False)


def copy(drives: Drives, source: FileId, target: FileId, policy: WriteConflictPolicy) -> FileId:
    """Copy ``source`` (a file, a link or a whole tree) to ``target``; the id the copy got."""
    return _move_or_copy(drives, source, target, policy, keep_source=True)


def _move_or_copy(
    drives: Drives, source: FileId, target: FileId, policy: WriteConflictPolicy, *, keep_source: bool
) -> FileId:
    action = "copy" if keep_source else "move"
    if not keep_source:
        _refuse_root(source, action)
    _refuse_root(target, f"{action} onto")
    lineage: list[Identity] = []
    with (
        drives.open_parent(source) as (src_fd, src_name),
        drives.open_folder(target.parent, lineage=lineage) as dst_fd,
    ):
        with _os_errors(source.ucloud_id):
            src = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
        if stat.S_ISDIR(src.st_mode) and identity(src) in lineage:
            raise PathRefusedError(f"cannot {action} {source.ucloud_id} into itself ({target.ucloud_id})")
        with _os_errors(f"{source.ucloud_id} -> {target.ucloud_id}"):
            name = _transfer(src_fd, src_name, dst_fd, target.parts[-1], policy, keep_source=keep_source)
        return target.with_name(name)


def _transfer(
    src_fd: int, src_name: str, dst_fd: int, dst_name: str, policy: WriteConflictPolicy, *, keep_source: bool
) -> str:
    """Move or copy one entry into ``dst_fd`` under ``policy``; the name it got there."""
    src = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
    dst = _lstat(dst_fd, dst_name)
    if dst is not None and identity(dst) == identity(src) and policy != "RENAME":
        if policy == "REJECT":
            raise ConflictError(f"{dst_name!r} already exists")
        if not keep_source and (identity(os.fstat(src_fd)), src_name) != (identity(os.fstat(dst_fd)), dst_name):
            os.unlink(src_name, dir_fd=src_fd)  # a second hard link of the file that is already there
        return dst_name  # REPLACE or MERGE_RENAME with itself: nothing to do
    if policy == "MERGE_RENAME" and dst is not None and stat.S_ISDIR(src.st_mode) and stat.S_ISDIR(dst.st_mode):
        _merge(src_fd, src_name, dst_fd, dst_name, keep_source=keep_source)
        return dst_name
    if not keep_source and src.st_dev == os.fstat(dst_fd).st_dev:
        try:
            return place(src_fd, src_name, dst_fd, dst_name, policy)
        except OSError as error:
            if error.errno != errno.EXDEV:  # one device number, two mounts (a bind mount): copy
                raise
    built = _copy_to_hidden_name(src_fd, src_name, src, dst_fd)
    try:
        name = place(dst_fd, built, dst_fd, dst_name, policy)
    except BaseException:
        remove(dst_fd, built)
        raise
    if not keep_source:
        remove(src_fd, src_name)
    return name


def _merge(src_fd: int, src_name: str, dst_fd: int, dst_name: str, *, keep_source: bool) -> None:
    """Move or copy what is in folder ``src_name`` into folder ``dst_name``; inner conflicts renamed."""
    with _open_dir(src_fd, src_name) as inner_src, _open_dir(dst_fd, dst_name) as inner_dst:
        with os.scandir(inner_src) as listing:
            names = [entry.name for entry in listing]
        for name in names:
            _transfer(inner_src, name, inner_dst, name, "MERGE_RENAME", keep_source=keep_source)
    if not keep_source:
        os.rmdir(src_name, dir_fd=src_fd)


def _copy_to_hidden_name(src_fd: int, src_name: str, src: os.stat_result, dst_fd: int) -> str:
    """A complete copy of ``src_name`` in ``dst_fd`` under a fresh hidden name; that name."""
    while True:
        hidden = COPY_PREFIX + secrets.token_hex(8)
        if _lstat(dst_fd, hidden) is None:
            break
    try:
        _copy_entry(src_fd, src_name, src, dst_fd, hidden, skip=set())
    except BaseException:
        if _lstat(dst_fd, hidden) is not None:
            remove(dst_fd, hidden)
        raise
    return hidden


def _copy_entry(
    src_fd: int, src_name: str, src: os.stat_result, dst_fd: int, dst_name: str, *, skip: set[Identity]
) -> None:
    if stat.S_ISLNK(src.st_mode):
        os.symlink(os.readlink(src_name, dir_fd=src_fd), dst_name, dir_fd=dst_fd)
        os.utime(dst_name, ns=(src.st_atime_ns, src.st_mtime_ns), dir_fd=dst_fd, follow_symlinks=False)
    elif stat.S_ISREG(src.st_mode):
        _copy_file(src_fd, src_name, src, dst_fd, dst_name)
    elif stat.S_ISDIR(src.st_mode):
        _copy_folder(src_fd, src_name, src, dst_fd, dst_name, skip=skip)
    # Sockets, FIFOs and devices hold no data and a user could not make most of them: left out.


def _copy_file(src_fd: int, src_name: str, src: os.stat_result, dst_fd: int, dst_name: str) -> None:
    reader = os.open(src_name, _OPEN_FILE, dir_fd=src_fd)
    try:
        opened = os.fstat(reader)
        if not stat.S_ISREG(opened.st_mode):
            return  # swapped for something else since it was listed
        writer = os.open(dst_name, _NEW_FILE, 0o600, dir_fd=dst_fd)
        try:
            _copy_data(reader, writer)
            os.fchmod(writer, stat.S_IMODE(opened.st_mode))
            os.utime(writer, ns=(opened.st_atime_ns, opened.st_mtime_ns))
        finally:
            os.close(writer)
    finally:
        os.close(reader)


def _copy_data(reader: int, writer: int) -> None:
    try:
        while os.copy_file_range(reader, writer, _CHUNK):
            pass
    except OSError as error:
        if error.errno not in _NO_COPY_FILE_RANGE:
            raise
        # Both offsets moved together, so sendfile goes on from wherever copy_file_range stopped.
        while os.sendfile(writer, reader, None, _CHUNK):
            pass


def _copy_folder(
    src_fd: int, src_name: str, src: os.stat_result, dst_fd: int, dst_name: str, *, skip: set[Identity]
) -> None:
    os.mkdir(dst_name, 0o700, dir_fd=dst_fd)
    with _open_dir(src_fd, src_name) as inner_src, _open_dir(dst_fd, dst_name) as inner_dst:
        # The copy being built may sit inside its source (checked before, but a rename can race):
        # it is never copied into itself.
        skip.add(identity(os.fstat(inner_dst)))
        with os.scandir(inner_src) as listing:
            entries = list(listing)
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing
            if identity(st) not in skip:
                _copy_entry(inner_src, entry.name, st, inner_dst, entry.name, skip=skip)
        # Last, so a read-only folder is still writable while it fills.
        os.fchmod(inner_dst, stat.S_IMODE(src.st_mode))
        os.utime(inner_dst, ns=(src.st_atime_ns, src.st_mtime_ns))


# --- trash and delete ---------------------------------------------------------


def trash(drives: Drives, file_id: FileId) -> FileId | None:
    """Move ``file_id`` into its drive's Trash (always RENAME); what is in Trash already is deleted.

    The id in Trash, or None when it was deleted for good.
    """
    _refuse_root(file_id, "trash")
    if file_id.parts[0] == TRASH_FOLDER:
        if len(file_id.parts) == 1:
            raise PathRefusedError(f"{file_id.ucloud_id} is the trash folder; empty it instead")
        delete(drives, file_id)
        return None
    drives.lstat(file_id)  # refused before a Trash is made for it
    root = FileId(file_id.drive)
    # A file or a link named Trash is refused below, when it is opened as a folder.
    with (
        drives.open_folder(root) as root_fd,
        _os_errors(root.child(TRASH_FOLDER).ucloud_id),
        contextlib.suppress(FileExistsError),
    ):
        os.mkdir(TRASH_FOLDER, 0o777, dir_fd=root_fd)
    return move(drives, file_id, root.child(TRASH_FOLDER).child(file_id.parts[-1]), "RENAME")


def empty_trash(drives: Drives, folder: FileId) -> None:
    """Delete everything in the drive's Trash (``folder`` is the Trash or the drive's root), keep the folder."""
    if folder.is_root:
        with drives.open_folder(folder) as root_fd, _os_errors(folder.ucloud_id):
            if _lstat(root_fd, TRASH_FOLDER) is None:
                return  # nothing was ever trashed
        folder = folder.child(TRASH_FOLDER)
    elif folder.parts != (TRASH_FOLDER,):
        raise PathRefusedError(f"{folder.ucloud_id} is not a trash folder (that is /{folder.drive}/{TRASH_FOLDER})")
    with drives.open_folder(folder, listing=True) as trash_fd, _os_errors(folder.ucloud_id):
        with os.scandir(trash_fd) as listing:
            names = [entry.name for entry in listing]
        for name in names:
            with _os_errors(folder.child(name).ucloud_id):
                try:
                    remove(trash_fd, name)
                except FileNotFoundError:
                    continue


def delete(drives: Drives, file_id: FileId) -> None:
    """Remove a file, a link or a whole tree for good; links are removed, never followed."""
    _refuse_root(file_id, "delete")
    with drives.open_parent(file_id) as (parent, name), _os_errors(file_id.ucloud_id):
        remove(parent, name)

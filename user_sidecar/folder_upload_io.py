"""The file work of a folder upload: the folder, its subfolders, each file's partial file and its commit.

Every file is written into a file without a name in its target's folder (``O_TMPFILE``, 0600)
and linked under its name only once complete and fsynced (``_link``, under the conflict policy),
so a file cut off by an interrupted stream is never seen at all, not even after a crash, and
creating a file takes one directory operation instead of three. Where the file system has no
``O_TMPFILE`` (NFS, ...), the file is written as a CHUNKED upload's is: into a hidden partial file
(``.ucim-upload-<session>-<file id>.part``, ``O_NOFOLLOW``) put in place by ``conflicts.commit``,
and removed when the stream ends.

Entry paths come from the client: :func:`entry_parts` refuses what could leave the folder
(``..``, absolute paths, NUL, empty components) with ``paths.parse_id``'s rules, and
subfolders are walked from the upload's folder fd with ``O_NOFOLLOW`` on every step, so a
symbolic link planted in the target (as a folder or as a file's name) is never followed: a
file below it is refused, a link in a file's place is a name taken like any other.

Everything here blocks: call it from a worker thread, a batch of files per call.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from ucim.common.file_writes import pwrite_all
from ucim.common.protocol import WriteConflictPolicy
from ucim.common.upload_frames import Entry
from ucim.user_sidecar.conflicts import PARKED_PREFIX, ConflictError, candidates, commit
from ucim.user_sidecar.fileops import make_folder
from ucim.user_sidecar.paths import PathRefusedError, parse_id, refusal
from ucim.user_sidecar.transfer_io import sync_folder
from ucim.user_sidecar.transfer_plans import PARTIAL_PREFIX, PARTIAL_SUFFIX
from ucim.user_sidecar.transfer_sessions import FolderUploadSession

# A file already there with the same size and a modification time this close is not sent again (IM2's rule):
# a client that reconnects to its session resumes where it was.
SAME_FILE_SECONDS: Final = 60.0
# The fsyncs of a batch of finished files run side by side in these threads (started when first needed).
_SYNCS: Final = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ucim-fsync")
# Subfolder fds kept open for the files still to come (least recently used ones are closed first).
FOLDER_CACHE: Final = 128
_WALK: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_UNNAMED: Final = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_OPEN_PARTIAL: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_INTERNAL: Final = (PARTIAL_PREFIX, PARKED_PREFIX)
# A file's conflict policy inside the folder: MERGE_RENAME's merging is the folder's, its files are renamed.
_FILE_POLICY: Final[dict[WriteConflictPolicy, WriteConflictPolicy]] = {
    "REJECT": "REJECT",
    "RENAME": "RENAME",
    "MERGE_RENAME": "RENAME",
    "REPLACE": "REPLACE",
}


def entry_parts(path: str) -> tuple[str, ...]:
    """The components of a listing's path, or PathRefusedError for one that could leave the folder."""
    if path.startswith("/"):
        raise PathRefusedError("an absolute path")
    parts = parse_id(f"/_/{path}").parts
    if not parts:
        raise PathRefusedError("an empty path")
    if parts[-1].startswith(_INTERNAL):
        raise PathRefusedError(f"{parts[-1][:40]!r}: names starting with {PARTIAL_PREFIX} are the provider's own")
    return parts


# --- the upload's folder ---------------------------------------------------------


def open_top(session: FolderUploadSession) -> tuple[int, str]:
    """The upload's folder, made under the session's policy at the first connection: (fd, its name).

    As ``files/folder`` makes one: REJECT a fresh folder, RENAME the first free name after the one asked
    for, MERGE_RENAME and REPLACE merge into the folder of that name (when a file has it, MERGE_RENAME takes
    a numbered name and REPLACE replaces the file; ``files/upload`` refused that already, unless it came since).
    """
    location = session.location
    shown = location.file_id.ucloud_id
    with location.drives().open_folder(location.folder) as parent:
        name = session.folder_name or _make_top(parent, location.parts[-1], session.conflict_policy, shown)
        try:
            return os.open(name, _WALK, dir_fd=parent), name
        except OSError as error:
            if error.errno in (errno.ENOTDIR, errno.ELOOP):
                why = f"{shown} is not a folder (or is a link); the upload does not write through it"
                raise ConflictError(why) from error
            raise refusal(error, shown) from error


def _make_top(parent: int, name: str, policy: WriteConflictPolicy, shown: str) -> str:
    try:
        return make_folder(parent, name, policy)  # as files/folder makes a folder
    except OSError as error:
        raise refusal(error, shown) from error


class Folders:
    """The upload's folder and the subfolders the files need: made when missing, walked without links."""

    def __init__(self, top_fd: int) -> None:
        self._top = top_fd
        self._cache: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def fd(self, parts: tuple[str, ...]) -> int:
        """A new fd of the subfolder ``parts`` (the caller closes it)."""
        if not parts:
            return os.dup(self._top)
        cached = self._cache.get(parts)
        if cached is not None:
            self._cache.move_to_end(parts)
            return os.dup(cached)
        parent = self.fd(parts[:-1])
        try:
            child = _subfolder(parent, parts[-1], "/".join(parts))
        finally:
            os.close(parent)
        self._cache[parts] = child
        if len(self._cache) > FOLDER_CACHE:
            os.close(self._cache.popitem(last=False)[1])
        return os.dup(child)

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self._top)


def _subfolder(parent: int, name: str, shown: str) -> int:
    try:
        os.mkdir(name, 0o777, dir_fd=parent)
    except FileExistsError:
        pass  # merged into; a link or a file there is refused below
    except OSError as error:
        raise refusal(error, shown) from error
    try:
        return os.open(name, _WALK, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise PathRefusedError(f"{shown} is not a folder (or is a link)") from error
        raise refusal(error, shown) from error


# --- one file --------------------------------------------------------------------


@dataclass
class OpenedFile:
    """A file being received: its partial file in its folder, and the name it is to get."""

    folder_fd: int
    fd: int
    partial: str | None  # None: the file has no name yet (O_TMPFILE)
    name: str
    shown: str
    written: int = 0  # bytes on disk, from the start of the file
    pending: list[bytes | memoryview] = field(default_factory=list)  # received, not yet written


@dataclass(frozen=True)
class Outcome:
    """What became of a file: ``name`` it got, or ``skipped`` (and why; "" when the same file is there)."""

    name: str | None = None
    why: str | None = None


def open_file(
    folders: Folders, entry: Entry, policy: WriteConflictPolicy, partial: str, max_bytes: int
) -> OpenedFile | Outcome:
    """The file's partial file, opened; or why it is not written (an Outcome)."""
    found = _folder_of(folders, entry, max_bytes)
    if isinstance(found, Outcome):
        return found
    folder_fd, name, shown = found
    try:
        skip = _existing(folder_fd, name, entry, policy, shown)
        if skip is not None:
            os.close(folder_fd)
            return skip
        fd = _unnamed(folder_fd)
        if fd is not None:
            return OpenedFile(folder_fd, fd, None, name, shown)
        fd = os.open(partial, _OPEN_PARTIAL, 0o600, dir_fd=folder_fd)
    except OSError as error:
        os.close(folder_fd)
        return Outcome(why=str(refusal(error, shown)))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        os.close(folder_fd)
        return Outcome(why=f"{shown}: its partial file {partial} is not the upload's")
    return OpenedFile(folder_fd, fd, partial, name, shown)


def _unnamed(folder_fd: int) -> int | None:
    """A new file without a name in the folder, or None where the file system cannot make one."""
    try:
        return os.open(".", _OPEN_UNNAMED, 0o600, dir_fd=folder_fd)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _link(file: OpenedFile, policy: WriteConflictPolicy) -> str:
    """Give the finished file its name under ``policy`` (the conflicts module's rules); the name it got."""
    if file.partial is not None:
        return commit(file.folder_fd, file.partial, file.folder_fd, file.name, policy)
    source = f"/proc/self/fd/{file.fd}"  # linkat(AT_SYMLINK_FOLLOW) of an O_TMPFILE file, as open(2) shows
    if policy == "REPLACE":
        # A link cannot replace: the file takes a hidden name first, and a rename replaces atomically.
        file.partial = f"{PARTIAL_PREFIX}{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        os.link(source, file.partial, dst_dir_fd=file.folder_fd, follow_symlinks=True)
        return commit(file.folder_fd, file.partial, file.folder_fd, file.name, policy)
    names = [file.name] if policy == "REJECT" else itertools.chain([file.name], candidates(file.name))
    for name in names:
        try:
            os.link(source, name, dst_dir_fd=file.folder_fd, follow_symlinks=True)
        except FileExistsError:
            continue
        return name
    raise ConflictError(
        f"{file.name!r} already exists"
        if policy == "REJECT"
        else f"{file.name!r} and the numbered names after it are taken"
    )


def _folder_of(folders: Folders, entry: Entry, max_bytes: int) -> tuple[int, str, str] | Outcome:
    """(an fd of the entry's folder, made if missing; its name; its path as shown), or why it is refused."""
    try:
        parts = entry_parts(entry.path)
    except PathRefusedError as error:
        return Outcome(why=f"{entry.path[:200]!r} is refused: {error}")
    shown = "/".join(parts)
    if entry.size > max_bytes:
        return Outcome(why=f"{shown} is larger than the {max_bytes} bytes an upload may hold")
    try:
        return folders.fd(parts[:-1]), parts[-1], shown
    except PathRefusedError as error:
        return Outcome(why=str(error))


def _existing(folder_fd: int, name: str, entry: Entry, policy: WriteConflictPolicy, shown: str) -> Outcome | None:
    """An Outcome when the file need not or must not be written because of what has its name."""
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if (
        stat.S_ISREG(st.st_mode)
        and st.st_size == entry.size
        and abs(st.st_mtime - entry.modified_at / 1000) < (SAME_FILE_SECONDS)
    ):
        return Outcome(why="")
    if policy == "REJECT":
        return Outcome(why=f"{shown} already exists")
    if policy == "REPLACE" and stat.S_ISDIR(st.st_mode):
        return Outcome(why=f"{shown} is a folder; a file cannot replace it")
    return None


def write(file: OpenedFile) -> int:
    """Write what is pending; the bytes written."""
    pieces, file.pending = file.pending, []
    try:
        count = pwrite_all(file.fd, pieces, file.written)
    except OSError as error:
        raise refusal(error, file.shown) from error
    file.written += count
    return count


def finish_all(files: Sequence[tuple[OpenedFile, Entry]], policy: WriteConflictPolicy, mode: int) -> list[Outcome]:
    """Finish complete files: write the rest, the client's mtime, the user's mode; fsync; put each in place.

    The fsyncs of a batch run side by side (``_SYNCS``): ext4 and xfs then commit their journal once
    for many files, where one after the other each file waits for a commit of its own. Then each name
    is made durable with one fsync per folder, not per file. Every file is closed (a failed one removed).
    """
    outcomes: dict[int, Outcome] = {}
    prepared = []
    for index, (file, entry) in enumerate(files):
        try:
            write(file)
            mtime_ns = entry.modified_at * 1_000_000
            os.utime(file.fd, ns=(mtime_ns, mtime_ns))
            os.fchmod(file.fd, mode)
        except (PathRefusedError, OSError) as error:
            outcomes[index] = _failed(file, error)
            continue
        prepared.append(index)
    synced = list(_SYNCS.map(_fsync, [files[index][0].fd for index in prepared]))
    folders: dict[tuple[int, int], int] = {}
    try:
        for index, sync_error in zip(prepared, synced, strict=True):
            file = files[index][0]
            try:
                if sync_error is not None:
                    raise sync_error
                _remember(folders, file.folder_fd)
                name = _link(file, _FILE_POLICY[policy])
            except (PathRefusedError, OSError) as failure:
                outcomes[index] = _failed(file, failure)
                continue
            close(file)
            outcomes[index] = Outcome(name=name)
        for fd in folders.values():
            sync_folder(fd)
    finally:
        for fd in folders.values():
            os.close(fd)
    return [outcomes[index] for index in range(len(files))]


def _fsync(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as error:
        return error
    return None


def _remember(folders: dict[tuple[int, int], int], folder_fd: int) -> None:
    st = os.fstat(folder_fd)
    if (st.st_dev, st.st_ino) not in folders:
        folders[st.st_dev, st.st_ino] = os.dup(folder_fd)


def _failed(file: OpenedFile, error: PathRefusedError | OSError) -> Outcome:
    """A file that could not be finished: removed, and why."""
    discard(file)
    why = str(error) if isinstance(error, PathRefusedError) else str(refusal(error, file.shown))
    return Outcome(why=f"{file.shown}: {why}" if isinstance(error, ConflictError) else why)


def discard(file: OpenedFile) -> None:
    """Remove the partial file of a file that will not be finished (an unnamed one goes with its fd); close it."""
    if file.partial is not None:
        with contextlib.suppress(OSError):
            st = os.stat(file.partial, dir_fd=file.folder_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == _identity(file.fd):
                os.unlink(file.partial, dir_fd=file.folder_fd)
    close(file)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def close(file: OpenedFile) -> None:
    for fd in (file.fd, file.folder_fd):
        with contextlib.suppress(OSError):
            os.close(fd)
    file.fd = file.folder_fd = -1


def partial_name(session_key: str, file_id: int) -> str:
    """A file's partial file: the session's and the file's own, so a reconnection reuses (truncates) it."""
    return f"{PARTIAL_PREFIX}{session_key[:16]}-{file_id & 0xFFFFFFFF:08x}{PARTIAL_SUFFIX}"

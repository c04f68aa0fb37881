"""Folder, move, copy, trash, empty trash and delete, with every conflict policy, on temporary drives."""

from __future__ import annotations

import errno
import getpass
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from ucim.common.protocol import Drive, WriteConflictPolicy
from ucim.user_sidecar import conflicts, fileops
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.conflicts import ConflictError
from ucim.user_sidecar.paths import (
    REMEMBERED_DRIVES,
    DriveResolver,
    Drives,
    FileId,
    PathNotFoundError,
    PathRefusedError,
    parse_id,
)
from ucim.user_sidecar.settings import SidecarSettings

POLICIES: list[WriteConflictPolicy] = ["REJECT", "RENAME", "REPLACE", "MERGE_RENAME"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the drive that no operation may touch through a link."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret").write_text("secret")
    return folder


@pytest.fixture
def shm() -> Iterator[Path]:
    """A second drive on another file system (tmpfs), when the machine has one."""
    base = Path("/dev/shm")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("no writable /dev/shm")
    folder = base / f"ucim-test-{os.getpid()}-{os.urandom(4).hex()}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def drives(home: Path) -> Drives:
    return Drives({"home": home})


def fid(text: str) -> FileId:
    return parse_id(text)


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: files by content, folders as "/", links as "-> target"."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {path.readlink()}"
        elif path.is_dir():
            found[name] = "/"
        else:
            found[name] = path.read_text()
    return found


def make(root: Path, layout: dict[str, str]) -> None:
    for name, content in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "/":
            path.mkdir(exist_ok=True)
        elif content.startswith("-> "):
            path.symlink_to(content[3:])
        else:
            path.write_text(content)


def no_leftovers(root: Path) -> None:
    hidden = [p for p in root.rglob(".ucim-*")]
    assert hidden == [], hidden


# --- folder -------------------------------------------------------------------


def test_a_folder_gets_the_umask_mode(drives: Drives, home: Path) -> None:
    umask = os.umask(0o022)
    try:
        assert fileops.create_folder(drives, fid("/home/new"), "REJECT") == fid("/home/new")
        assert stat.S_IMODE((home / "new").stat().st_mode) == 0o755
        os.umask(0o007)
        fileops.create_folder(drives, fid("/home/new/inner"), "REJECT")
        assert stat.S_IMODE((home / "new" / "inner").stat().st_mode) == 0o770
    finally:
        os.umask(umask)


def test_folder_policies_on_an_existing_folder(drives: Drives, home: Path) -> None:
    make(home, {"data/kept.txt": "kept", "a.b/": "/"})
    with pytest.raises(ConflictError, match="'data' already exists") as caught:
        fileops.create_folder(drives, fid("/home/data"), "REJECT")
    assert caught.value.status == 409
    assert fileops.create_folder(drives, fid("/home/data"), "RENAME") == fid("/home/data(1)")
    assert fileops.create_folder(drives, fid("/home/data"), "RENAME") == fid("/home/data(2)")
    assert fileops.create_folder(drives, fid("/home/a.b"), "RENAME") == fid("/home/a(1).b")
    assert fileops.create_folder(drives, fid("/home/data"), "REPLACE") == fid("/home/data")
    assert fileops.create_folder(drives, fid("/home/data"), "MERGE_RENAME") == fid("/home/data")
    assert (home / "data" / "kept.txt").read_text() == "kept"


def test_folder_policies_on_an_existing_file(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"f": "file", ".cfg": "dotfile", "link": f"-> {outside}"})
    with pytest.raises(ConflictError):
        fileops.create_folder(drives, fid("/home/f"), "REJECT")
    assert fileops.create_folder(drives, fid("/home/.cfg"), "RENAME") == fid("/home/.cfg(1)")
    assert fileops.create_folder(drives, fid("/home/f"), "MERGE_RENAME") == fid("/home/f(1)")
    assert (home / "f").read_text() == "file"
    assert fileops.create_folder(drives, fid("/home/f"), "REPLACE") == fid("/home/f")
    assert (home / "f").is_dir()
    # A link by that name is replaced itself; what it points to is untouched.
    assert fileops.create_folder(drives, fid("/home/link"), "REPLACE") == fid("/home/link")
    assert not (home / "link").is_symlink()
    assert tree(outside) == {"secret": "secret"}


def test_folder_refusals(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"link": f"-> {outside}", "file": "x"})
    with pytest.raises(PathNotFoundError, match="/home/missing does not exist"):
        fileops.create_folder(drives, fid("/home/missing/new"), "REJECT")
    with pytest.raises(PathRefusedError, match="/home/link is a symbolic link; links are not followed"):
        fileops.create_folder(drives, fid("/home/link/new"), "REJECT")
    with pytest.raises(PathRefusedError, match="/home/file is not a folder"):
        fileops.create_folder(drives, fid("/home/file/new"), "REJECT")
    with pytest.raises(PathRefusedError, match="it is the root of drive home"):
        fileops.create_folder(drives, fid("/home"), "REPLACE")
    assert tree(outside) == {"secret": "secret"}


# --- move ---------------------------------------------------------------------


def test_a_move_is_a_rename(drives: Drives, home: Path) -> None:
    make(home, {"a.txt": "a", "dir/": "/"})
    inode = (home / "a.txt").stat().st_ino
    assert fileops.move(drives, fid("/home/a.txt"), fid("/home/dir/b.txt"), "REJECT") == fid("/home/dir/b.txt")
    assert tree(home) == {"dir": "/", "dir/b.txt": "a"}
    assert (home / "dir" / "b.txt").stat().st_ino == inode


@pytest.mark.parametrize(
    ("name", "renamed"),
    [("report.txt", "report(1).txt"), ("README", "README(1)"), (".bashrc", ".bashrc(1)"), ("a.tar.gz", "a.tar(1).gz")],
)
def test_move_rename_picks_a_numbered_name(drives: Drives, home: Path, name: str, renamed: str) -> None:
    make(home, {f"src/{name}": "new", name: "old"})
    assert fileops.move(drives, fid(f"/home/src/{name}"), fid(f"/home/{name}"), "RENAME") == fid(f"/home/{renamed}")
    assert tree(home) == {"src": "/", name: "old", renamed: "new"}


def test_move_reject_leaves_both(drives: Drives, home: Path) -> None:
    make(home, {"src/x": "new", "x": "old"})
    with pytest.raises(ConflictError, match="'x' already exists"):
        fileops.move(drives, fid("/home/src/x"), fid("/home/x"), "REJECT")
    assert tree(home) == {"src": "/", "src/x": "new", "x": "old"}


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ({"s": "new"}, {"t": "old"}),
        ({"s": "new"}, {"t/": "/", "t/inner": "old"}),
        ({"s/": "/", "s/in": "new"}, {"t": "old"}),
        ({"s/": "/", "s/in": "new"}, {"t/": "/", "t/other": "old", "t/sub/deep": "old"}),
    ],
    ids=["file-over-file", "file-over-folder", "folder-over-file", "folder-over-folder"],
)
def test_move_replace_removes_what_was_there(
    drives: Drives, home: Path, source: dict[str, str], target: dict[str, str]
) -> None:
    make(home, {**source, **target})
    expected = {name.replace("s", "t", 1): content for name, content in tree(home).items() if name.startswith("s")}
    assert fileops.move(drives, fid("/home/s"), fid("/home/t"), "REPLACE") == fid("/home/t")
    assert tree(home) == expected
    no_leftovers(home)


def test_move_merge_rename_merges_folders_recursively(drives: Drives, home: Path) -> None:
    make(
        home,
        {
            "src/a.txt": "new a",
            "src/only-new": "n",
            "src/sub/deep.txt": "new deep",
            "src/sub/fresh": "f",
            "src/clash/": "/",
            "dst/a.txt": "old a",
            "dst/sub/deep.txt": "old deep",
            "dst/clash": "a file where src has a folder",
        },
    )
    assert fileops.move(drives, fid("/home/src"), fid("/home/dst"), "MERGE_RENAME") == fid("/home/dst")
    assert tree(home) == {
        "dst": "/",
        "dst/a.txt": "old a",
        "dst/a(1).txt": "new a",
        "dst/only-new": "n",
        "dst/sub": "/",
        "dst/sub/deep.txt": "old deep",
        "dst/sub/deep(1).txt": "new deep",
        "dst/sub/fresh": "f",
        "dst/clash": "a file where src has a folder",
        "dst/clash(1)": "/",
    }


def test_move_merge_rename_of_a_file_is_rename(drives: Drives, home: Path) -> None:
    make(home, {"a": "new", "b": "old"})
    assert fileops.move(drives, fid("/home/a"), fid("/home/b"), "MERGE_RENAME") == fid("/home/b(1)")
    assert tree(home) == {"b": "old", "b(1)": "new"}


@pytest.mark.parametrize("target", ["/home/dir", "/home/dir/sub", "/home/dir/sub/deeper"])
def test_a_folder_is_never_moved_or_copied_into_itself(drives: Drives, home: Path, target: str) -> None:
    make(home, {"dir/sub/deeper/": "/", "dir/file": "x"})
    for operation in (fileops.move, fileops.copy):
        with pytest.raises(PathRefusedError, match=f"into itself \\({target}/x\\)"):
            operation(drives, fid("/home/dir"), fid(f"{target}/x"), "RENAME")
    assert tree(home) == {"dir": "/", "dir/sub": "/", "dir/sub/deeper": "/", "dir/file": "x"}


def test_into_itself_is_found_through_another_drive_on_the_same_folder(home: Path) -> None:
    make(home, {"dir/sub/": "/"})
    drives = Drives({"home": home, "alias": home / "dir"})
    with pytest.raises(PathRefusedError, match="into itself"):
        fileops.copy(drives, fid("/home/dir"), fid("/alias/sub/x"), "RENAME")
    with pytest.raises(PathRefusedError, match="into itself"):
        fileops.copy(drives, fid("/alias"), fid("/home/dir/copy"), "RENAME")


@pytest.mark.parametrize("operation", [fileops.move, fileops.copy])
def test_onto_itself(drives: Drives, home: Path, operation: Callable[..., FileId]) -> None:
    make(home, {"dir/file": "x", "f.txt": "f"})
    for name in ("dir", "f.txt"):
        with pytest.raises(ConflictError):
            operation(drives, fid(f"/home/{name}"), fid(f"/home/{name}"), "REJECT")
        assert operation(drives, fid(f"/home/{name}"), fid(f"/home/{name}"), "REPLACE") == fid(f"/home/{name}")
        assert operation(drives, fid(f"/home/{name}"), fid(f"/home/{name}"), "MERGE_RENAME") == fid(f"/home/{name}")
    assert tree(home) == {"dir": "/", "dir/file": "x", "f.txt": "f"}
    assert operation(drives, fid("/home/f.txt"), fid("/home/f.txt"), "RENAME") == fid("/home/f(1).txt")


def test_drive_roots_cannot_be_moved_deleted_or_trashed(drives: Drives, home: Path) -> None:
    make(home, {"a": "a"})
    calls: list[Callable[[], object]] = [
        lambda: fileops.move(drives, fid("/home"), fid("/home/a/x"), "RENAME"),
        lambda: fileops.move(drives, fid("/home/a"), fid("/home"), "REPLACE"),
        lambda: fileops.copy(drives, fid("/home/a"), fid("/home"), "REPLACE"),
        lambda: fileops.delete(drives, fid("/home")),
        lambda: fileops.trash(drives, fid("/home")),
    ]
    for call in calls:
        with pytest.raises(PathRefusedError, match="it is the root of drive home") as caught:
            call()
        assert caught.value.status == 400
    assert tree(home) == {"a": "a"}


def test_links_are_moved_as_themselves(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"link": f"-> {outside}", "rel": "-> ../outside/secret", "dir/": "/"})
    fileops.move(drives, fid("/home/link"), fid("/home/dir/link"), "REJECT")
    fileops.move(drives, fid("/home/rel"), fid("/home/dir/rel"), "REJECT")
    assert tree(home) == {"dir": "/", "dir/link": f"-> {outside}", "dir/rel": "-> ../outside/secret"}
    assert tree(outside) == {"secret": "secret"}


def test_a_link_as_a_path_component_is_refused(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"link": f"-> {outside}", "sib": "-> dir", "dir/a": "a"})
    calls: list[Callable[[], object]] = [
        lambda: fileops.move(drives, fid("/home/link/secret"), fid("/home/stolen"), "RENAME"),
        lambda: fileops.copy(drives, fid("/home/link/secret"), fid("/home/stolen"), "RENAME"),
        lambda: fileops.copy(drives, fid("/home/dir/a"), fid("/home/link/planted"), "RENAME"),
        lambda: fileops.move(drives, fid("/home/sib/a"), fid("/home/a"), "RENAME"),
        lambda: fileops.delete(drives, fid("/home/link/secret")),
        lambda: fileops.trash(drives, fid("/home/link/secret")),
        lambda: fileops.empty_trash(drives, fid("/home/link")),
    ]
    for call in calls:
        with pytest.raises(PathRefusedError, match=r"is a symbolic link|is not a trash folder"):
            call()
    assert tree(outside) == {"secret": "secret"}
    assert tree(home) == {"link": f"-> {outside}", "sib": "-> dir", "dir": "/", "dir/a": "a"}


def test_moves_between_two_drives(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "project"
    make(other, {"in.txt": "p"})
    drives = Drives({"home": home, "42": other})
    fileops.move(drives, fid("/42/in.txt"), fid("/home/in.txt"), "REJECT")
    assert tree(home) == {"in.txt": "p"}
    assert tree(other) == {}


def test_a_move_across_file_systems_copies_then_deletes(home: Path, shm: Path, outside: Path) -> None:
    if home.stat().st_dev == shm.stat().st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    layout = {"big.bin": "x" * 100_000, "dir/sub/a.txt": "a", "dir/link": f"-> {outside}", "dir/rel": "-> sub"}
    make(home, layout)
    (home / "dir" / "sub" / "a.txt").chmod(0o640)
    os.utime(home / "dir" / "sub" / "a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_001_000_000_000))
    drives = Drives({"home": home, "shm": shm})
    fileops.move(drives, fid("/home/big.bin"), fid("/shm/big.bin"), "REJECT")
    fileops.move(drives, fid("/home/dir"), fid("/shm/dir"), "REJECT")
    assert tree(home) == {}
    assert tree(shm) == {name: content for name, content in {**layout, "dir": "/", "dir/sub": "/"}.items()}
    moved = (shm / "dir" / "sub" / "a.txt").stat()
    assert (stat.S_IMODE(moved.st_mode), moved.st_mtime_ns) == (0o640, 1_600_000_001_000_000_000)
    assert tree(outside) == {"secret": "secret"}
    # And back, merging into a folder that is already there.
    make(home, {"dir/sub/a.txt": "old"})
    fileops.move(drives, fid("/shm/dir"), fid("/home/dir"), "MERGE_RENAME")
    assert tree(home)["dir/sub/a(1).txt"] == "a"
    assert tree(shm) == {"big.bin": "x" * 100_000}
    no_leftovers(home)


def test_a_rename_refused_with_exdev_falls_back_to_a_copy(
    drives: Drives, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One device number, two mounts (a bind mount): rename says EXDEV, the move still happens."""
    make(home, {"a/f": "f", "b/": "/"})
    real_place = conflicts.place

    def place(src_fd: int, src_name: str, dst_fd: int, dst_name: str, policy: WriteConflictPolicy) -> str:
        if not src_name.startswith(fileops.COPY_PREFIX):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_place(src_fd, src_name, dst_fd, dst_name, policy)

    monkeypatch.setattr(fileops, "place", place)
    fileops.move(drives, fid("/home/a"), fid("/home/b/a"), "REJECT")
    assert tree(home) == {"b": "/", "b/a": "/", "b/a/f": "f"}


# --- copy ---------------------------------------------------------------------


def test_a_copy_keeps_content_mode_and_mtime(drives: Drives, home: Path) -> None:
    make(home, {"a.bin": "payload" * 10_000})
    (home / "a.bin").chmod(0o751)
    os.utime(home / "a.bin", ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    assert fileops.copy(drives, fid("/home/a.bin"), fid("/home/b.bin"), "REJECT") == fid("/home/b.bin")
    copied, source = (home / "b.bin").stat(), (home / "a.bin").stat()
    assert (home / "b.bin").read_bytes() == (home / "a.bin").read_bytes()
    assert stat.S_IMODE(copied.st_mode) == 0o751
    assert copied.st_mtime_ns == 1_500_000_000_123_456_789
    assert copied.st_ino != source.st_ino


def test_a_tree_is_copied_with_its_links_as_links(drives: Drives, home: Path, outside: Path) -> None:
    make(
        home,
        {
            "src/a.txt": "a",
            "src/.hidden": "h",
            "src/empty/": "/",
            "src/sub/b.txt": "b",
            "src/to-outside": f"-> {outside}",
            "src/to-secret": "-> ../../outside/secret",
            "src/to-etc": "-> /etc",
            "src/dangling": "-> nowhere",
            "src/sub/up": "-> ..",
        },
    )
    (home / "src" / "sub").chmod(0o550)  # a read-only folder still gets its content
    os.utime(home / "src" / "sub", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))
    fileops.copy(drives, fid("/home/src"), fid("/home/copy"), "REJECT")
    source = tree(home / "src")
    assert tree(home / "copy") == source
    assert stat.S_IMODE((home / "copy" / "sub").stat().st_mode) == 0o550
    assert (home / "copy" / "sub").stat().st_mtime_ns == 1_400_000_000_000_000_000
    assert (home / "copy" / "to-outside").is_symlink()
    assert tree(outside) == {"secret": "secret"}
    no_leftovers(home)
    (home / "src" / "sub").chmod(0o750)
    (home / "copy" / "sub").chmod(0o750)


def test_special_files_are_left_out_of_a_copy(drives: Drives, home: Path) -> None:
    make(home, {"src/a": "a"})
    os.mkfifo(home / "src" / "fifo")
    fileops.copy(drives, fid("/home/src"), fid("/home/copy"), "REJECT")
    assert tree(home / "copy") == {"a": "a"}


@pytest.mark.parametrize("policy", POLICIES)
def test_copy_policies_onto_a_file(drives: Drives, home: Path, policy: WriteConflictPolicy) -> None:
    make(home, {"new.txt": "new", "old.txt": "old"})
    if policy == "REJECT":
        with pytest.raises(ConflictError):
            fileops.copy(drives, fid("/home/new.txt"), fid("/home/old.txt"), policy)
        assert tree(home) == {"new.txt": "new", "old.txt": "old"}
        return
    got = fileops.copy(drives, fid("/home/new.txt"), fid("/home/old.txt"), policy)
    if policy == "REPLACE":
        assert (got, tree(home)) == (fid("/home/old.txt"), {"new.txt": "new", "old.txt": "new"})
    else:
        assert (got, tree(home)) == (fid("/home/old(1).txt"), {"new.txt": "new", "old.txt": "old", "old(1).txt": "new"})
    no_leftovers(home)


OLD_DST = {"dst": "/", "dst/a": "old a", "dst/b": "/", "dst/b/c": "old c", "dst/z": "z"}
COPY_ONTO_FOLDER: dict[WriteConflictPolicy, tuple[str, dict[str, str]]] = {
    "RENAME": ("/home/dst(1)", {**OLD_DST, "dst(1)": "/", "dst(1)/a": "new a", "dst(1)/b": "/", "dst(1)/b/c": "new c"}),
    "REPLACE": ("/home/dst", {"dst": "/", "dst/a": "new a", "dst/b": "/", "dst/b/c": "new c"}),
    "MERGE_RENAME": ("/home/dst", {**OLD_DST, "dst/a(1)": "new a", "dst/b/c(1)": "new c"}),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_copy_policies_onto_a_folder(drives: Drives, home: Path, policy: WriteConflictPolicy) -> None:
    make(home, {"src/a": "new a", "src/b/c": "new c", "dst/a": "old a", "dst/b/c": "old c", "dst/z": "z"})
    source = {name: content for name, content in tree(home).items() if name.startswith("src")}
    if policy == "REJECT":
        with pytest.raises(ConflictError):
            fileops.copy(drives, fid("/home/src"), fid("/home/dst"), policy)
        assert tree(home) == {**source, **OLD_DST}
        return
    target, expected = COPY_ONTO_FOLDER[policy]
    assert fileops.copy(drives, fid("/home/src"), fid("/home/dst"), policy) == fid(target)
    assert tree(home) == {**source, **expected}
    no_leftovers(home)


def test_a_failed_copy_leaves_nothing_under_the_final_name(
    drives: Drives, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(home, {"src/a": "a", "src/b": "b" * 1000, "old": "old"})

    def copy_half(reader: int, writer: int) -> None:
        os.write(writer, os.read(reader, 10))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileops, "_copy_data", copy_half)
    for target, policy in [("/home/copy", "REJECT"), ("/home/old", "REPLACE")]:
        with pytest.raises(PathRefusedError, match="no space left") as caught:
            fileops.copy(drives, fid("/home/src"), fid(target), policy)  # type: ignore[arg-type]
        assert caught.value.status == 507
    assert tree(home) == {"src": "/", "src/a": "a", "src/b": "b" * 1000, "old": "old"}


def test_copy_falls_back_to_sendfile(drives: Drives, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(home, {"a": "0123456789" * 50_000})

    def unsupported(*_: Any) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    fileops.copy(drives, fid("/home/a"), fid("/home/b"), "REJECT")
    assert (home / "b").read_bytes() == (home / "a").read_bytes()


def test_a_copy_across_file_systems_and_drives(home: Path, shm: Path) -> None:
    make(home, {"dir/a": "a", "dir/l": "-> a"})
    drives = Drives({"home": home, "shm": shm})
    fileops.copy(drives, fid("/home/dir"), fid("/shm/dir"), "REJECT")
    assert tree(shm) == tree(home)
    fileops.copy(drives, fid("/home"), fid("/shm/whole-drive"), "REJECT")
    assert tree(shm / "whole-drive") == tree(home)


# --- trash --------------------------------------------------------------------


def test_trash_moves_into_the_drive_trash_and_renames(drives: Drives, home: Path) -> None:
    make(home, {"a.txt": "1", "dir/a.txt": "2", "dir/x/y": "y"})
    assert fileops.trash(drives, fid("/home/a.txt")) == fid("/home/Trash/a.txt")
    assert fileops.trash(drives, fid("/home/dir/a.txt")) == fid("/home/Trash/a(1).txt")
    assert fileops.trash(drives, fid("/home/dir")) == fid("/home/Trash/dir")
    assert tree(home) == {
        "Trash": "/",
        "Trash/a.txt": "1",
        "Trash/a(1).txt": "2",
        "Trash/dir": "/",
        "Trash/dir/x": "/",
        "Trash/dir/x/y": "y",
    }
    # What is in Trash already goes for good.
    assert fileops.trash(drives, fid("/home/Trash/dir/x")) is None
    assert fileops.trash(drives, fid("/home/Trash/a.txt")) is None
    assert tree(home) == {"Trash": "/", "Trash/a(1).txt": "2", "Trash/dir": "/"}


def test_trash_refusals(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"Trash/": "/", "a": "a"})
    with pytest.raises(PathRefusedError, match="is the trash folder; empty it instead"):
        fileops.trash(drives, fid("/home/Trash"))
    (home / "Trash").rmdir()
    (home / "Trash").symlink_to(outside)
    with pytest.raises(PathRefusedError, match="/home/Trash is a symbolic link"):
        fileops.trash(drives, fid("/home/a"))
    assert tree(outside) == {"secret": "secret"}
    assert (home / "a").read_text() == "a"


def test_empty_trash_keeps_the_folder_and_never_follows_links(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"Trash/a": "a", "Trash/dir/deep/x": "x", "Trash/link": f"-> {outside}", "Trash/.dot": "."})
    fileops.empty_trash(drives, fid("/home/Trash"))
    assert tree(home) == {"Trash": "/"}
    assert tree(outside) == {"secret": "secret"}
    make(home, {"Trash/b": "b"})
    fileops.empty_trash(drives, fid("/home"))
    assert tree(home) == {"Trash": "/"}


def test_empty_trash_without_trash_and_of_other_folders(drives: Drives, home: Path) -> None:
    make(home, {"other/a": "a"})
    fileops.empty_trash(drives, fid("/home"))  # never trashed anything: nothing to do
    with pytest.raises(PathRefusedError, match="/home/other is not a trash folder"):
        fileops.empty_trash(drives, fid("/home/other"))
    with pytest.raises(PathNotFoundError):
        fileops.empty_trash(drives, fid("/home/Trash"))
    assert tree(home) == {"other": "/", "other/a": "a"}


# --- delete -------------------------------------------------------------------


def test_delete_removes_files_links_and_trees(drives: Drives, home: Path, outside: Path) -> None:
    make(home, {"f": "f", "link": f"-> {outside}", "dir/sub/x": "x", "dir/l": f"-> {outside}", "keep": "k"})
    for name in ("f", "link", "dir"):
        fileops.delete(drives, fid(f"/home/{name}"))
    assert tree(home) == {"keep": "k"}
    assert tree(outside) == {"secret": "secret"}
    with pytest.raises(PathNotFoundError, match="/home/f does not exist"):
        fileops.delete(drives, fid("/home/f"))


# --- conflicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("a.txt", "a(1).txt"),
        ("README", "README(1)"),
        (".bashrc", ".bashrc(1)"),
        ("x.tar.gz", "x.tar(1).gz"),
        ("dot.", "dot(1)."),
    ],
)
def test_numbered_names(name: str, first: str) -> None:
    assert conflicts.numbered(name, 1) == first


@contextmanager
def folder_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("native", [True, False], ids=["renameat2", "fallback"])
def test_rename_noreplace_never_replaces(home: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    if not native:
        monkeypatch.setattr(conflicts, "_renameat2", None)
    make(home, {"a": "a", "b": "b", "d/": "/", "e/": "/"})
    with folder_fd(home) as fd:
        for src, dst in [("a", "b"), ("d", "e"), ("a", "d")]:
            with pytest.raises(FileExistsError):
                conflicts.rename_noreplace(fd, src, fd, dst)
        conflicts.rename_noreplace(fd, "a", fd, "c")
    assert tree(home) == {"b": "b", "c": "a", "d": "/", "e": "/"}


def test_commit_and_free_name(home: Path) -> None:
    make(home, {"part": "new", "f.txt": "old", "f(1).txt": "older"})
    with folder_fd(home) as fd:
        assert conflicts.free_name(fd, "f.txt") == "f(2).txt"
        assert conflicts.free_name(fd, "g") == "g"
        with pytest.raises(ConflictError):
            conflicts.commit(fd, "part", fd, "f.txt", "REJECT")
        assert conflicts.commit(fd, "part", fd, "f.txt", "RENAME") == "f(2).txt"
    assert tree(home) == {"f.txt": "old", "f(1).txt": "older", "f(2).txt": "new"}


def test_a_failed_replacement_puts_the_old_entry_back(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(home, {"new/x": "new", "old/y": "old"})
    real = conflicts.rename_noreplace

    def fail_on_the_new_name(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
        if src_name == "new":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(src_fd, src_name, dst_fd, dst_name)

    monkeypatch.setattr(conflicts, "rename_noreplace", fail_on_the_new_name)
    with folder_fd(home) as fd, pytest.raises(OSError, match="Input/output error"):
        conflicts.place(fd, "new", fd, "old", "REPLACE")
    assert tree(home) == {"new": "/", "new/x": "new", "old": "/", "old/y": "old"}


# --- the HTTP API -------------------------------------------------------------

Client = Any
USER = getpass.getuser()


def collection(drive_id: str = "home", locator: str = f"home:{USER}") -> dict[str, str]:
    return {"id": drive_id, "providerGeneratedId": locator}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, home: Path, tmp_path: Path) -> Client:
    (tmp_path / "projects" / "physics").mkdir(parents=True)
    roots = {"project": str(tmp_path / "projects" / "{name}")}
    return await aiohttp_client(init_app(SidecarSettings(user=USER, home=home, drive_roots=roots)))


async def call(client: Client, route: str, *items: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post(route, json={"items": list(items)})
    return response.status, await response.json()


async def test_every_endpoint_answers_one_empty_object_per_item(client: Client, home: Path, tmp_path: Path) -> None:
    drive = {"resolvedCollection": collection()}
    two = {"resolvedOldCollection": collection(), "resolvedNewCollection": collection()}
    status, body = await call(
        client,
        "/files/folder",
        {**drive, "id": "/home/a", "conflictPolicy": "REJECT"},
        {**drive, "id": "/home/a", "conflictPolicy": "RENAME"},
    )
    assert (status, body) == (200, {"responses": [{}, {}]})
    (home / "a" / "f.txt").write_text("f")
    calls = [
        ("/files/copy", {**two, "oldId": "/home/a", "newId": "/home/b", "conflictPolicy": "REJECT"}),
        ("/files/move", {**two, "oldId": "/home/b", "newId": "/home/a(1)/b", "conflictPolicy": "REJECT"}),
        ("/files/trash", {**drive, "id": "/home/a"}),
        ("/files/emptyTrash", {**drive, "id": "/home/Trash"}),
        ("/files/delete", {**drive, "id": "/home/a(1)", "specification": {"collection": "home"}}),
    ]
    for route, item in calls:
        status, body = await call(client, route, item)
        assert (status, body) == (200, {"responses": [{}]}), route
    assert tree(home) == {"Trash": "/"}
    status, body = await call(client, "/files/folder")
    assert status == 200


async def test_the_first_failing_item_ends_the_call_and_is_named(client: Client, home: Path) -> None:
    drive = {"resolvedCollection": collection()}
    (home / "taken").mkdir()
    status, body = await call(
        client,
        "/files/folder",
        {**drive, "id": "/home/first", "conflictPolicy": "REJECT"},
        {**drive, "id": "/home/taken", "conflictPolicy": "REJECT"},
        {**drive, "id": "/home/never", "conflictPolicy": "REJECT"},
    )
    assert (status, body["why"]) == (409, "Item 2 (/home/taken): 'taken' already exists")
    assert sorted(p.name for p in home.iterdir()) == ["first", "taken"]


async def test_moves_between_a_home_and_a_project_drive(client: Client, home: Path, tmp_path: Path) -> None:
    (home / "results.csv").write_text("1,2")
    item = {
        "resolvedOldCollection": collection("17"),
        "resolvedNewCollection": collection("42", "project:physics"),
        "oldId": "/17/results.csv",
        "newId": "/42/results.csv",
        "conflictPolicy": "REJECT",
    }
    assert await call(client, "/files/move", item) == (200, {"responses": [{}]})
    assert (tmp_path / "projects" / "physics" / "results.csv").read_text() == "1,2"
    status, body = await call(client, "/files/copy", {**item, "oldId": "/42/results.csv", "newId": "/43/x"})
    assert (status, body["why"]) == (400, "Item 1 (/42/results.csv -> /43/x): /43/x is not in drive 17, 42")


@pytest.mark.parametrize(
    "case",
    [
        (
            "/files/delete",
            {"id": "/home/a"},
            400,
            "Item 1 (/home/a): Core's delete does not say where drive home is",
        ),
        ("/files/delete", {"id": "home/a"}, 400, "Item 1 (home/a): a file id is /<drive>/<path>"),
        (
            "/files/folder",
            {"id": "/home/a/b", "conflictPolicy": "REJECT"},
            400,
            "Item 1 (/home/a/b): /home/a/b is not in a drive: the request names none",
        ),
        ("/files/trash", {"id": "/home", "resolvedCollection": collection()}, 400, "Item 1 (/home): cannot trash"),
        (
            "/files/trash",
            {"id": "/9/a", "resolvedCollection": collection("9", "home:someone-else")},
            403,
            "Item 1 (/9/a): drive 9 (home:someone-else) is the home of another user",
        ),
        (
            "/files/folder",
            {"id": "/home/x", "conflictPolicy": "SOMETIMES", "resolvedCollection": collection()},
            400,
            "Invalid request: items.0.conflictPolicy",
        ),
        ("/files/emptyTrash", {"resolvedCollection": collection()}, 400, "Invalid request: items.0.id: Field required"),
    ],
)
async def test_refusals_name_the_item(client: Client, home: Path, case: tuple[str, dict[str, Any], int, str]) -> None:
    route, item, status, why = case
    (home / "a").write_text("a")
    got_status, body = await call(client, route, item)
    assert (got_status, body["statusCode"], body["why"][: len(why)]) == (status, status, why[:1].upper() + why[1:])
    assert (home / "a").read_text() == "a"


async def test_a_delete_as_core_sends_it_finds_its_drive_from_earlier_calls(client: Client, home: Path) -> None:
    """Core's UFile names the drive by id only; the instance knows it from the browse before."""
    (home / "dir").mkdir()
    (home / "dir" / "f").write_text("f")
    ufile = {"id": "/home/dir", "specification": {"collection": "home", "product": None}, "status": {"type": ""}}
    status, body = await call(client, "/files/delete", ufile)
    assert status == 400, body
    browse = {"resolvedCollection": collection(), "Browse": {"flags": {"path": "/home"}}}
    assert (await client.post("/files/browse", json=browse)).status == 200
    assert await call(client, "/files/delete", ufile) == (200, {"responses": [{}]})
    assert tree(home) == {}


def test_the_drive_memory_is_bounded_and_keeps_what_is_used() -> None:
    resolver = DriveResolver({"home": "~"}, "alice", Path("/home/alice"))
    first = Drive(id="0", provider_generated_id="home:alice")
    resolver.resolve(first)
    for n in range(1, REMEMBERED_DRIVES + 5):
        resolver.resolve(Drive(id=str(n), provider_generated_id="home:alice"))
        resolver.resolve(first)  # used all the time: never forgotten
    assert len(resolver.seen) == REMEMBERED_DRIVES
    assert resolver.recall("0") == first
    assert resolver.recall("1") is None
    with pytest.raises(PathRefusedError):
        resolver.resolve(Drive(id="x", provider_generated_id="home:bob"))
    assert resolver.recall("x") is None

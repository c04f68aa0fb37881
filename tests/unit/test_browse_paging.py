"""Keyset paging of ``Files.browse``, checked against a plain sort of the whole folder.

Browse picks each page with :mod:`heapq` after the cursor instead of sorting the folder; these tests
page through every sort order and direction, page size and filter, and compare the union of the
pages with the reference listing built here with ``lstat`` and ``sorted``.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ucim.user_sidecar.files import Cursor, Files
from ucim.user_sidecar.paths import Drives, PathRefusedError

FIELDS = ["name", "size", "modified"]
PAGE_SIZES = [1, 2, 3, 7, 1000]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Ties on size and time, folders, hidden names, a link, non-ASCII and undecodable names."""
    root = tmp_path / "drive"
    root.mkdir()
    sizes_and_times = {"a.txt": (5, 100), "b.txt": (5, 100), "c.csv": (0, 300), "d": (5, 200), "e.txt": (9, 100)}
    for name, (size, mtime) in sizes_and_times.items():
        (root / name).write_bytes(b"x" * size)
        os.utime(root / name, (mtime, mtime))
    for name in ["café.txt", "ñ", ".hidden.txt", ".h"]:
        (root / name).write_bytes(b"yy")
        os.utime(root / name, (100, 100))
    for name in ["sub", "other.txt", ".git"]:
        (root / name).mkdir()
        os.utime(root / name, (200, 200))
    (root / "link.txt").symlink_to("/etc")
    os.utime(root / "link.txt", (150, 150), follow_symlinks=False)
    os.close(os.open(bytes(root) + b"/bad-\xff.txt", os.O_CREAT | os.O_WRONLY, 0o600))
    return root


def expected(root: Path, field: str, descending: bool, filter_hidden: bool, extension: str | None) -> list[str]:
    """The whole listing, sorted the slow and obvious way."""
    rows = []
    for path in root.iterdir():
        name = path.name
        try:
            name.encode()
        except UnicodeEncodeError:
            continue
        st = path.lstat()
        if filter_hidden and name.startswith("."):
            continue
        if extension and not name.endswith(extension) and not stat.S_ISDIR(st.st_mode):
            continue
        primary = {"name": 0, "size": -1 if stat.S_ISDIR(st.st_mode) else st.st_size, "modified": st.st_mtime_ns}
        rows.append(((primary[field], name), f"/7/{name}"))
    return [file_id for _, file_id in sorted(rows, reverse=descending)]


def pages(files: Files, size: int, **request: Any) -> Iterator[list[str]]:
    token = None
    while True:
        page = files.browse("/7", items_per_page=size, next_token=token, **request)
        yield [item.id for item in page.items]
        token = page.next
        if token is None:
            return


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("filter_hidden", [False, True], ids=["all", "no-hidden"])
@pytest.mark.parametrize("extension", [None, ".txt"], ids=["any", "txt"])
def test_pages_add_up_to_the_sorted_listing(
    folder: Path, field: str, descending: bool, filter_hidden: bool, extension: str | None
) -> None:
    files = Files(Drives({"7": folder}))
    want = expected(folder, field, descending, filter_hidden, extension)
    assert want  # the fixture leaves something to page through in every case
    for size in PAGE_SIZES:
        got = list(
            pages(
                files,
                size,
                sort_by=field,
                descending=descending,
                filter_hidden=filter_hidden,
                extension=extension,
            )
        )
        assert [file_id for page in got for file_id in page] == want, size
        # Nothing vanished: every page but the last is full, and the last is not empty.
        assert all(len(page) == size for page in got[:-1]) and 0 < len(got[-1]) <= size, size


def test_the_fixture_covers_the_filters(folder: Path) -> None:
    listing = expected(folder, "size", False, False, None)
    assert listing[:3] == ["/7/.git", "/7/other.txt", "/7/sub"]  # folders first, by name
    assert "/7/bad-\udcff.txt" not in listing and "/7/link.txt" in listing
    assert expected(folder, "name", False, True, ".txt") == [
        "/7/a.txt",
        "/7/b.txt",
        "/7/café.txt",
        "/7/e.txt",
        "/7/link.txt",
        "/7/other.txt",
        "/7/sub",
    ]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_entries_that_stay_in_place_are_sent_once_while_others_come_and_go(
    folder: Path, field: str, descending: bool
) -> None:
    files = Files(Drives({"7": folder}))
    before = expected(folder, field, descending, False, None)
    first = files.browse("/7", sort_by=field, descending=descending, items_per_page=4)
    sent = [item.id for item in first.items]
    unsent = [file_id for file_id in before if file_id not in sent]
    gone = unsent[1]
    for file_id in (sent[0], gone):
        remove(folder / file_id.removeprefix("/7/"))
    for name in ["0-new", "zz-new"]:
        (folder / name).write_bytes(b"n" * 3)
    rest = [file_id for page in pages_from(files, first.next, sort_by=field, descending=descending) for file_id in page]
    assert len(rest) == len(set(rest))
    assert not set(rest) & set(sent)
    assert gone not in rest
    stayed = [file_id for file_id in unsent if file_id != gone]
    assert [file_id for file_id in rest if file_id in stayed] == stayed


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


def pages_from(files: Files, token: str | None, **request: Any) -> Iterator[list[str]]:
    while token is not None:
        page = files.browse("/7", items_per_page=3, next_token=token, **request)
        yield [item.id for item in page.items]
        token = page.next


def test_a_name_gone_between_listing_and_stat_is_skipped_and_paging_goes_on(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = expected(folder, "name", False, False, None)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda fd: [*real_listdir(fd), "ghost", "0-ghost"])
    got = list(pages(Files(Drives({"7": folder})), 1))
    assert got.count([]) == 2  # the pages that held only a ghost
    assert [file_id for page in got for file_id in page] == want


def test_an_entry_gone_before_its_stat_is_skipped_when_sorting_by_size(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir

    class RemovingScandir:
        """Lists as usual, but ``d`` is removed right after it is listed, before browse stats it."""

        def __init__(self, fd: int) -> None:
            self.listing = real_scandir(fd)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self.listing:
                if entry.name == "d":
                    (folder / "d").unlink()
                yield entry

        def __exit__(self, *_: object) -> None:
            self.listing.close()

    monkeypatch.setattr(os, "scandir", RemovingScandir)
    want = expected(folder, "size", False, False, None)
    assert "/7/d" in want
    want.remove("/7/d")
    got = Files(Drives({"7": folder})).browse("/7", sort_by="size", items_per_page=1000)
    assert [item.id for item in got.items] == want


def test_next_tokens_keep_their_format(folder: Path) -> None:
    """A token is base64url of ``[field, descending, primary, name]`` without padding; old ones keep working."""
    token = base64.urlsafe_b64encode(json.dumps(["name", False, 0, "b.txt"]).encode()).decode().rstrip("=")
    page = Files(Drives({"7": folder})).browse("/7", items_per_page=2, next_token=token)
    assert [item.id for item in page.items] == ["/7/c.csv", "/7/café.txt"]
    assert page.next == Cursor("name", False, (0, "café.txt")).encode()
    assert Cursor.decode(page.next, "name", False).key == (0, "café.txt")


@pytest.mark.parametrize(
    "key", [("name", ["name", False, 1, "a"]), ("name", ["name", False, "0", "a"]), ("size", ["size", False, "5", "a"])]
)
def test_a_cursor_that_cannot_compare_with_the_folder_is_refused(key: tuple[str, list[Any]]) -> None:
    field, raw = key
    token = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")
    with pytest.raises(PathRefusedError, match="the next token is not one this instance made"):
        Cursor.decode(token, field, False)

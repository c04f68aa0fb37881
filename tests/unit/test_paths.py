"""UCloud file ids resolved inside their drive: a traversal and symlink corpus, 0 escapes."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from ucim.common.protocol import Drive
from ucim.user_sidecar.files import Files
from ucim.user_sidecar.paths import (
    DriveResolver,
    Drives,
    FileId,
    PathForbiddenError,
    PathNotFoundError,
    PathRefusedError,
    check_root_pattern,
    parse_id,
)
from ucim.user_sidecar.settings import SidecarSettings


@pytest.fixture
def world(tmp_path: Path) -> tuple[Drives, Path, Path]:
    """A drive root with ordinary content and hostile links, next to a secret outside it."""
    root = tmp_path / "home"
    outside = tmp_path / "outside"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("a")
    (root / "sibling").mkdir()
    (root / "sibling" / "inner.txt").write_text("inner")
    (root / "%2e%2e").mkdir()  # we never decode: a literal name
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "to-etc").symlink_to("/etc")
    (root / "to-outside").symlink_to(outside)
    (root / "to-outside-rel").symlink_to("../outside")
    (root / "to-sibling").symlink_to("sibling")
    (root / "loop").symlink_to("loop")
    (root / "docs" / "up").symlink_to("../..")
    return Drives({"home": root}), root, outside


def test_ids_parse_into_drive_and_parts() -> None:
    assert parse_id("/home") == FileId("home")
    assert parse_id("/home/") == FileId("home")
    assert parse_id("/home/a/b") == FileId("home", ("a", "b"))
    assert parse_id("/home/./a") == FileId("home", ("a",))
    assert parse_id("/home/a/b").ucloud_id == "/home/a/b"
    assert parse_id("/home/%2e%2e").parts == ("%2e%2e",)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/home/..", "'..'"),
        ("/home/a/../../b", "'..'"),
        ("/home/docs/..", "'..'"),
        ("/../etc/passwd", "drive"),
        ("/home/a\x00b", "NUL"),
        ("/home/\x00", "NUL"),
        ("home/a", "/<drive>/<path>"),
        ("", "/<drive>/<path>"),
        ("etc/passwd", "/<drive>/<path>"),
        ("/home//etc/passwd", "empty component"),
        ("//etc/passwd", "drive"),
        ("/home/" + "x" * 256, "longer than 255 bytes"),
        ("/home/" + "é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8
        ("/home/" + "/".join(["x" * 200] * 21), "longer than 4096 bytes"),
        ("/home/\udcff", "not valid UTF-8"),
        ("/home/a\ud800b", "not valid UTF-8"),
        ("/\udcffhome/a", "not valid UTF-8"),
    ],
)
def test_hostile_ids_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(PathRefusedError, match=why) as caught:
        parse_id(text)
    assert caught.value.status == 400


def test_names_up_to_the_limits_are_fine() -> None:
    assert parse_id("/home/" + "x" * 255).parts == ("x" * 255,)
    assert parse_id("/home/" + "é" * 127).parts == ("é" * 127,)


def test_unknown_drives_are_refused(world: tuple[Drives, Path, Path]) -> None:
    drives, _, _ = world
    with pytest.raises(PathRefusedError, match="/etc/passwd is not in drive home"):
        drives.parse("/etc/passwd")
    with pytest.raises(PathRefusedError, match="the request names none"):
        Drives({}).parse("/home/a")


def drive(drive_id: str, locator: str = "") -> Drive:
    return Drive(id=drive_id, provider_generated_id=locator)


ROOTS = {"home": "~", "project": "/work/projects/{name}"}
HOME = Path("/home/alice")


def test_drives_come_from_the_request() -> None:
    drives = Drives.for_request(
        [drive("17", "home:alice"), drive("42", "project:physics"), drive("17", "home:alice"), Drive()],
        ROOTS,
        "alice",
        HOME,
    )
    assert drives.roots == {"17": HOME, "42": Path("/work/projects/physics")}
    assert Drives.for_request([drive("1", "home:alice")], {"home": "~/ucloud"}, "alice", HOME).roots == {
        "1": HOME / "ucloud"
    }
    assert Drives.for_request([drive("1", "home:alice")], {"home": "/data/{name}"}, "alice", HOME).roots == {
        "1": Path("/data/alice")
    }
    resolver = DriveResolver(ROOTS, "alice", HOME)
    assert resolver.resolve(drive("9", "project:chem")).roots == {"9": Path("/work/projects/chem")}
    assert resolver.resolve().roots == {}


@pytest.mark.parametrize(
    ("collection", "roots", "status", "why"),
    [
        (drive("17", "home:bob"), ROOTS, 403, "drive 17 (home:bob) is the home of another user"),
        (drive("17", "project:physics"), {"home": "~"}, 400, "project drives are not configured"),
        (drive("17", "home:alice"), {"project": "/p/{name}"}, 400, "home drives are not configured"),
        (drive("17"), ROOTS, 400, "drive 17: the drive has no providerGeneratedId"),
        (drive("17", "s3:bucket"), ROOTS, 400, "drive 17: 's3:bucket' is not a drive of this provider"),
        (drive("17", "project:../etc"), ROOTS, 400, "drive 17: '../etc' is not a local user or group name"),
        (drive("17", "project:a/b"), ROOTS, 400, "is not a local user or group name"),
        (drive("a/b", "home:alice"), ROOTS, 400, "'a/b' is not a drive id"),
        (drive("", "home:alice"), ROOTS, 400, "'' is not a drive id"),
    ],
)
def test_drives_that_cannot_be_served(collection: Drive, roots: dict[str, str], status: int, why: str) -> None:
    with pytest.raises(PathRefusedError, match=re.escape(why)) as caught:
        Drives.for_request([collection], roots, "alice", HOME)
    assert caught.value.status == status


def test_one_drive_id_with_two_locators_is_refused() -> None:
    with pytest.raises(PathRefusedError, match="two different locators"):
        Drives.for_request([drive("1", "home:alice"), drive("1", "project:x")], ROOTS, "alice", HOME)


@pytest.mark.parametrize("pattern", ["relative/{name}", "/p/{other}", "/p/{name!r}", "/p/{name:>9}", "/p/{", "/p/../x"])
def test_bad_root_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"drive root|field|pattern|'\.\.'"):
        check_root_pattern(pattern)
    with pytest.raises(ValidationError):
        SidecarSettings(drive_roots={"project": pattern})


def test_drive_roots_settings_keep_home_and_know_only_two_kinds() -> None:
    assert SidecarSettings(drive_roots={"project": "/p/{name}"}).drive_roots == {"home": "~", "project": "/p/{name}"}
    # As the bridge passes UCIM_BRIDGE_SIDECAR__DRIVE_ROOTS on: its JSON text.
    from_the_bridge = SidecarSettings.model_validate({"drive_roots": '{"project": "/p/{name}"}'})
    assert from_the_bridge.drive_roots == {"home": "~", "project": "/p/{name}"}
    with pytest.raises(ValidationError, match="'scratch' is not a drive kind"):
        SidecarSettings(drive_roots={"scratch": "/scratch"})
    with pytest.raises(ValueError, match="drive id"):
        Drives({"a/b": Path("/")})


def listed(files: Files, path: str) -> set[str]:
    page = files.browse(path, items_per_page=1000)
    return {item.id for item in page.items}


CORPUS = [
    "/home/to-etc",
    "/home/to-etc/passwd",
    "/home/to-outside",
    "/home/to-outside/secret",
    "/home/to-outside-rel",
    "/home/to-outside-rel/secret",
    "/home/loop",
    "/home/loop/x",
    "/home/docs/up",
    "/home/docs/up/outside/secret",
    "/home/to-sibling",
    "/home/to-sibling/inner.txt",
    "/home/docs/a.txt/x",
    "/home/..",
    "/home/docs/../../outside",
    "/home//etc",
    "/home/%2e%2e/%2e%2e/outside",
    "/home/\x00/../outside",
    "/etc/passwd",
]


@pytest.mark.parametrize("text", CORPUS)
def test_the_corpus_never_escapes(world: tuple[Drives, Path, Path], text: str) -> None:
    drives, _, outside = world
    files = Files(drives)
    outside_inodes = {(p.stat().st_dev, p.stat().st_ino) for p in [outside, outside / "secret", Path("/etc")]}
    try:
        found = files.retrieve(text)
    except PathRefusedError:
        pass
    else:
        # Only the link itself may be described, never what it points to.
        st = drives.lstat(drives.parse(text))
        assert (st.st_dev, st.st_ino) not in outside_inodes
        assert found.id.startswith("/home/")
    with pytest.raises(PathRefusedError):
        files.browse(text)


def test_symlinks_are_refused_as_components_even_inside_the_root(world: tuple[Drives, Path, Path]) -> None:
    drives, _, _ = world
    for text in ["/home/to-sibling", "/home/to-etc", "/home/loop"]:
        with pytest.raises(PathRefusedError, match="is a symbolic link; links are not followed"):
            Files(drives).browse(text)
    with pytest.raises(PathRefusedError, match="is a symbolic link"):
        Files(drives).retrieve("/home/to-sibling/inner.txt")
    with pytest.raises(PathRefusedError, match="is not a folder"):
        Files(drives).browse("/home/docs/a.txt")


def test_links_are_listed_as_themselves(world: tuple[Drives, Path, Path]) -> None:
    drives, _, _ = world
    files = Files(drives)
    link = files.retrieve("/home/to-etc")
    assert link.status.type == "FILE"
    assert link.status.size_in_bytes == len("/etc")
    assert "/home/to-etc" in listed(files, "/home")


def test_missing_and_forbidden(world: tuple[Drives, Path, Path]) -> None:
    drives, root, _ = world
    files = Files(drives)
    with pytest.raises(PathNotFoundError, match="/home/nope does not exist"):
        files.retrieve("/home/nope")
    with pytest.raises(PathNotFoundError):
        files.browse("/home/nope/deeper")
    if os.geteuid() == 0:
        return  # root reads everything; the integration tests prove denial with real users
    (root / "locked").mkdir(mode=0)
    try:
        with pytest.raises(PathForbiddenError, match="permission denied"):
            files.browse("/home/locked")
    finally:
        (root / "locked").chmod(0o700)


def test_a_folder_swapped_for_a_link_while_browsing_never_leaks(world: tuple[Drives, Path, Path]) -> None:
    """A concurrent rename race (dir <-> symlink to the outside) never lists the secret."""
    drives, root, outside = world
    files = Files(drives)
    (root / "swap").mkdir()
    (root / "swap" / "harmless").write_text("")
    (root / "evil").symlink_to(outside)
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            (root / "swap").rename(root / "parked")
            (root / "evil").rename(root / "swap")
            (root / "swap").rename(root / "evil")
            (root / "parked").rename(root / "swap")

    thread = threading.Thread(target=swapper)
    thread.start()
    seen: set[str] = set()
    try:
        for _ in range(2000):
            with contextlib.suppress(PathRefusedError):
                seen |= listed(files, "/home/swap")
    finally:
        stop.set()
        thread.join()
    assert "/home/swap/secret" not in seen
    assert seen <= {"/home/swap/harmless"}

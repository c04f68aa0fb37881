"""Project groups against the real tools of this machine: groupadd, gpasswd, getent, and a site script.

These need root (they write /etc/group) but not the platform: only the users ``alice`` and ``bob``
(hack/local_platform.py makes them; any machine with those two will do). Every group is named
``ucimtest…`` and deleted afterwards, even when the test fails. Skipped when not root.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ucim.slurm_bridge.unix_groups import (
    GroupError,
    GroupSettings,
    GroupState,
    LocalGroups,
    Member,
    ProjectUpdate,
    ScriptGroups,
    members_changed,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("groupadd") is None or shutil.which("gpasswd") is None,
    reason="needs root and the shadow tools (groupadd, gpasswd)",
)

PATTERN = "ucimtest{id8}"
HOSTILE_TITLE = "x'; touch /tmp/ucimtest-pwned #\"$(touch /tmp/ucimtest-pwned)`id`\n\r|&>" + "t" * 10_000
ALICE = Member("alice#1234", "alice", 1101, "PI")
BOB = Member("bob$(touch /tmp/ucimtest-pwned)\n#9", "bob", 1102, "USER")


@pytest.fixture(autouse=True)
def users() -> None:
    for name in ("alice", "bob"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            pytest.skip(f"needs the local user {name}")


@pytest.fixture
def cleanup() -> Iterator[Callable[[str], str]]:
    """``cleanup(name)`` deletes the group ``name`` after the test, whatever happens; returns ``name``."""
    names: list[str] = []

    def add(name: str) -> str:
        assert name.startswith("ucimtest")
        names.append(name)
        return name

    yield add
    for name in names:
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def project(cleanup: Callable[[str], str]) -> str:
    """A fresh project id whose group name (and its suffixes) are cleaned up."""
    project_id = str(uuid.uuid4())
    base = f"ucimtest{project_id[:8]}"
    for name in (base, *(f"{base}-{n}" for n in range(1, 4))):
        cleanup(name)
    return project_id


def group_line(name: str) -> str:
    return subprocess.run(["getent", "group", name], capture_output=True, text=True, check=False).stdout.strip()


def groupadd(name: str, *extra: str) -> int:
    subprocess.run(["groupadd", *extra, name], check=True)
    return int(group_line(name).split(":")[2])


def free_gid(start: int = 64000) -> int:
    return next(gid for gid in range(start, start + 1000) if not group_line(str(gid)))


def changes(action: str) -> float:
    return REGISTRY.get_sample_value("ucim_group_changes_total", {"action": action}) or 0.0


def settings(**options: Any) -> GroupSettings:
    return GroupSettings(name_pattern=PATTERN, **options)


# --- local: ensure_group -----------------------------------------------------------------------------


async def test_a_new_project_gets_a_group_named_by_the_pattern(project: str) -> None:
    created = changes("created")
    groups = LocalGroups(settings())
    name = f"ucimtest{project[:8]}"
    group = await groups.ensure_group(project, suggested_name=name, known=None)
    assert (group.name, group.members) == (name, frozenset())
    assert group_line(name) == f"{name}:x:{group.gid}:"
    assert await groups.read(name) == group
    assert changes("created") == created + 1


async def test_the_gid_comes_from_the_configured_range(project: str) -> None:
    free = free_gid()
    groups = LocalGroups(settings(gid_min=free, gid_max=free + 10))
    group = await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None)
    assert free <= group.gid <= free + 10


async def test_a_full_range_is_a_readable_error(project: str, cleanup: Callable[[str], str]) -> None:
    taken = groupadd(cleanup(f"ucimtest{uuid.uuid4().hex[:8]}"))
    groups = LocalGroups(settings(gid_min=taken, gid_max=taken))
    with pytest.raises(GroupError, match=r"groupadd ucimtest\w+ failed: groupadd: Can't get unique GID"):
        await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None)


async def test_a_taken_name_that_is_not_recorded_gets_a_suffix(project: str, caplog: pytest.LogCaptureFixture) -> None:
    name = f"ucimtest{project[:8]}"
    stranger = groupadd(name)
    subprocess.run(["gpasswd", "-M", "alice", name], check=True, capture_output=True)
    with caplog.at_level(logging.WARNING):
        group = await LocalGroups(settings()).ensure_group(project, suggested_name=name, known=None)
    assert group.name == f"{name}-1"
    assert group.gid != stranger
    assert group_line(name) == f"{name}:x:{stranger}:alice", "the stranger's group is untouched"
    assert "not recorded as the project's" in caplog.text


async def test_the_recorded_group_is_used_as_it_is(project: str) -> None:
    groups = LocalGroups(settings())
    name = f"ucimtest{project[:8]}"
    first = await groups.ensure_group(project, suggested_name=name, known=None)
    created = changes("created")
    again = await groups.ensure_group(project, suggested_name=name, known=GroupState(first.name, first.gid))
    assert again == first
    assert changes("created") == created


async def test_a_vanished_group_comes_back_with_its_name_and_gid(project: str) -> None:
    groups = LocalGroups(settings())
    name = f"ucimtest{project[:8]}"
    first = await groups.ensure_group(project, suggested_name=name, known=None)
    subprocess.run(["groupdel", name], check=True)
    again = await groups.ensure_group(project, suggested_name=name, known=first)
    assert (again.name, again.gid) == (first.name, first.gid)


async def test_a_recorded_group_changed_by_hand_is_not_adopted(project: str, cleanup: Callable[[str], str]) -> None:
    groups = LocalGroups(settings())
    name = f"ucimtest{project[:8]}"
    first = await groups.ensure_group(project, suggested_name=name, known=None)
    subprocess.run(["groupdel", name], check=True)
    other = groupadd(name, "-g", str(free_gid()))  # same name, another gid
    with pytest.raises(GroupError, match=f"now has gid {other}, not the recorded {first.gid}"):
        await groups.ensure_group(project, suggested_name=name, known=first)
    subprocess.run(["groupdel", name], check=True)
    thief = cleanup(f"ucimtest{uuid.uuid4().hex[:8]}")
    groupadd(thief, "-g", str(first.gid))  # the gid under another name
    with pytest.raises(GroupError, match=f"now belongs to group '{thief}'"):
        await groups.ensure_group(project, suggested_name=name, known=first)
    assert not group_line(name), "nothing was created"


# --- local: set_members ------------------------------------------------------------------------------


async def test_the_member_list_becomes_exactly_what_is_asked(project: str) -> None:
    groups = LocalGroups(settings())
    group = await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None)
    added, removed = changes("member_added"), changes("member_removed")

    both = await groups.set_members(group, ["bob", "alice", "alice"])
    assert both == GroupState(group.name, group.gid, frozenset({"alice", "bob"}))
    assert group_line(group.name).endswith(":alice,bob")
    only_bob = await groups.set_members(both, {"bob"})
    assert only_bob.members == {"bob"}
    assert members_changed(both, only_bob) == {"alice"}
    empty = await groups.set_members(only_bob, [])
    assert empty.members == frozenset()
    assert group_line(group.name) == f"{group.name}:x:{group.gid}:"
    assert (changes("member_added"), changes("member_removed")) == (added + 2, removed + 2)


async def test_an_unchanged_member_list_writes_nothing(project: str) -> None:
    groups = LocalGroups(settings())
    group = await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None)
    group = await groups.set_members(group, ["alice"])
    before = Path("/etc/group").stat().st_mtime_ns
    assert await groups.set_members(group, ["alice"]) == group
    assert Path("/etc/group").stat().st_mtime_ns == before


async def test_an_unknown_user_is_refused_in_gpasswds_words(project: str) -> None:
    groups = LocalGroups(settings())
    group = await groups.set_members(
        await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None), ["alice"]
    )
    with pytest.raises(GroupError, match="gpasswd: user 'ucimtestnosuchuser' does not exist"):
        await groups.set_members(group, ["bob", "ucimtestnosuchuser"])
    assert (await groups.read(group.name)) == group, "gpasswd changed nothing"


async def test_members_of_a_group_that_is_not_ours_are_not_set(project: str) -> None:
    groups = LocalGroups(settings())
    group = await groups.ensure_group(project, suggested_name=f"ucimtest{project[:8]}", known=None)
    with pytest.raises(GroupError, match="it is not the project's group"):
        await groups.set_members(GroupState(group.name, group.gid + 1), ["alice"])
    with pytest.raises(GroupError, match="does not exist"):
        await groups.set_members(GroupState("ucimtestnosuchgroup", 5000), ["alice"])
    assert (await groups.read(group.name)) == group


async def test_sync_makes_the_group_of_a_project_with_a_hostile_title(project: str) -> None:
    update = ProjectUpdate(project, HOSTILE_TITLE, members=(ALICE, BOB), added=(ALICE, BOB))
    group = await LocalGroups(settings()).sync(update, known=None)
    assert group.name == f"ucimtest{project[:8]}"
    assert group.members == {"alice", "bob"}
    assert not Path("/tmp/ucimtest-pwned").exists()
    later = await LocalGroups(settings()).sync(ProjectUpdate(project, "t", members=(BOB,), removed=(ALICE,)), group)
    assert (later.gid, later.members) == (group.gid, frozenset({"bob"}))


async def test_reading_a_missing_group_is_none() -> None:
    assert await LocalGroups(settings()).read("ucimtestnosuchgroup") is None


# --- script ------------------------------------------------------------------------------------------


def write_script(folder: Path, body: str) -> Path:
    """A root-owned Python script (0700) that records its argv and its request next to itself, then ``body``."""
    script = folder / "on-project-updated"
    record = folder / "seen.json"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, stat, sys, time\n"
        "path = sys.argv[1]\n"
        "mode = stat.S_IMODE(os.stat(path).st_mode)\n"
        f"json.dump({{'argv': sys.argv, 'mode': mode, 'request': json.load(open(path))}}, open({str(record)!r}, 'w'))\n"
        f"{body}\n"
    )
    script.chmod(0o700)
    return script


def seen(folder: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((folder / "seen.json").read_text())
    return result


async def test_the_script_gets_the_request_file_and_its_gid_names_the_group(
    project: str, cleanup: Callable[[str], str], tmp_path: Path
) -> None:
    name = cleanup(f"ucimtest{uuid.uuid4().hex[:8]}")
    gid = groupadd(name)
    subprocess.run(["gpasswd", "-M", "alice,bob", name], check=True, capture_output=True)
    script = write_script(tmp_path, f'print(json.dumps({{"gid": {gid}}}))')
    created = changes("created")
    update = ProjectUpdate(project, HOSTILE_TITLE, members=(ALICE, BOB), added=(BOB,))

    group = await ScriptGroups(settings(policy="script", script=script)).sync(update, known=None)

    assert group == GroupState(name, gid, frozenset({"alice", "bob"}))
    record = seen(tmp_path)
    assert len(record["argv"]) == 2
    assert record["argv"][0] == str(script)
    assert record["mode"] == 0o600
    assert not Path(record["argv"][1]).exists(), "the request file is deleted"
    assert record["request"] == {
        "UCloudProjectId": project,
        "projectTitle": HOSTILE_TITLE,
        "suggestedGroupName": f"ucimtest{project[:8]}",
        "unixGid": None,
        "allMembers": [
            {"UCloudUsername": "alice#1234", "uid": 1101, "role": "PI"},
            {"UCloudUsername": BOB.ucloud_username, "uid": 1102, "role": "USER"},
        ],
        "membersAddedToProject": [{"UCloudUsername": BOB.ucloud_username, "uid": 1102, "role": "USER"}],
        "membersRemovedFromProject": None,
    }
    assert not Path("/tmp/ucimtest-pwned").exists()
    assert changes("created") == created + 1


async def test_a_later_different_gid_is_only_logged(
    project: str, cleanup: Callable[[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorded = cleanup(f"ucimtest{uuid.uuid4().hex[:8]}")
    recorded_gid = groupadd(recorded)
    other_gid = groupadd(cleanup(f"ucimtest{uuid.uuid4().hex[:8]}"))
    script = write_script(tmp_path, f'print(json.dumps({{"gid": {other_gid}}}))')
    known = GroupState(recorded, recorded_gid)
    with caplog.at_level(logging.WARNING):
        group = await ScriptGroups(settings(policy="script", script=script)).sync(
            ProjectUpdate(project, "t", members=(), removed=(ALICE,)), known
        )
    assert (group.name, group.gid) == (recorded, recorded_gid)
    assert "another gid than the recorded one" in caplog.text
    request = seen(tmp_path)["request"]
    assert (request["unixGid"], request["allMembers"]) == (recorded_gid, None)
    assert request["membersRemovedFromProject"] == [{"UCloudUsername": "alice#1234", "uid": 1101, "role": None}]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('sys.stderr.write("step 1\\nldap down\\n"); sys.exit(3)', r"exit status 3\): step 1 \| ldap down"),
        ('print("done"); sys.stderr.write("warning: slow\\n")', r"printed no JSON .*its stderr: warning: slow"),
        ('print(json.dumps({"gid": "x"}))', r'must print \{"gid": N\}'),
        ('print(json.dumps({"gid": 0}))', "0 is root's"),
        ('print(json.dumps({"gid": 4294967000}))', "there is no group with gid 4294967000"),
        ("time.sleep(30)", "did not answer within 0.5 s"),
    ],
)
async def test_script_failures_are_readable(project: str, tmp_path: Path, body: str, why: str) -> None:
    failures = REGISTRY.get_sample_value("ucim_group_failures_total", {"operation": "script"}) or 0
    script = write_script(tmp_path, body)
    groups = ScriptGroups(settings(policy="script", script=script, script_timeout_seconds=0.5))
    with pytest.raises(GroupError, match=why):
        await groups.sync(ProjectUpdate(project, "t", members=(ALICE,)), known=None)
    assert REGISTRY.get_sample_value("ucim_group_failures_total", {"operation": "script"}) == failures + 1
    assert not Path(seen(tmp_path)["argv"][1]).exists(), "the request file is deleted, even on failure"


async def test_a_script_others_may_change_is_not_run(project: str, tmp_path: Path) -> None:
    script = write_script(tmp_path, 'print(json.dumps({"gid": 1}))')
    os.chown(script, 1101, -1)
    groups = ScriptGroups(settings(policy="script", script=script))
    with pytest.raises(GroupError, match="must be owned by root and writable only by root"):
        await groups.sync(ProjectUpdate(project, "t", members=()), known=None)
    assert not (tmp_path / "seen.json").exists()

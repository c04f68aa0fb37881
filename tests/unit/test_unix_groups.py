"""Project groups without running anything: names, validation, settings, the script's JSON, the answers.

The same policies against the real groupadd/gpasswd/getent are in ``test_unix_groups_commands.py`` (root).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from ucim.slurm_bridge import site_commands
from ucim.slurm_bridge.unix_groups import (
    GroupError,
    GroupSettings,
    GroupState,
    LocalGroups,
    Member,
    ProjectUpdate,
    ScriptGroups,
    check_local_name,
    group_name,
    members_changed,
    script_request,
    unix_groups,
)
from ucim.slurm_bridge.unix_groups.database import parse_group_line
from ucim.slurm_bridge.unix_groups.names import candidates, short_id
from ucim.slurm_bridge.unix_groups.script import gid_from_answer

PROJECT = "94056ba8-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
HOSTILE_TITLE = "x'; rm -rf / #\"$(touch /tmp/pwned)`id`\n\r\x00|&>" + "t" * 10_000
ALICE = Member("alice#1234", "alice", 1101, "PI")
BOB = Member("Bob; $(reboot)\n#99", "bob", 1102, "USER")


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project_id", "expected"),
    [
        (PROJECT, "94056ba8"),
        ("94056BA8-1C2D-4E5F-8A9B-0C1D2E3F4A5B", "94056ba8"),
        ("deadbeefcafe", "deadbeef"),
    ],
)
def test_the_short_id_is_the_first_eight_hex_digits(project_id: str, expected: str) -> None:
    assert short_id(project_id) == expected


def test_other_ids_are_hashed_to_eight_hex_digits() -> None:
    first = short_id("demo-project")
    assert len(first) == 8
    assert set(first) <= set("0123456789abcdef")
    assert short_id("demo-project") == first != short_id("demo-project2")


def test_the_default_pattern_names_the_group() -> None:
    assert group_name(GroupSettings().name_pattern, PROJECT) == "p94056ba8"
    assert group_name("proj_{id8}", PROJECT) == "proj_94056ba8"


def test_collisions_take_numbered_suffixes_that_stay_names() -> None:
    names = list(candidates("p94056ba8"))
    assert names[:3] == ["p94056ba8", "p94056ba8-1", "p94056ba8-2"]
    assert names[-1] == "p94056ba8-99"
    assert list(candidates("a" * 30)) == ["a" * 30, *(f"{'a' * 30}-{n}" for n in range(1, 10))]
    assert list(candidates("a" * 32)) == ["a" * 32]


@pytest.mark.parametrize("name", ["alice", "_svc", "Bob", "p94056ba8-1", "a.b", "a" * 32])
def test_valid_local_names_pass(name: str) -> None:
    assert check_local_name(name, "the member") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "alice\n",
        "alice\nbob",
        "-M",
        "--help",
        "1234",
        "alice,bob",
        "alice bob",
        "a;b",
        "$(id)",
        "`id`",
        "a'b",
        'a"b',
        "a:b",
        "a/b",
        "ålice",
        "a" * 33,
        "a" * 10_000,
        "alice\x00",
    ],
)
def test_hostile_local_names_are_refused(name: str) -> None:
    with pytest.raises(GroupError, match="is not a valid local name"):
        check_local_name(name, "the member")


def test_a_refusal_shows_a_short_quoted_name() -> None:
    with pytest.raises(GroupError) as caught:
        check_local_name("x\n" * 5000, "the member")
    assert len(str(caught.value)) < 200
    assert "\n" not in str(caught.value)


# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"name_pattern": "{title}"}, "may only use {id8}"),
        ({"name_pattern": "{id8!r}"}, "may only use {id8}"),
        ({"name_pattern": "{0}"}, "may only use {id8}"),
        ({"name_pattern": "{id8"}, "malformed"),
        ({"name_pattern": "{id8}"}, "not a valid local name"),  # starts with a digit
        ({"name_pattern": "p {id8}"}, "not a valid local name"),
        ({"name_pattern": "p" * 30 + "{id8}"}, "not a valid local name"),
        ({"gid_min": 70000}, "both gid_min and gid_max"),
        ({"gid_min": 70000, "gid_max": 60000}, "above gid_max"),
        ({"gid_min": 0, "gid_max": 10}, "greater than or equal to 1"),
        ({"policy": "script"}, "no script is configured"),
    ],
)
def test_settings_that_are_refused(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        GroupSettings(**options)


def test_the_policy_chooses_the_implementation() -> None:
    assert isinstance(unix_groups(GroupSettings()), LocalGroups)
    assert isinstance(unix_groups(GroupSettings(policy="script", script="/etc/ucim/project")), ScriptGroups)
    assert GroupSettings(gid_min=70000, gid_max=70999).gid_range == (70000, 70999)
    assert GroupSettings().gid_range is None


# --- who needs a restart -----------------------------------------------------------------------------


def test_members_changed_names_those_who_joined_and_those_who_left() -> None:
    old = GroupState("p1", 5000, frozenset({"alice", "bob"}))
    assert members_changed(old, GroupState("p1", 5000, frozenset({"bob", "carl"}))) == {"alice", "carl"}
    assert members_changed(old, old) == frozenset()
    assert members_changed(None, old) == {"alice", "bob"}
    assert members_changed(old, GroupState("p1-1", 5001, frozenset({"bob"}))) == {"alice", "bob"}


# --- getent's lines ----------------------------------------------------------------------------------


def test_group_lines_are_parsed() -> None:
    assert parse_group_line("p1:x:5000:alice,bob\n") == GroupState("p1", 5000, frozenset({"alice", "bob"}))
    assert parse_group_line("p1:x:5000:") == GroupState("p1", 5000, frozenset())
    for bad in ["", "p1:x:5000", "p1:x:abc:", "p1:x:5000:a:b"]:
        with pytest.raises(GroupError, match="not a group entry"):
            parse_group_line(bad)


# --- the script's request and answer -----------------------------------------------------------------


def test_the_script_request_has_exactly_the_anchors_keys() -> None:
    update = ProjectUpdate(PROJECT, "My project", members=(ALICE, BOB), added=(BOB,), removed=(Member("c#1", "c", 7),))
    request = script_request(update, suggested_name="p94056ba8", unix_gid=5000)
    assert request == {
        "UCloudProjectId": PROJECT,
        "projectTitle": "My project",
        "suggestedGroupName": "p94056ba8",
        "unixGid": 5000,
        "allMembers": [
            {"UCloudUsername": "alice#1234", "uid": 1101, "role": "PI"},
            {"UCloudUsername": "Bob; $(reboot)\n#99", "uid": 1102, "role": "USER"},
        ],
        "membersAddedToProject": [{"UCloudUsername": "Bob; $(reboot)\n#99", "uid": 1102, "role": "USER"}],
        "membersRemovedFromProject": [{"UCloudUsername": "c#1", "uid": 7, "role": None}],
    }
    assert list(request) == [
        "UCloudProjectId",
        "projectTitle",
        "suggestedGroupName",
        "unixGid",
        "allMembers",
        "membersAddedToProject",
        "membersRemovedFromProject",
    ]


def test_empty_lists_and_no_gid_are_null_as_go_writes_them() -> None:
    request = script_request(ProjectUpdate(PROJECT, "", members=()), suggested_name="p94056ba8", unix_gid=None)
    text = json.dumps(request)
    assert '"unixGid": null' in text
    assert '"allMembers": null' in text
    assert '"membersAddedToProject": null' in text
    assert '"membersRemovedFromProject": null' in text


def test_removed_members_have_no_role() -> None:
    update = ProjectUpdate(PROJECT, "t", members=(), removed=(ALICE,))
    removed = script_request(update, suggested_name="p", unix_gid=None)["membersRemovedFromProject"]
    assert removed == [{"UCloudUsername": "alice#1234", "uid": 1101, "role": None}]


def test_a_hostile_title_survives_the_json_unchanged() -> None:
    update = ProjectUpdate(PROJECT, HOSTILE_TITLE, members=(BOB,))
    request = script_request(update, suggested_name="p94056ba8", unix_gid=None)
    assert json.loads(json.dumps(request))["projectTitle"] == HOSTILE_TITLE


@pytest.mark.parametrize(
    ("stdout", "why"),
    [
        (b"", "printed no JSON"),
        (b"gid=5", "printed no JSON"),
        (b"{}", 'must print {"gid": N}'),
        (b"[5000]", 'must print {"gid": N}'),
        (b'{"gid": "5000"}', 'must print {"gid": N}'),
        (b'{"gid": true}', 'must print {"gid": N}'),
        (b'{"gid": 5000.0}', 'must print {"gid": N}'),
        (b'{"gid": 0}', "0 is root's"),
        (b'{"gid": -1}', "which no project group may have"),
        (b'{"gid": 4294967295}', "which no project group may have"),
    ],
)
def test_script_answers_that_are_refused(stdout: bytes, why: str) -> None:
    with pytest.raises(GroupError, match=why) as caught:
        gid_from_answer(stdout, "oops: the directory is down")
    if "JSON" in why or "must print" in why:
        assert "oops: the directory is down" in str(caught.value)


def test_the_gid_of_a_good_answer() -> None:
    assert gid_from_answer(b'{"gid": 5234281, "note": "ignored"}\n', "") == 5234281


# --- nothing runs before the names are checked -------------------------------------------------------


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    """Every command a test would run, refused: a test passes only if none was tried."""
    tried: list[Sequence[str]] = []

    async def refuse(argv: Sequence[str], **_: Any) -> site_commands.Finished:
        tried.append(argv)
        raise AssertionError(f"a command ran: {argv}")

    monkeypatch.setattr(site_commands, "run", refuse)
    return tried


@pytest.mark.parametrize(
    "members",
    [["alice", "bob; rm -rf /"], ["alice\n"], ["-M"], ["alice,root"], ["a" * 10_000], ["alice", ""]],
)
async def test_hostile_members_are_refused_before_any_command(
    members: list[str], no_commands: list[Sequence[str]]
) -> None:
    failures = REGISTRY.get_sample_value("ucim_group_failures_total", {"operation": "set_members"}) or 0
    with pytest.raises(GroupError, match="is not a valid local name"):
        await LocalGroups(GroupSettings()).set_members(GroupState("p94056ba8", 5000), members)
    assert no_commands == []
    assert REGISTRY.get_sample_value("ucim_group_failures_total", {"operation": "set_members"}) == failures + 1


async def test_one_string_is_not_a_member_list(no_commands: list[Sequence[str]]) -> None:
    with pytest.raises(GroupError, match="not one string"):
        await LocalGroups(GroupSettings()).set_members(GroupState("p94056ba8", 5000), "alice")
    assert no_commands == []


async def test_a_hostile_member_stops_a_sync_before_the_group_is_made(no_commands: list[Sequence[str]]) -> None:
    update = ProjectUpdate(PROJECT, "t", members=(ALICE, Member("eve#1", "eve;reboot", 1666)))
    with pytest.raises(GroupError, match="the member 'eve;reboot' is not a valid local name"):
        await LocalGroups(GroupSettings()).sync(update, known=None)
    assert no_commands == []


@pytest.mark.parametrize("name", ["p1; id", "p1\n", "--force", "1234", "g" * 33])
async def test_hostile_group_names_are_refused_before_any_command(name: str, no_commands: list[Sequence[str]]) -> None:
    groups = LocalGroups(GroupSettings())
    with pytest.raises(GroupError, match="is not a valid local name"):
        await groups.set_members(GroupState(name, 5000), ["alice"])
    with pytest.raises(GroupError, match="is not a valid local name"):
        await groups.read(name)
    with pytest.raises(GroupError, match="is not a valid local name"):
        await groups.ensure_group(PROJECT, suggested_name=name, known=None)
    with pytest.raises(GroupError, match="is not a valid local name"):
        await groups.ensure_group(PROJECT, suggested_name="p94056ba8", known=GroupState(name, 5000))
    assert no_commands == []


def test_a_hostile_project_id_only_picks_a_hashed_name() -> None:
    hostile = "$(id)\n; rm -rf /"
    assert group_name("p{id8}", hostile) == "p" + short_id(hostile)
    assert group_name("p{id8}", hostile).isalnum()


# --- stderr for people -------------------------------------------------------------------------------


def test_the_stderr_tail_is_one_short_line() -> None:
    finished = site_commands.Finished(1, b"", b"\n".join(f"line {n}".encode() for n in range(20)) + b"\n\n")
    assert finished.stderr_tail() == "line 15 | line 16 | line 17 | line 18 | line 19"
    assert finished.stderr_tail(lines=1) == "line 19"
    long = site_commands.Finished(1, b"", b"x" * 5000)
    assert long.stderr_tail(chars=100) == "…" + "x" * 100
    assert site_commands.Finished(3, b"", b"  \n").why() == "exit status 3"

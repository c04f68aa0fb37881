"""The accounting stream's wire codec reads and writes the bytes core2 and IM2 exchange."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from ucim.common.accounting_stream import (
    FLAG_INCLUDE_RETIRED,
    REPLAY_EVERYTHING_MS,
    WALLET_LOCKED,
    WALLET_PROJECT,
    Auth,
    CategoryRecord,
    ProjectRecord,
    ProjectUpdated,
    Record,
    ReplayUser,
    StreamProtocolError,
    StreamSession,
    UserRecord,
    WalletRecord,
    WalletUpdated,
    Workspace,
    auth_frame,
    decode,
    decode_client_frame,
    encode,
    encode_category,
    encode_project,
    encode_string,
    encode_user,
    encode_wallet,
    replay_user_frame,
)
from ucim.common.protocol import (
    AccountingUnit,
    ProductCategory,
    Project,
    ProjectMember,
    ProjectSpecification,
    ProjectStatus,
    dump,
)

PROJECT_ID = "94056ba8-0d3b-4b8e-9d7c-2f1f2d3c4b5a"
# The doc's example (PROTOCOL-ACCOUNTING.md §1.5), with a key Core may add one day.
PROJECT_JSON = {
    "id": PROJECT_ID,
    "createdAt": 1717000000000,
    "modifiedAt": 1717000500000,
    "specification": {"parent": None, "title": "My project", "canConsumeResources": True},
    "status": {
        "archived": False,
        "isFavorite": False,
        "isHidden": False,
        "members": [{"username": "Donna#1234", "role": "PI"}, {"username": "Bo#0001", "role": "USER"}],
        "groups": [
            {
                "id": "17",
                "createdAt": -62135596800000,
                "specification": {"project": PROJECT_ID, "title": "G"},
                "status": {"members": ["Donna#1234"]},
            }
        ],
        "settings": {"subProjects": {"allowRenaming": False}},
        "myRole": "",
        "path": "",
        "personalProviderProjectFor": None,
        "somethingNew": {"nested": [1, 2]},
    },
}
CATEGORY_JSON = {
    "name": "u1-standard",
    "provider": "slurm",
    "productType": "COMPUTE",
    "accountingUnit": {"name": "Core", "namePlural": "Core", "floatingPoint": False, "displayFrequencySuffix": True},
    "accountingFrequency": "PERIODIC_MINUTE",
    "allowSubAllocations": True,
}
HOSTILE = [
    "",
    "Donna#1234",
    "line\nbreak\r\n",
    "$(rm -rf /); `id` && echo ${HOME} | cat > /etc/passwd; '\"\\",
    "\x00nul\x00",
    "Ærø 🚀 日本",
    "x" * 10_000,
]


def project() -> Project:
    return Project.model_validate(PROJECT_JSON)


def category(name: str = "u1-standard") -> ProductCategory:
    return ProductCategory.model_validate({**CATEGORY_JSON, "name": name})


def wallet(**changes: Any) -> WalletRecord:
    fields: dict[str, Any] = {
        "workspace_ref": 0,
        "category_ref": 0,
        "combined_quota": 1000,
        "total_usage": 37,
        "flags": WALLET_PROJECT,
        "last_significant_update_ms": 1717000600000,
        "local_retired_usage": 0,
    } | changes
    return WalletRecord(**fields)


def frame(*records: Record) -> bytes:
    return b"".join(encode(record) for record in records)


# --- client frames --------------------------------------------------------------


def test_the_auth_frame_is_laid_out_as_core_reads_it() -> None:
    raw = auth_frame(REPLAY_EVERYTHING_MS, "tok")

    # u8 0, the replay point as u64 two's complement, u64 flags (include retired), u32 length + token.
    assert raw == bytes([0]) + bytes.fromhex("ffffc77cedd32800") + (1).to_bytes(8, "big") + b"\x00\x00\x00\x03tok"
    assert decode_client_frame(raw) == Auth(REPLAY_EVERYTHING_MS, FLAG_INCLUDE_RETIRED, "tok")


@pytest.mark.parametrize("replay_from", [REPLAY_EVERYTHING_MS, -1, 0, 1_767_225_600_000, 2**63 - 1, -(2**63)])
def test_auth_frames_carry_any_int64_replay_point(replay_from: int) -> None:
    assert decode_client_frame(auth_frame(replay_from, "t", flags=0)) == Auth(replay_from, 0, "t")


@pytest.mark.parametrize("replay_from", [2**63, -(2**63) - 1])
def test_auth_frames_refuse_what_no_int64_holds(replay_from: int) -> None:
    with pytest.raises(ValueError, match="replayFrom"):
        auth_frame(replay_from, "t")


@pytest.mark.parametrize("username", HOSTILE)
def test_replay_user_frames_carry_any_username(username: str) -> None:
    raw = replay_user_frame(username)

    assert raw[0] == 5
    assert int.from_bytes(raw[1:5], "big") == len(username.encode())
    assert decode_client_frame(raw) == ReplayUser(username)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the opcode"),
        (b"\x07", "unknown client opcode 7"),
        (auth_frame(0, "token")[:-1], "the access token"),
        (auth_frame(0, "token")[:12], "the auth flags"),
        (replay_user_frame("bo") + b"\x00", "1 bytes after the op 5 frame"),
        (b"\x05\x00\x00\x00\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_client_frames_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(StreamProtocolError, match=message):
        decode_client_frame(raw)


# --- Core's records -------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        UserRecord(0, "Donna#1234"),
        UserRecord(2**32 - 1, "x" * 10_000),
        ProjectRecord(3, 1717000500000, project()),
        ProjectRecord(0, REPLAY_EVERYTHING_MS, Project(id="p")),
        CategoryRecord(1, category()),
        wallet(),
        wallet(flags=WALLET_LOCKED, workspace_ref=2**32 - 1, category_ref=7),
        wallet(combined_quota=-1, total_usage=-(2**63), last_significant_update_ms=REPLAY_EVERYTHING_MS),
        wallet(combined_quota=2**63 - 1, total_usage=2**63 - 1, local_retired_usage=2**64 - 1, flags=2**32 - 1),
    ],
    ids=repr,
)
def test_each_record_survives_a_round_trip(record: Record) -> None:
    assert decode(encode(record)) == [record]


def test_a_wallet_is_laid_out_as_core_writes_it() -> None:
    raw = encode_wallet(
        4, 2, combined_quota=-5, total_usage=37, flags=3, last_update_ms=1717000600000, local_retired_usage=9
    )

    assert raw == struct.pack(">BIIqqIqQ", 1, 4, 2, -5, 37, 3, 1717000600000, 9)
    assert decode(raw) == [wallet(workspace_ref=4, category_ref=2, combined_quota=-5, flags=3, local_retired_usage=9)]


def test_without_the_retired_flag_a_wallet_has_no_trailing_field() -> None:
    record = wallet(local_retired_usage=0)
    raw = encode(record, include_retired=False)

    assert len(raw) == len(encode(record)) - 8
    assert decode(raw, include_retired=False) == [record]
    with pytest.raises(StreamProtocolError, match="localRetiredUsage"):
        decode(raw)


def test_project_and_category_json_are_written_as_go_writes_them() -> None:
    project_raw = encode_project(0, 1, project())
    category_raw = encode_category(0, category())

    written_project = json.loads(project_raw[17:])
    assert written_project["status"]["members"] == [
        {"username": "Donna#1234", "role": "PI"},
        {"username": "Bo#0001", "role": "USER"},
    ]
    assert written_project["specification"] == {"parent": None, "title": "My project", "canConsumeResources": True}
    assert written_project["status"]["personalProviderProjectFor"] is None
    assert "somethingNew" not in written_project["status"]
    # omitempty keys of a category (freeToUse here) stay out; accountingUnit is always there.
    assert json.loads(category_raw[9:]) == CATEGORY_JSON


def test_the_docs_project_parses_with_the_fields_a_provider_reads() -> None:
    parsed = project()

    assert parsed.id == PROJECT_ID
    assert (parsed.created_at, parsed.modified_at) == (1717000000000, 1717000500000)
    assert parsed.specification.title == "My project" and parsed.specification.can_consume_resources
    assert [(m.username, m.role) for m in parsed.status.members] == [("Donna#1234", "PI"), ("Bo#0001", "USER")]
    assert parsed.status.groups[0].created_at == REPLAY_EVERYTHING_MS
    assert parsed.status.groups[0].status.members == ["Donna#1234"]
    assert parsed.status.personal_provider_project_for is None


def test_several_records_in_one_frame_come_out_in_order() -> None:
    records: list[Record] = [
        UserRecord(0, "Donna#1234"),
        ProjectRecord(0, 5, project()),
        CategoryRecord(0, category()),
        CategoryRecord(1, category("u1-gpu")),
        wallet(flags=0),
        wallet(flags=WALLET_PROJECT, category_ref=1),
    ]

    assert decode(frame(*records)) == records


def test_an_empty_frame_holds_no_records() -> None:
    assert decode(b"") == []


def test_a_frame_cut_anywhere_inside_a_record_is_refused() -> None:
    records: list[Record] = [
        UserRecord(0, "Donna#1234"),
        ProjectRecord(0, 5, project()),
        CategoryRecord(0, category()),
        wallet(),
    ]
    pieces = [encode(record) for record in records]
    raw = b"".join(pieces)
    boundaries = {sum(len(piece) for piece in pieces[:count]): count for count in range(len(pieces) + 1)}

    for length in range(len(raw) + 1):
        if length in boundaries:
            assert decode(raw[:length]) == records[: boundaries[length]]
        else:
            with pytest.raises(StreamProtocolError, match="truncated frame"):
                decode(raw[:length])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (encode_user(0, "a") + b"\x09\x00", r"unknown opcode 9 at offset 10"),
        (b"\x00", "unknown opcode 0 at offset 0"),
        (encode_project(0, 1, "{not json"), "project 0 is not a Project"),
        (encode_project(0, 1, "null"), r"project 0 is not a Project: \(top\)"),
        (encode_project(0, 1, json.dumps({**PROJECT_JSON, "createdAt": 1.5e12})), "createdAt"),
        (encode_project(0, 1, json.dumps({"status": {"members": [{"username": "a", "role": "OWNER"}]}})), "role"),
        (encode_category(2, json.dumps({"name": "x"})), "category 2 is not a ProductCategory: accountingUnit"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00\x01\xc3", "not UTF-8"),
    ],
)
def test_bad_records_are_refused_with_a_readable_message(raw: bytes, message: str) -> None:
    with pytest.raises(StreamProtocolError, match=message):
        decode(raw)


def test_a_hostile_json_payload_is_quoted_short_and_on_one_line() -> None:
    hostile = "{\n" + "$(reboot)\n" * 1000

    with pytest.raises(StreamProtocolError) as refused:
        decode(encode_category(0, hostile))

    message = str(refused.value)
    assert "\n" not in message
    assert len(message) < 400
    assert f"({len(hostile)} characters)" in message


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_survive_every_string_field(text: str) -> None:
    hostile_project = Project(id=PROJECT_ID, specification=ProjectSpecification(title=text))
    records: list[Record] = [UserRecord(1, text), ProjectRecord(1, 2, hostile_project)]

    assert decode(frame(*records)) == records
    assert encode_string(text)[4:].decode() == text


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: encode_user(-1, "a"), "user ref"),
        (lambda: encode_user(2**32, "a"), "user ref"),
        (lambda: encode_project(0, 2**63, Project(id="p")), "modifiedAt"),
        (lambda: encode(wallet(combined_quota=2**63)), "combinedQuota"),
        (lambda: encode(wallet(local_retired_usage=-1)), "localRetiredUsage"),
        (lambda: encode(wallet(flags=2**32)), "wallet flags"),
    ],
)
def test_encoders_refuse_values_the_field_cannot_hold(build: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


# --- one connection -------------------------------------------------------------


def test_a_session_resolves_refs_into_events() -> None:
    session = StreamSession()

    events = session.feed(
        frame(
            UserRecord(0, "Donna#1234"),
            ProjectRecord(0, 1717000500000, project()),
            CategoryRecord(0, category()),
            wallet(workspace_ref=0, flags=WALLET_PROJECT | WALLET_LOCKED),
            wallet(workspace_ref=0, flags=0, combined_quota=10, total_usage=3, last_significant_update_ms=9),
        )
    )

    assert events == [
        ProjectUpdated(project(), 1717000500000),
        WalletUpdated(
            owner=Workspace.project(PROJECT_ID),
            category=category(),
            quota=1000,
            usage=37,
            locked=True,
            last_update_ms=1717000600000,
            retired=0,
            project=project(),
        ),
        # Ref 0 is a user here: users and projects count separately, the flag says which is meant.
        WalletUpdated(Workspace.user("Donna#1234"), category(), 10, 3, False, 9, 0),
    ]


def test_a_changed_project_comes_again_under_its_ref() -> None:
    session = StreamSession()
    session.feed(frame(ProjectRecord(0, 1, project()), CategoryRecord(0, category())))
    renamed = project().model_copy(deep=True)
    renamed.specification.title = "Renamed"
    renamed.status.members = [ProjectMember(username="Eve#2", role="PI")]

    events = session.feed(frame(ProjectRecord(0, 2, renamed), wallet()))

    assert events[0] == ProjectUpdated(renamed, 2)
    assert isinstance(events[1], WalletUpdated)
    assert events[1].project == renamed
    assert session.projects == {0: renamed}


def test_refs_belong_to_one_connection() -> None:
    first, second = StreamSession(), StreamSession()
    first.feed(frame(UserRecord(0, "Donna#1234"), CategoryRecord(0, category())))

    with pytest.raises(StreamProtocolError, match="user ref 0"):
        second.feed(frame(CategoryRecord(0, category()), wallet(flags=0)))


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([CategoryRecord(0, category()), wallet(flags=0)], "user ref 0, which was never sent"),
        ([CategoryRecord(0, category()), wallet(flags=WALLET_PROJECT)], "project ref 0, which was never sent"),
        ([UserRecord(0, "a"), wallet(flags=0, category_ref=3)], "category ref 3, which was never sent"),
        ([CategoryRecord(0, ProductCategory(accounting_unit=AccountingUnit(name="u", name_plural="u")))], "empty name"),
        ([UserRecord(0, "")], "empty username"),
        ([ProjectRecord(0, 1, Project())], "project 0 has no id"),
    ],
)
def test_a_session_refuses_what_it_cannot_resolve(records: list[Record], message: str) -> None:
    with pytest.raises(StreamProtocolError, match=message):
        StreamSession().feed(frame(*records))


def test_a_refused_frame_leaves_the_session_as_it_was() -> None:
    session = StreamSession()
    session.feed(frame(UserRecord(0, "Donna#1234")))

    with pytest.raises(StreamProtocolError):
        session.feed(frame(UserRecord(0, "Mallory#6"), ProjectRecord(0, 1, project()), wallet(category_ref=9)))

    assert session.users == {0: "Donna#1234"}
    assert session.projects == {} and session.categories == {}


def test_a_session_without_the_retired_flag_reads_the_shorter_wallet() -> None:
    session = StreamSession(include_retired=False)
    raw = encode_user(0, "a") + encode_category(0, category()) + encode(wallet(flags=0), include_retired=False)

    [event] = session.feed(raw)

    assert isinstance(event, WalletUpdated) and event.retired == 0


def test_projects_in_events_are_the_wire_models() -> None:
    [event] = StreamSession().feed(encode_project(0, 1, json.dumps(PROJECT_JSON)))

    assert isinstance(event, ProjectUpdated)
    assert dump(event.project)["status"]["members"][0] == {"username": "Donna#1234", "role": "PI"}
    assert event.project.status == ProjectStatus.model_validate(PROJECT_JSON["status"])

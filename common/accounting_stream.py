"""The wire codec of UCloud/Core's accounting event stream, ``/api/accounting/notifications``.

A provider opens the websocket, sends one auth frame (op 0) with its replay point, and Core
answers with binary frames of records: users (op 4), projects (op 2), product categories
(op 3) and wallets (op 1). Wallets name their owner and category by *ref*, a number the
connection gave the user, project or category in an earlier record; refs count from 0 per
kind and per connection. Later the provider may ask for one user's wallets again (op 5).

All integers are big-endian; a string is a ``u32`` byte length and UTF-8 bytes. One frame
may hold several records back to back. This module is pure: ``decode`` turns a frame into
records, ``StreamSession`` resolves the refs of one connection into events, and the
``encode_*`` functions write what Core writes (the Core stand-in uses them). Facts from
PROTOCOL-ACCOUNTING.md §1 (core2 ``accounting/provider_notifications.go``, IM2
``controller/event.go``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, Self, TypeVar, assert_never

from pydantic import ValidationError

from ucim.common.protocol import GO_ZERO_TIME_MS, ProductCategory, Project

OP_AUTH: Final = 0
OP_WALLET: Final = 1
OP_PROJECT: Final = 2
OP_CATEGORY: Final = 3
OP_USER: Final = 4
OP_REPLAY_USER: Final = 5

# The replay point IM2 sends when it has stored none (Go's zero time): Core replays everything.
REPLAY_EVERYTHING_MS: Final = GO_ZERO_TIME_MS
# Auth flag bit 0: every wallet record ends with a u64 localRetiredUsage (IM2 always sets it).
FLAG_INCLUDE_RETIRED: Final = 0x1
# Wallet flags.
WALLET_LOCKED: Final = 0x1
WALLET_PROJECT: Final = 0x2  # the workspace ref is a project ref, else a user ref

# Quoted in error messages; a hostile string must not flood a log line.
_QUOTE_LIMIT: Final = 80


class StreamProtocolError(Exception):
    """A frame that does not follow the protocol; the session that received it is dropped."""


# --- records ------------------------------------------------------------------


@dataclass(frozen=True)
class UserRecord:
    """Op 4: ``ref`` names ``username`` from now on."""

    ref: int
    username: str


@dataclass(frozen=True)
class ProjectRecord:
    """Op 2: ``ref`` names ``project``; also the event that the project changed."""

    ref: int
    modified_at_ms: int
    project: Project


@dataclass(frozen=True)
class CategoryRecord:
    """Op 3: ``ref`` names ``category``."""

    ref: int
    category: ProductCategory


@dataclass(frozen=True)
class WalletRecord:
    """Op 1: the state of one wallet (owner, category) after a significant update."""

    workspace_ref: int
    category_ref: int
    combined_quota: int
    total_usage: int
    flags: int
    last_significant_update_ms: int
    local_retired_usage: int = 0  # on the wire only with FLAG_INCLUDE_RETIRED; always 0 in core2

    @property
    def locked(self) -> bool:
        return bool(self.flags & WALLET_LOCKED)

    @property
    def owned_by_project(self) -> bool:
        return bool(self.flags & WALLET_PROJECT)


Record = UserRecord | ProjectRecord | CategoryRecord | WalletRecord


@dataclass(frozen=True)
class Auth:
    """Op 0, the first frame a provider sends: replay what changed since ``replay_from_ms``."""

    replay_from_ms: int
    flags: int
    token: str


@dataclass(frozen=True)
class ReplayUser:
    """Op 5: send this user's personal wallets, and their projects with wallets here, again."""

    username: str


ClientFrame = Auth | ReplayUser


# --- reading ------------------------------------------------------------------

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_S64 = struct.Struct(">q")


def _quote(text: str) -> str:
    """``text`` escaped (newlines and all) and cut short, for an error message."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"


class _Reader:
    """Reads big-endian fields off a frame; running short raises StreamProtocolError naming the field."""

    def __init__(self, frame: bytes) -> None:
        self._frame = memoryview(frame)
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self._frame) - self.offset

    def _take(self, size: int, what: str) -> memoryview:
        if size > self.remaining:
            raise StreamProtocolError(
                f"truncated frame: {what} needs {size} bytes at offset {self.offset}, {self.remaining} left"
            )
        chunk = self._frame[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def _unpack(self, layout: struct.Struct, what: str) -> int:
        value: int = layout.unpack(self._take(layout.size, what))[0]
        return value

    def u8(self, what: str) -> int:
        return self._unpack(_U8, what)

    def u32(self, what: str) -> int:
        return self._unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self._unpack(_U64, what)

    def s64(self, what: str) -> int:
        return self._unpack(_S64, what)

    def string(self, what: str) -> str:
        size = self.u32(f"the length of {what}")
        raw = self._take(size, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as error:
            raise StreamProtocolError(f"{what} at offset {self.offset - size} is not UTF-8: {error.reason}") from None


_Payload = TypeVar("_Payload", Project, ProductCategory)


def _parse_json(model: type[_Payload], text: str, what: str) -> _Payload:
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise StreamProtocolError(
            f"{what} is not a {model.__name__}: {where}: {first['msg']}; got {_quote(text)}"
        ) from None


def _read_record(reader: _Reader, include_retired: bool) -> Record:
    start = reader.offset
    op = reader.u8("the opcode")
    if op == OP_USER:
        return UserRecord(reader.u32("the user ref"), reader.string("the username"))
    if op == OP_PROJECT:
        ref = reader.u32("the project ref")
        modified_at = reader.s64("the project's modifiedAt")
        project = _parse_json(Project, reader.string("the project JSON"), f"project {ref}")
        return ProjectRecord(ref, modified_at, project)
    if op == OP_CATEGORY:
        ref = reader.u32("the category ref")
        return CategoryRecord(ref, _parse_json(ProductCategory, reader.string("the category JSON"), f"category {ref}"))
    if op == OP_WALLET:
        return WalletRecord(
            workspace_ref=reader.u32("the wallet's workspace ref"),
            category_ref=reader.u32("the wallet's category ref"),
            combined_quota=reader.s64("the wallet's combinedQuota"),
            total_usage=reader.s64("the wallet's totalUsage"),
            flags=reader.u32("the wallet's flags"),
            last_significant_update_ms=reader.s64("the wallet's lastSignificantUpdate"),
            local_retired_usage=reader.u64("the wallet's localRetiredUsage") if include_retired else 0,
        )
    raise StreamProtocolError(f"unknown opcode {op} at offset {start}")


def decode(frame: bytes, *, include_retired: bool = True) -> list[Record]:
    """Every record of one Core → provider frame, in order.

    ``include_retired`` says whether the auth frame asked for ``localRetiredUsage`` (it
    changes the wallet layout); ucim always asks for it.
    """
    reader = _Reader(frame)
    records = []
    while reader.remaining:
        records.append(_read_record(reader, include_retired))
    return records


def decode_client_frame(frame: bytes) -> ClientFrame:
    """A provider → Core frame; trailing bytes are refused (Core ignores them, but no client sends any)."""
    reader = _Reader(frame)
    op = reader.u8("the opcode")
    result: ClientFrame
    if op == OP_AUTH:
        # Core reads replayFrom as s64: the u64 the IM writes is two's complement.
        replay_from = reader.s64("replayFrom")
        flags = reader.u64("the auth flags")
        result = Auth(replay_from, flags, reader.string("the access token"))
    elif op == OP_REPLAY_USER:
        result = ReplayUser(reader.string("the username"))
    else:
        raise StreamProtocolError(f"unknown client opcode {op}")
    if reader.remaining:
        raise StreamProtocolError(f"{reader.remaining} bytes after the op {op} frame")
    return result


# --- writing ------------------------------------------------------------------


def _pack(layout: struct.Struct, value: int, what: str) -> bytes:
    try:
        return layout.pack(value)
    except struct.error:
        kind = {_U8: "u8", _U32: "u32", _U64: "u64", _S64: "s64"}[layout]
        raise ValueError(f"{what} {value} does not fit a {kind}") from None


def encode_string(text: str) -> bytes:
    """A protocol string: u32 byte length, then UTF-8."""
    raw = text.encode()
    return _pack(_U32, len(raw), "the string length") + raw


def auth_frame(replay_from_ms: int, token: str, *, flags: int = FLAG_INCLUDE_RETIRED) -> bytes:
    """Op 0. ``replay_from_ms`` may be negative (Go's zero time replays everything): written as two's complement."""
    return (
        _pack(_U8, OP_AUTH, "the opcode")
        + _pack(_S64, replay_from_ms, "replayFrom")
        + _pack(_U64, flags, "the auth flags")
        + encode_string(token)
    )


def replay_user_frame(username: str) -> bytes:
    """Op 5."""
    return _pack(_U8, OP_REPLAY_USER, "the opcode") + encode_string(username)


def encode_user(ref: int, username: str) -> bytes:
    return _pack(_U8, OP_USER, "the opcode") + _pack(_U32, ref, "the user ref") + encode_string(username)


def encode_project(ref: int, modified_at_ms: int, project: Project | str) -> bytes:
    """Op 2; ``project`` as a model, or as raw JSON (which tests use to send a broken one)."""
    text = project if isinstance(project, str) else project.model_dump_json(by_alias=True)
    return (
        _pack(_U8, OP_PROJECT, "the opcode")
        + _pack(_U32, ref, "the project ref")
        + _pack(_S64, modified_at_ms, "modifiedAt")
        + encode_string(text)
    )


def encode_category(ref: int, category: ProductCategory | str) -> bytes:
    """Op 3; ``category`` as a model, or as raw JSON."""
    text = category if isinstance(category, str) else category.model_dump_json(by_alias=True)
    return _pack(_U8, OP_CATEGORY, "the opcode") + _pack(_U32, ref, "the category ref") + encode_string(text)


def encode_wallet(
    workspace_ref: int,
    category_ref: int,
    *,
    combined_quota: int,
    total_usage: int,
    flags: int,
    last_update_ms: int,
    local_retired_usage: int | None = 0,
) -> bytes:
    """Op 1; ``local_retired_usage`` None leaves the field out (a session without FLAG_INCLUDE_RETIRED)."""
    retired = b"" if local_retired_usage is None else _pack(_U64, local_retired_usage, "localRetiredUsage")
    return (
        _pack(_U8, OP_WALLET, "the opcode")
        + _pack(_U32, workspace_ref, "the workspace ref")
        + _pack(_U32, category_ref, "the category ref")
        + _pack(_S64, combined_quota, "combinedQuota")
        + _pack(_S64, total_usage, "totalUsage")
        + _pack(_U32, flags, "the wallet flags")
        + _pack(_S64, last_update_ms, "lastSignificantUpdate")
        + retired
    )


def encode(record: Record, *, include_retired: bool = True) -> bytes:
    """Any record, as ``decode`` reads it back."""
    match record:
        case UserRecord(ref, username):
            return encode_user(ref, username)
        case ProjectRecord(ref, modified_at, project):
            return encode_project(ref, modified_at, project)
        case CategoryRecord(ref, category):
            return encode_category(ref, category)
        case WalletRecord():
            return encode_wallet(
                record.workspace_ref,
                record.category_ref,
                combined_quota=record.combined_quota,
                total_usage=record.total_usage,
                flags=record.flags,
                last_update_ms=record.last_significant_update_ms,
                local_retired_usage=record.local_retired_usage if include_retired else None,
            )
        case _:
            assert_never(record)


# --- one connection's view ----------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """Who owns a wallet: a project (by id) or a user's personal workspace (by UCloud username)."""

    kind: Literal["project", "user"]
    id: str

    @classmethod
    def project(cls, project_id: str) -> Self:
        return cls("project", project_id)

    @classmethod
    def user(cls, username: str) -> Self:
        return cls("user", username)


@dataclass(frozen=True)
class ProjectUpdated:
    """A project was created, renamed or changed members (or is replayed)."""

    project: Project
    modified_at_ms: int


@dataclass(frozen=True)
class WalletUpdated:
    """A wallet's allocation or lock changed (or is replayed). Amounts are in the category's unit."""

    owner: Workspace
    category: ProductCategory
    quota: int
    usage: int
    locked: bool
    last_update_ms: int
    retired: int
    # The owning project as last sent (IM2 skips wallets of projects that cannot consume resources).
    project: Project | None = None


StreamEvent = ProjectUpdated | WalletUpdated


class StreamSession:
    """The refs of one connection, turning each frame into events.

    A frame is applied whole or not at all: a bad record anywhere raises StreamProtocolError
    and leaves the session as it was (the caller drops the connection anyway, as IM2 does).
    """

    def __init__(self, *, include_retired: bool = True) -> None:
        self.include_retired = include_retired
        self.users: dict[int, str] = {}
        self.projects: dict[int, Project] = {}
        self.categories: dict[int, ProductCategory] = {}

    def feed(self, frame: bytes) -> list[StreamEvent]:
        records = decode(frame, include_retired=self.include_retired)
        users, projects, categories = dict(self.users), dict(self.projects), dict(self.categories)
        events: list[StreamEvent] = []
        for record in records:
            match record:
                case UserRecord(ref, username):
                    if not username:
                        raise StreamProtocolError(f"user {ref} has an empty username")
                    users[ref] = username
                case ProjectRecord(ref, modified_at, project):
                    if not project.id:
                        raise StreamProtocolError(f"project {ref} has no id")
                    projects[ref] = project  # a changed project comes again under its ref
                    events.append(ProjectUpdated(project, modified_at))
                case CategoryRecord(ref, category):
                    if not category.name:
                        raise StreamProtocolError(f"category {ref} has an empty name")
                    categories[ref] = category
                case WalletRecord():
                    events.append(_resolve_wallet(record, users, projects, categories))
        self.users, self.projects, self.categories = users, projects, categories
        return events


def _resolve_wallet(
    record: WalletRecord,
    users: dict[int, str],
    projects: dict[int, Project],
    categories: dict[int, ProductCategory],
) -> WalletUpdated:
    category = categories.get(record.category_ref)
    if category is None:
        raise StreamProtocolError(f"a wallet names category ref {record.category_ref}, which was never sent")
    project = None
    if record.owned_by_project:
        project = projects.get(record.workspace_ref)
        if project is None:
            raise StreamProtocolError(f"a wallet names project ref {record.workspace_ref}, which was never sent")
        owner = Workspace.project(project.id)
    else:
        username = users.get(record.workspace_ref)
        if username is None:
            raise StreamProtocolError(f"a wallet names user ref {record.workspace_ref}, which was never sent")
        owner = Workspace.user(username)
    return WalletUpdated(
        owner=owner,
        category=category,
        quota=record.combined_quota,
        usage=record.total_usage,
        locked=record.locked,
        last_update_ms=record.last_significant_update_ms,
        retired=record.local_retired_usage,
        project=project,
    )

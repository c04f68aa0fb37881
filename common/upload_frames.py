"""UCloud's WEBSOCKET_V2 upload framing: many files over one websocket (PROTOCOL-SCHEMAS §7.4).

Every frame is binary and big-endian; a string is a ``u32`` byte length and UTF-8. A frame
holds one or more messages, each an opcode (``u8``) and its body:

* OK ``i32 fileId`` (server → client): send this file's data now;
* CHUNK ``i32 fileId`` + bytes (client → server): the data is the rest of the frame;
* SKIP ``i32 fileId`` (both): the server does not need the file / the client gives it up;
* LISTING (client → server): entries ``i32 fileId, i64 size, i64 modifiedAt (ms), string path``
  filling the rest of the frame, with no opcode repeated per entry;
* FILES_COMPLETED ``i32 count`` (server → client): how many files are done, cumulatively;
* CLOSE (client → server, no body): the client finished.

Opcode 1 (CHECKSUM) is reserved and never sent. CHUNK and LISTING end their frame, the
other messages may follow each other. The instance (``ucim.user_sidecar.folder_uploads``)
parses the client's side, the Core stand-in's client (``ucim.testing.folder_upload_client``)
the server's; both write with the encoders here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Op(IntEnum):
    OK = 0
    CHECKSUM = 1  # reserved by the protocol, not implemented by anyone
    CHUNK = 2
    SKIP = 3
    LISTING = 4
    FILES_COMPLETED = 5
    CLOSE = 6


# The web client's LISTING frames are at most 64 KiB.
LISTING_FRAME_BYTES: Final = 64 << 10
# A CHUNK frame: the opcode, the file id and at most the CHUNKED protocol's largest chunk.
MAX_CHUNK_DATA: Final = 32_000_000
MAX_FRAME_BYTES: Final = MAX_CHUNK_DATA + 5
# A path in a listing: the kernel's PATH_MAX.
MAX_PATH_BYTES: Final = 4096

_ID: Final = struct.Struct(">i")
_OP_ID: Final = struct.Struct(">Bi")
_ENTRY: Final = struct.Struct(">iqqI")


class FrameError(ValueError):
    """A frame that does not follow the protocol; the message says where."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a LISTING: ``path`` is relative to the uploaded folder."""

    file_id: int
    size: int
    modified_at: int  # ms since the epoch
    path: str


@dataclass(frozen=True, slots=True)
class Chunk:
    file_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class Skip:
    file_id: int


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Ok:
    file_id: int


@dataclass(frozen=True, slots=True)
class Completed:
    count: int


ClientMessage = Entry | Chunk | Skip | Close
ServerMessage = Ok | Skip | Completed


# --- the client's frames (what the server reads) ------------------------------


def parse_client_frame(frame: bytes) -> list[ClientMessage]:
    """The messages of one client frame, a LISTING's entries one by one; FrameError if malformed."""
    view = memoryview(frame)
    messages: list[ClientMessage] = []
    at = 0
    while at < len(view):
        op, at = view[at], at + 1
        if op == Op.LISTING:
            messages.extend(_entries(view, at))
            return messages
        if op == Op.CHUNK:
            file_id = _id(view, at, "CHUNK")
            messages.append(Chunk(file_id, view[at + _ID.size :]))
            return messages
        if op == Op.SKIP:
            messages.append(Skip(_id(view, at, "SKIP")))
            at += _ID.size
        elif op == Op.CLOSE:
            messages.append(Close())
        else:
            raise FrameError(f"opcode {op} at byte {at - 1} is not one a client sends")
    return messages


def _id(view: memoryview, at: int, what: str) -> int:
    if len(view) - at < _ID.size:
        raise FrameError(f"{what} at byte {at - 1} ends before its file id")
    return int(_ID.unpack_from(view, at)[0])


def _entries(view: memoryview, at: int) -> Iterator[Entry]:
    while at < len(view):
        if len(view) - at < _ENTRY.size:
            raise FrameError(f"the listing entry at byte {at} is cut off")
        file_id, size, modified_at, length = _ENTRY.unpack_from(view, at)
        at += _ENTRY.size
        if length > MAX_PATH_BYTES or len(view) - at < length:
            raise FrameError(f"the path of file {file_id} is cut off or longer than {MAX_PATH_BYTES} bytes")
        if size < 0:
            raise FrameError(f"file {file_id} has a negative size")
        try:
            path = bytes(view[at : at + length]).decode("utf-8")
        except UnicodeDecodeError as error:
            raise FrameError(f"the path of file {file_id} is not UTF-8") from error
        at += length
        yield Entry(file_id, size, modified_at, path)


def encode_listing(entries: Iterable[Entry], frame_bytes: int = LISTING_FRAME_BYTES) -> list[bytes]:
    """LISTING frames of at most ``frame_bytes`` each (an entry whose path alone is larger gets its own)."""
    frames: list[bytes] = []
    frame = bytearray([Op.LISTING])
    for entry in entries:
        path = entry.path.encode("utf-8")
        encoded = _ENTRY.pack(entry.file_id, entry.size, entry.modified_at, len(path)) + path
        if len(frame) > 1 and len(frame) + len(encoded) > frame_bytes:
            frames.append(bytes(frame))
            frame = bytearray([Op.LISTING])
        frame += encoded
    if len(frame) > 1:
        frames.append(bytes(frame))
    return frames


def encode_chunk(file_id: int, data: bytes | memoryview) -> bytes:
    return _OP_ID.pack(Op.CHUNK, file_id) + data


def encode_skip(file_id: int) -> bytes:
    return _OP_ID.pack(Op.SKIP, file_id)


def encode_close() -> bytes:
    return bytes([Op.CLOSE])


# --- the server's frames (what the client reads) ------------------------------


def encode_server(messages: Iterable[ServerMessage]) -> bytes:
    """The server's messages in one frame."""
    frame = bytearray()
    for message in messages:
        if isinstance(message, Ok):
            frame += _OP_ID.pack(Op.OK, message.file_id)
        elif isinstance(message, Skip):
            frame += _OP_ID.pack(Op.SKIP, message.file_id)
        else:
            frame += _OP_ID.pack(Op.FILES_COMPLETED, message.count)
    return bytes(frame)


def parse_server_frame(frame: bytes) -> list[ServerMessage]:
    view = memoryview(frame)
    messages: list[ServerMessage] = []
    at = 0
    while at < len(view):
        op = view[at]
        if op not in (Op.OK, Op.SKIP, Op.FILES_COMPLETED) or len(view) - at < _OP_ID.size:
            raise FrameError(f"opcode {op} at byte {at} is not a server message, or is cut off")
        value = int(_ID.unpack_from(view, at + 1)[0])
        messages.append(Ok(value) if op == Op.OK else Skip(value) if op == Op.SKIP else Completed(value))
        at += _OP_ID.size
    return messages

"""WEBSOCKET_V2 framing (PROTOCOL-SCHEMAS §7.4): byte order, message layout, what a frame may hold."""

from __future__ import annotations

import struct

import pytest

from ucim.common.upload_frames import (
    LISTING_FRAME_BYTES,
    Chunk,
    Close,
    Completed,
    Entry,
    FrameError,
    Ok,
    Op,
    Skip,
    encode_chunk,
    encode_close,
    encode_listing,
    encode_server,
    encode_skip,
    parse_client_frame,
    parse_server_frame,
)


def test_opcodes_are_the_protocols() -> None:
    assert [op.value for op in Op] == list(range(7))
    assert tuple(range(7)) == (Op.OK, Op.CHECKSUM, Op.CHUNK, Op.SKIP, Op.LISTING, Op.FILES_COMPLETED, Op.CLOSE)


def test_a_listing_entry_is_big_endian_with_a_length_prefixed_utf8_path() -> None:
    (frame,) = encode_listing([Entry(1, 258, 1_700_000_000_123, "a/ø.txt")])
    path = "a/ø.txt".encode()
    assert frame == (
        b"\x04"
        + b"\x00\x00\x00\x01"
        + b"\x00\x00\x00\x00\x00\x00\x01\x02"
        + struct.pack(">q", 1_700_000_000_123)
        + len(path).to_bytes(4, "big")
        + path
    )
    assert parse_client_frame(frame) == [Entry(1, 258, 1_700_000_000_123, "a/ø.txt")]


def test_a_listing_fills_the_rest_of_its_frame_without_repeated_opcodes() -> None:
    entries = [Entry(i, i * 10, 1000 + i, f"folder/file-{i}") for i in range(3)]
    (frame,) = encode_listing(entries)
    assert frame[0] == Op.LISTING
    assert len(frame) == 1 + sum(24 + len(entry.path) for entry in entries)  # one opcode, then bare entries
    assert parse_client_frame(frame) == entries


def test_listings_are_split_into_frames_of_at_most_64_kib() -> None:
    entries = [Entry(i, 1, 0, f"{'x' * 200}/{i}") for i in range(1000)]
    frames = encode_listing(entries)
    assert len(frames) > 1
    assert all(len(frame) <= LISTING_FRAME_BYTES for frame in frames)
    assert [entry for frame in frames for entry in parse_client_frame(frame)] == entries


def test_a_chunk_is_the_rest_of_its_frame() -> None:
    frame = encode_chunk(7, b"\x06\x03data")  # bytes that look like opcodes are data
    assert frame[:5] == b"\x02\x00\x00\x00\x07"
    (chunk,) = parse_client_frame(frame)
    assert isinstance(chunk, Chunk)
    assert (chunk.file_id, bytes(chunk.data)) == (7, b"\x06\x03data")
    (empty,) = parse_client_frame(encode_chunk(8, b""))
    assert isinstance(empty, Chunk) and len(empty.data) == 0


def test_fixed_size_messages_may_share_a_frame_and_a_listing_may_end_it() -> None:
    (listing,) = encode_listing([Entry(3, 0, 0, "z")])
    frame = encode_skip(1) + encode_skip(2) + listing
    assert parse_client_frame(frame) == [Skip(1), Skip(2), Entry(3, 0, 0, "z")]
    assert parse_client_frame(encode_skip(9) + encode_close()) == [Skip(9), Close()]
    assert parse_client_frame(encode_skip(9) + encode_chunk(4, b"ab"))[0] == Skip(9)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\x00\x00\x00\x00\x01", "opcode 0 at byte 0 is not one a client sends"),
        (b"\x01", "opcode 1"),
        (b"\x09", "opcode 9"),
        (b"\x03\x00\x00", "SKIP at byte 0 ends before its file id"),
        (b"\x02\x00", "CHUNK at byte 0 ends before its file id"),
        (b"\x04\x00\x00\x00\x01\x00", "the listing entry at byte 1 is cut off"),
        (encode_listing([Entry(1, 1, 0, "abc")])[0][:-1], "the path of file 1 is cut off"),
        (encode_listing([Entry(1, 1, 0, "abc")])[0][:-3] + b"\xff\xfe\xfd", "the path of file 1 is not UTF-8"),
        (encode_listing([Entry(1, -1, 0, "abc")])[0], "file 1 has a negative size"),
        (b"\x04" + struct.pack(">iqqI", 1, 1, 0, 5000) + b"x" * 5000, "longer than 4096 bytes"),
    ],
)
def test_malformed_client_frames(frame: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        parse_client_frame(frame)


def test_the_servers_messages_go_in_one_frame() -> None:
    frame = encode_server([Ok(1), Skip(2), Completed(3)])
    assert frame == b"\x00\x00\x00\x00\x01\x03\x00\x00\x00\x02\x05\x00\x00\x00\x03"
    assert parse_server_frame(frame) == [Ok(1), Skip(2), Completed(3)]
    with pytest.raises(FrameError):
        parse_server_frame(b"\x02\x00\x00\x00\x01")
    with pytest.raises(FrameError):
        parse_server_frame(b"\x05\x00")

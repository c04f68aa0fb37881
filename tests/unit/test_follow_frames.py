"""The log follow websocket's frames, as Core reads them (PROTOCOL-INTERACTIVE §1.2)."""

from __future__ import annotations

import json
import re

import pytest

from ucim.common import follow_frames as frames
from ucim.testing.core_follow import log_text


def init(call: str = "jobs.provider.ucim.follow", **payload: object) -> str:
    body = {"type": "init", "job": {"id": "42"}, **payload}
    return json.dumps({"call": call, "streamId": "7", "payload": body, "bearer": "", "project": None})


def test_core_s_init_names_the_job_and_its_stream() -> None:
    envelope = frames.parse_request(init(), "ucim")
    assert (envelope.stream_id, envelope.payload.type, frames.job_id_of(envelope)) == ("7", "init", "42")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not a follow request"),
        (init(call="files.provider.ucim.streamingSearch"), "unknown call"),
        (init(call="jobs.provider.other.follow"), "unknown call"),
        (json.dumps({"call": "jobs.provider.ucim.follow", "payload": {"type": "tail"}}), "payload.type"),
    ],
)
def test_other_frames_are_refused_readably(text: str, why: str) -> None:
    with pytest.raises(frames.FrameError, match=why):
        frames.parse_request(text, "ucim")


def test_an_init_without_a_job_id_is_refused() -> None:
    with pytest.raises(frames.FrameError, match=r"job\.id"):
        frames.job_id_of(frames.parse_request(init(job={}), "ucim"))


def test_messages_end_and_refusal_have_im2_s_shapes() -> None:
    message = frames.log_message("s1", "7", 2, "stderr", "oops\n")
    assert message == {
        "type": "message",
        "payload": {"streamId": "s1", "rank": 2, "stdout": None, "stderr": "oops\n", "channel": None},
        "streamId": "7",
    }
    end = frames.end_frame("s1", "7")
    assert end["type"] == "response" and end["status"] == 200
    assert end["payload"] == {"streamId": "s1", "rank": 0, "stdout": None, "stderr": None, "channel": None}
    refusal = frames.refusal_frame("7", 403, "not yours")
    assert refusal["status"] == 403 and refusal["payload"]["why"] == "Not yours"  # error_body capitalises
    assert re.fullmatch(r"\d{19}[0-9a-f]{32}", frames.session_id())


def test_core_shows_the_messages_of_one_rank_and_stream_in_order() -> None:
    shown = [
        frames.PING,
        frames.log_message("s", "0", 0, "stdout", "a\n"),
        frames.log_message("s", "0", 1, "stdout", "x"),
    ]
    shown += [frames.log_message("s", "0", 0, "stderr", "e"), frames.log_message("s", "0", 0, "stdout", "b\n")]
    assert log_text(shown) == "a\nb\n"
    assert log_text(shown, rank=1) == "x"
    assert log_text(shown, stream="stderr") == "e"

"""The frames of the log follow websocket (``/ucloud/jobs.provider.<id>/websocket``), as Core and IM2 write them.

Core sends one text frame, ``{"call": "jobs.provider.<id>.follow", "streamId": …, "payload": {"type": "init",
"job": Job}}`` (``{"type": "cancel", …}`` is also accepted); the provider answers with log messages, a ping
right away and every 30 s, and one response frame when the stream ends. Core reads the ``payload`` of every
frame as a ``JobLogMessage`` (so a ping is an empty message to it).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ucim.common.protocol import error_body

PING: Final = {"ping": "pong"}
PING_SECONDS: Final = 30.0


def follow_call(provider_id: str) -> str:
    return f"jobs.provider.{provider_id}.follow"


class FollowPayload(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    type: Literal["init", "cancel"]
    job: dict[str, Any] | None = None  # the full Job; only its id is used
    stream_id: str | None = Field(default=None, alias="streamId")  # cancel: the follow session


class FollowEnvelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    call: str
    stream_id: str = Field(default="", alias="streamId", max_length=256)
    payload: FollowPayload


class FrameError(ValueError):
    """A frame from Core that this provider cannot take; the message says why."""


def parse_request(text: str, provider_id: str) -> FollowEnvelope:
    """Core's frame, or FrameError: not JSON, not the shape, or a call other than this provider's follow."""
    try:
        envelope = FollowEnvelope.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or "frame"
        raise FrameError(f"not a follow request: {where}: {first['msg']}") from error
    if envelope.call != follow_call(provider_id):
        raise FrameError(f"unknown call {envelope.call[:100]!r}; this socket serves {follow_call(provider_id)}")
    return envelope


def job_id_of(envelope: FollowEnvelope) -> str:
    job = envelope.payload.job or {}
    job_id = job.get("id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
        raise FrameError("the init payload names no job (job.id)")
    return job_id


def session_id() -> str:
    """A follow session id as IM2 makes one (RandomToken(16)): UnixNano digits, then 32 hex characters."""
    return f"{time.time_ns()}{secrets.token_hex(16)}"


def log_message(
    session: str, request_stream: str, rank: int, stream: Literal["stdout", "stderr"], text: str
) -> dict[str, Any]:
    payload = {"streamId": session, "rank": rank, "stdout": None, "stderr": None, "channel": None}
    payload[stream] = text
    return {"type": "message", "payload": payload, "streamId": request_stream}


def end_frame(session: str, request_stream: str) -> dict[str, Any]:
    payload = {"streamId": session, "rank": 0, "stdout": None, "stderr": None, "channel": None}
    return {"type": "response", "status": 200, "streamId": request_stream, "payload": payload}


def refusal_frame(request_stream: str, status: int, why: str) -> dict[str, Any]:
    """A follow refused (no such job, not the user's): a response with the status and UCloud's error body."""
    return {"type": "response", "status": status, "streamId": request_stream, "payload": error_body(status, why)}

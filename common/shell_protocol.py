"""Shell sessions: Core's calls, the browser's websocket frames, and the instance's API for them.

Core asks for a terminal with ``jobs/interactiveSession`` (``sessionType`` SHELL) or
``jobs/openTerminalInFolder`` and gets an ``OpenSession`` of type ``shell`` with a one-time
``sessionIdentifier``; the browser then opens ``<domainOverride>/ucloud/<P>/websocket?session=<t>``
and speaks the frames below (PROTOCOL-INTERACTIVE §5). The gateway relays the socket to the
user's instance, which made the token, checks it and runs the terminal as its user.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from ucim.common.protocol import Job, WireModel

# The instance's routes (through the bridge ingress, like every instance call).
SHELL_SESSIONS_PATH: Final = "/shell/sessions"  # POST ShellSessionRequest -> ShellSessionToken
SHELL_WEBSOCKET_PATH: Final = "/shell/websocket"  # GET ?session=<token>, upgraded to a websocket

# A token as the instance makes it: decimal nanoseconds then 64 hex digits (IM2's RandomToken(32)).
TOKEN_PATTERN: Final = re.compile(r"^[0-9]{1,20}[0-9a-f]{64}$")
MAX_TOKEN_CHARS: Final = 84
# A terminal's size: anything a screen can show, with room; a larger value is hostile, not a screen.
MAX_TERMINAL_CELLS: Final = 1000
# A node name as Slurm prints it (scontrol show hostnames).
NODE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_RANK: Final = 100_000
MAX_STREAM_ID_CHARS: Final = 64


def is_token(text: str) -> bool:
    return len(text) <= MAX_TOKEN_CHARS and TOKEN_PATTERN.match(text) is not None


# --- Core's calls -----------------------------------------------------------------


class InteractiveSessionItem(WireModel):
    """An item of ``jobs/interactiveSession``."""

    job: Job
    rank: int = Field(default=0, ge=0, le=MAX_RANK)
    session_type: Literal["WEB", "VNC", "SHELL"]
    target: str | None = None


class OpenTerminalInFolderItem(WireModel):
    """An item of ``jobs/openTerminalInFolder``: a UCloud folder, ``/<drive id>/path``."""

    folder: str = Field(min_length=2, max_length=4096)


class ShellSession(WireModel):
    """``OpenSession`` of type shell; for a folder ``jobId`` is the folder's path (as IM2 answers)."""

    type: Literal["shell"] = "shell"
    job_id: str
    rank: int = 0
    session_identifier: str
    domain_override: str = ""


# --- the instance's API -----------------------------------------------------------


class _InstanceModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class JobShell(_InstanceModel):
    """A terminal on the node of ``rank`` in the running Slurm job ``slurm_job_id`` (its ``nodeList``)."""

    kind: Literal["job"] = "job"
    slurm_job_id: int = Field(ge=1)
    node_list: str = Field(min_length=1, max_length=4096)
    rank: int = Field(default=0, ge=0, le=MAX_RANK)


class FolderShell(_InstanceModel):
    """A login shell on the frontend in ``folder`` (a UCloud path) of the drive ``drive`` (its locator)."""

    kind: Literal["folder"] = "folder"
    folder: str = Field(min_length=2, max_length=4096)
    drive: str = Field(min_length=1, max_length=64)


ShellSessionRequest = Annotated[JobShell | FolderShell, Field(discriminator="kind")]
SHELL_SESSION_REQUEST: Final[TypeAdapter[JobShell | FolderShell]] = TypeAdapter(ShellSessionRequest)


class ShellSessionToken(_InstanceModel):
    token: str


# --- the websocket's frames (browser -> instance) ---------------------------------

Cells = Annotated[int, Field(strict=True, ge=1, le=MAX_TERMINAL_CELLS)]


class Initialize(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    type: Literal["initialize"]
    session_identifier: str = Field(max_length=MAX_TOKEN_CHARS)
    cols: Cells = 80
    rows: Cells = 24


class Input(BaseModel):
    type: Literal["input"]
    data: str = Field(max_length=1 << 20)


class Resize(BaseModel):
    type: Literal["resize"]
    cols: Cells
    rows: Cells


ShellRequest = Annotated[Initialize | Input | Resize, Field(discriminator="type")]


class Envelope(BaseModel):
    """The browser's envelope; ``call``, ``project`` and ``signedIntent`` are not read (as IM2)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    stream_id: str = Field(default="0", max_length=MAX_STREAM_ID_CHARS)
    payload: ShellRequest


ENVELOPE: Final[TypeAdapter[Envelope]] = TypeAdapter(Envelope)


# --- frames instance -> browser ----------------------------------------------------


def message(stream_id: str, payload: dict[str, str]) -> dict[str, object]:
    return {"type": "message", "payload": payload, "streamId": stream_id}


def refused(stream_id: str, status: int, why: str) -> dict[str, object]:
    """A refused request on the stream (ucim's addition; IM2 never answers with a response frame)."""
    return {"type": "response", "status": status, "streamId": stream_id, "payload": {"why": why}}

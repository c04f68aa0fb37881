"""Web and VNC sessions: Core's OpenSession answers, and the instance's API for them.

Core asks for an interface of a running job with ``jobs/interactiveSession`` (``sessionType``
WEB or VNC). The gateway asks the job owner's instance for a grant: the instance finds the
node of the rank (as it finds a shell's) and answers it with a one-time token (WEB). The browser
then redeems the token at ``authorize-app`` on the job's own host name for a cookie, or opens the
VNC URL; from then on the gateway reaches the job's server through a tunnel to the instance, which
opens the TCP connection to ``node:port`` as its user (``WEB_CONNECT_PATH``). PROTOCOL-INTERACTIVE §3-4.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ucim.common.protocol import WireModel
from ucim.common.resources import MAX_TARGET_CHARS
from ucim.common.shell_protocol import MAX_RANK, NODE_PATTERN

# The instance's routes (through the bridge ingress, like every instance call).
WEB_GRANTS_PATH: Final = "/web/grants"  # POST WebGrantRequest -> WebGrant
WEB_CLAIMS_PATH: Final = "/web/grants/claim"  # POST WebClaim -> WebTarget, once per token
# GET ?node=<node>&port=<port>, upgraded to TCP_UPGRADE: the connection then carries a TCP connection the
# instance opened to node:port as its user (ucim.common.byte_tunnels).
WEB_CONNECT_PATH: Final = "/web/connect"
TCP_UPGRADE: Final = "ucim-tcp"

# A web token as the instance makes it: decimal nanoseconds then 24 hex digits (IM2's RandomToken(12)).
WEB_TOKEN_PATTERN: Final = re.compile(r"^[0-9]{1,20}[0-9a-f]{24}$")
MAX_WEB_TOKEN_CHARS: Final = 44


def is_web_token(text: str) -> bool:
    return len(text) <= MAX_WEB_TOKEN_CHARS and WEB_TOKEN_PATTERN.match(text) is not None


# --- Core's answers ------------------------------------------------------------------


class WebSession(WireModel):
    """``OpenSession`` of type web: Core sends the browser to ``redirectClientTo``."""

    type: Literal["web"] = "web"
    job_id: str
    rank: int
    redirect_client_to: str
    domain_override: str = ""


class VncSession(WireModel):
    """``OpenSession`` of type vnc: noVNC opens ``url`` (a websocket URL once ``http`` is ``ws``)."""

    type: Literal["vnc"] = "vnc"
    job_id: str
    rank: int = 0  # IM2 never sets it
    url: str
    password: str | None = None  # omitted when empty, as IM2
    domain_override: str = ""


# --- the instance's API --------------------------------------------------------------


class _InstanceModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


Node = Field(pattern=NODE_PATTERN)
Port = Field(ge=1, le=65_535)


class WebTarget(_InstanceModel):
    """Where one interface of a job is served: the job's server on ``node:port``."""

    job_id: str = Field(min_length=1, max_length=100)
    rank: int = Field(ge=0, le=MAX_RANK)
    target: str | None = Field(default=None, min_length=1, max_length=MAX_TARGET_CHARS)
    node: str = Node
    port: int = Port


class WebGrantRequest(_InstanceModel):
    """An interface of the running Slurm job ``slurm_job_id``, served on ``port`` by the node of ``rank``."""

    job_id: str = Field(min_length=1, max_length=100)
    slurm_job_id: int = Field(ge=1)
    node_list: str = Field(min_length=1, max_length=4096)
    rank: int = Field(ge=0, le=MAX_RANK)
    target: str | None = Field(default=None, min_length=1, max_length=MAX_TARGET_CHARS)
    port: int = Port


class WebGrant(_InstanceModel):
    """The interface's node, and a one-time token that ``WEB_CLAIMS_PATH`` turns into its WebTarget."""

    token: str
    node: str


class WebClaim(_InstanceModel):
    token: str = Field(max_length=MAX_WEB_TOKEN_CHARS)

"""An RFB (VNC) client that goes as far as ServerInit over a websocket, as noVNC does in UCloud's web client.

UCloud's frontend opens a VNC session with noVNC: ``RFB(url, {credentials: {password}, wsProtocols: ["binary"]})``
(PROTOCOL-INTERACTIVE §4), the RFB bytes travelling in binary websocket frames that need not line up with RFB
messages. :func:`rfb_handshake` does the same handshake (RFC 6143): ProtocolVersion 3.8, security type VncAuth
(2) with its DES challenge-response, SecurityResult, ClientInit (shared) and ServerInit, and returns what
ServerInit says: proof that the session reached a real VNC server and that the password was right.

    init = await rfb_handshake("ws://127.0.0.1:5901/websockify", "ucimvnc1")
    init.width, init.height, init.name
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Final

import aiohttp
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

PROTOCOL_VERSION: Final = b"RFB 003.008\n"
VNC_AUTH: Final = 2
CHALLENGE_BYTES: Final = 16


class RfbError(Exception):
    """The session did not reach ServerInit; ``status`` is the HTTP status when the websocket upgrade was refused."""

    def __init__(self, why: str, status: int | None = None) -> None:
        super().__init__(why)
        self.status = status


class RfbAuthenticationError(RfbError):
    """The server refused the password (SecurityResult "failed")."""


@dataclass(frozen=True, slots=True)
class ServerInit:
    width: int
    height: int
    name: str


def vnc_des_key(password: str) -> bytes:
    """VncAuth's DES key: the password's first 8 bytes, NUL-padded, each byte's bits reversed (VNC's d3des quirk)."""
    raw = password.encode()[:8].ljust(8, b"\0")
    return bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)


def vnc_auth_response(challenge: bytes, password: str) -> bytes:
    """The answer to a VncAuth challenge: the challenge, DES-encrypted (ECB) with :func:`vnc_des_key`."""
    # Triple DES with K1 = K2 = K3 is single DES; cryptography has no plain DES.
    encryptor = Cipher(TripleDES(vnc_des_key(password) * 3), modes.ECB()).encryptor()  # noqa: S305 (the protocol's)
    return encryptor.update(challenge) + encryptor.finalize()


class _ByteStream:
    """Exact reads over binary websocket frames, which split or join RFB messages at will."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.buffer = bytearray()

    async def read(self, size: int, what: str) -> bytes:
        while len(self.buffer) < size:
            message = await self.socket.receive()
            if message.type != aiohttp.WSMsgType.BINARY:
                raise RfbError(f"the websocket ended ({message.type.name}) while waiting for {what}")
            self.buffer += message.data
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_u32(self, what: str) -> int:
        (value,) = struct.unpack(">I", await self.read(4, what))
        return int(value)

    async def read_reason(self, what: str) -> str:
        return (await self.read(await self.read_u32(what), what)).decode(errors="replace")


async def rfb_handshake(
    url: str,
    password: str,
    *,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    ssl: SSLContext | bool = True,
    timeout: float = 10.0,  # noqa: ASYNC109 (the whole exchange, with its own clear error)
) -> ServerInit:
    """Connect to ``url`` (``ws:``/``wss:``/``http:``/``https:``) and complete the handshake with ``password``.

    ``headers``/``cookies`` go with the websocket upgrade; ``ssl`` as aiohttp's (False: any certificate). A refused
    upgrade, a server without VncAuth, a broken exchange or none within ``timeout`` seconds is an RfbError, a
    wrong password RfbAuthenticationError.
    """
    try:
        async with asyncio.timeout(timeout), aiohttp.ClientSession(cookies=dict(cookies or {})) as session:
            try:
                socket = await session.ws_connect(
                    url, protocols=("binary",), headers=dict(headers or {}), ssl=ssl, heartbeat=None
                )
            except aiohttp.WSServerHandshakeError as error:
                why = f"the websocket upgrade at {url} was refused: {error.status} {error.message}"
                raise RfbError(why, error.status) from error
            async with socket:
                return await _handshake(_ByteStream(socket), socket, password)
    except TimeoutError:
        raise RfbError(f"no ServerInit from {url} within {timeout} s") from None
    except aiohttp.ClientError as error:
        raise RfbError(f"cannot reach {url}: {error}") from error


async def _handshake(stream: _ByteStream, socket: aiohttp.ClientWebSocketResponse, password: str) -> ServerInit:
    version = await stream.read(len(PROTOCOL_VERSION), "the ProtocolVersion")
    if not version.startswith(b"RFB "):
        raise RfbError(f"not an RFB server: it began with {version!r}")
    await socket.send_bytes(PROTOCOL_VERSION)
    count = (await stream.read(1, "the security types"))[0]
    if count == 0:
        raise RfbError(f"the server refused the connection: {await stream.read_reason('its reason')}")
    types = list(await stream.read(count, "the security types"))
    if VNC_AUTH not in types:
        raise RfbError(f"the server offers security types {types}, not VncAuth ({VNC_AUTH})")
    await socket.send_bytes(bytes([VNC_AUTH]))
    challenge = await stream.read(CHALLENGE_BYTES, "the VncAuth challenge")
    await socket.send_bytes(vnc_auth_response(challenge, password))
    if await stream.read_u32("the SecurityResult") != 0:
        why = await stream.read_reason("the reason of the failure")
        raise RfbAuthenticationError(f"the VNC server refused the password: {why}")
    await socket.send_bytes(b"\x01")  # ClientInit: shared, as noVNC's default
    width, height = struct.unpack(">HH", await stream.read(4, "ServerInit"))
    await stream.read(16, "ServerInit's pixel format")
    name = await stream.read_reason("the desktop name")
    return ServerInit(width=width, height=height, name=name)

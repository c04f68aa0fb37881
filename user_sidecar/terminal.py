"""Terminals as the instance's user: shell sessions, their one-time tokens, and the shell websocket.

``POST SHELL_SESSIONS_PATH`` (from the gateway, for Core's ``interactiveSession`` SHELL or
``openTerminalInFolder``) checks what the terminal will run and answers a token. The token
is this instance's, so it only ever opens a terminal of this user; it is used once (the
websocket that presents it claims it) and expires after a minute unused (``OneTimeTokens``).

``GET SHELL_WEBSOCKET_PATH?session=<token>`` upgrades only for a token it holds (else a 404
with a why), then speaks PROTOCOL-INTERACTIVE §5.2: the first frame must be ``initialize``
with the same token within ``INIT_SECONDS``; then ``input`` and ``resize``, each acked. The
terminal runs:

* for a job: ``srun --overlap --pty --jobid <id> -w <node of rank> bash -l`` (a step inside
  the running allocation, sharing its resources);
* for a folder: ``bash -l`` on the frontend, in the folder, opened as the file calls open
  folders (``paths.Drives``: no symlink followed, never outside its drive).

The socket closes when the program ends; the program's process group ends when the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from ucim.common.protocol import Drive
from ucim.common.shell_protocol import (
    ENVELOPE,
    MAX_STREAM_ID_CHARS,
    NODE_PATTERN,
    SHELL_SESSION_REQUEST,
    SHELL_SESSIONS_PATH,
    SHELL_WEBSOCKET_PATH,
    Envelope,
    FolderShell,
    Initialize,
    Input,
    JobShell,
    Resize,
    ShellSessionToken,
    is_token,
    message,
    refused,
)
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmUnavailableError
from ucim.user_sidecar import audit
from ucim.user_sidecar.keys import DRIVES, SETTINGS, SUBMITTER
from ucim.user_sidecar.metrics import SHELLS
from ucim.user_sidecar.middlewares import error_response
from ucim.user_sidecar.one_time_tokens import OneTimeTokens
from ucim.user_sidecar.paths import PathRefusedError
from ucim.user_sidecar.pty_process import PtyProcess
from ucim.user_sidecar.views import readable

log = logging.getLogger(__name__)

INIT_SECONDS: Final = 30.0  # an uninitialised socket is closed after this (IM2's value)
END_DRAIN_SECONDS: Final = 1.0  # output still coming after the program ended
TERM: Final = "xterm-256color"  # what the browser's xterm.js emulates
_NODE = re.compile(NODE_PATTERN)


@dataclass(frozen=True)
class Command:
    """What a terminal runs, and where."""

    argv: tuple[str, ...]
    cwd: Path


SHELL_TOKENS = web.AppKey("shell_tokens", OneTimeTokens[Command])


# --- what runs ---------------------------------------------------------------------


class CommandRefusedError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def terminal_env(app: web.Application) -> dict[str, str]:
    """The terminal's environment: the instance's clean Slurm environment, and what a terminal needs."""
    slurm = app[SUBMITTER].slurm.config
    env = {**slurm.env, "TERM": TERM, "SHELL": "/bin/bash"}
    if slurm.slurm_conf is not None:
        env["SLURM_CONF"] = str(slurm.slurm_conf)
    return env


def srun_path(app: web.Application) -> str:
    """srun, found as the instance finds Slurm's tools (IM2 execs the bare name without a PATH lookup)."""
    settings, slurm = app[SETTINGS], app[SUBMITTER].slurm.config
    if slurm.bin_dir is not None:
        return str(slurm.bin_dir / "srun")
    return shutil.which(settings.srun_command, path=slurm.env.get("PATH")) or settings.srun_command


async def node_of(slurm: SlurmClient, node_list: str, rank: int) -> str:
    """The node of ``rank`` in the job's node list, expanded as Slurm does."""
    try:
        result = await slurm.run("scontrol", ["show", "hostnames", node_list])
    except SlurmUnavailableError as error:
        raise CommandRefusedError(503, str(error)) from error
    nodes = result.stdout.split()
    if result.returncode != 0 or not nodes:
        raise CommandRefusedError(400, f"the node list {node_list[:100]!r} names no node")
    if rank >= len(nodes):
        raise CommandRefusedError(400, f"rank {rank} is not in the job: it has {len(nodes)} node(s)")
    if not _NODE.match(nodes[rank]):
        raise CommandRefusedError(400, f"{nodes[rank][:100]!r} is not a node name")
    return nodes[rank]


async def job_command(app: web.Application, shell: JobShell) -> Command:
    node = await node_of(app[SUBMITTER].slurm, shell.node_list, shell.rank)
    # --overlap: the step shares the job's CPUs with the running steps (Slurm >= 20.11 refuses otherwise).
    argv = (srun_path(app), "--overlap", "--pty", "--jobid", str(shell.slurm_job_id), "-w", node, "bash", "-l")
    home = Path(app[SUBMITTER].slurm.config.env.get("HOME", "/"))
    return Command(argv, home)


def folder_command(app: web.Application, shell: FolderShell) -> Command:
    drive_id = shell.folder.lstrip("/").partition("/")[0]
    try:
        drives = app[DRIVES].resolve(Drive(id=drive_id, provider_generated_id=shell.drive))
        folder = drives.parse(shell.folder)
        with drives.open_folder(folder) as fd:
            # The folder itself, as opened without following a link: its path now.
            cwd = Path(f"/proc/self/fd/{fd}").readlink()
    except PathRefusedError as error:
        raise CommandRefusedError(error.status, str(error)) from error
    return Command(("/bin/bash", "-l"), cwd)


async def create_session(request: web.Request) -> web.Response:
    """A token for a terminal in a job or a folder; the checks that can fail before the socket happen here."""
    try:
        body = SHELL_SESSION_REQUEST.validate_json(await request.read())
    except ValidationError as error:
        return error_response(400, readable(error))
    try:
        if isinstance(body, JobShell):
            command = await job_command(request.app, body)
        else:
            command = folder_command(request.app, body)
    except CommandRefusedError as error:
        return error_response(error.status, str(error))
    token = request.app[SHELL_TOKENS].make(command)
    return web.json_response(ShellSessionToken(token=token).model_dump(by_alias=True))


# --- the socket ----------------------------------------------------------------------


async def shell_socket(request: web.Request) -> web.StreamResponse:
    """The shell websocket: refused before the upgrade unless the token is one this instance holds."""
    token = request.query.get("session", "")
    if not is_token(token):
        return error_response(400, "the session query parameter is not a shell session token")
    command = request.app[SHELL_TOKENS].claim(token)
    if command is None:
        return error_response(404, "unknown, used or expired shell session")
    audit.note(request, targets=[shlex.join(command.argv), str(command.cwd)])
    socket = web.WebSocketResponse(protocols=("binary",), max_msg_size=2 << 20)
    await socket.prepare(request)
    SHELLS.inc()
    try:
        await Session(socket, token, command, terminal_env(request.app)).run()
    finally:
        SHELLS.dec()
        await socket.close()
    return socket


class Session:
    """One socket and its terminal."""

    def __init__(self, socket: web.WebSocketResponse, token: str, command: Command, env: dict[str, str]) -> None:
        self.socket = socket
        self.token = token
        self.command = command
        self.env = env

    async def run(self) -> None:
        first = await self._initialize()
        if first is None:
            return
        stream_id, init = first
        try:
            terminal = await PtyProcess.start(
                self.command.argv, cwd=self.command.cwd, env=self.env, cols=init.cols, rows=init.rows
            )
        except OSError as error:
            log.warning("the terminal did not start", extra={"argv": self.command.argv[0], "error": str(error)})
            await self.socket.close(code=1011, message=b"the terminal could not start")
            return
        try:
            await self.socket.send_json(message(stream_id, {"type": "initialize"}))
            pump = asyncio.create_task(self._pump(terminal, stream_id))
            keys = asyncio.create_task(self._keys(terminal))
            await asyncio.wait([pump, keys], return_when=asyncio.FIRST_COMPLETED)
            keys.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        finally:
            await terminal.close()

    async def _initialize(self) -> tuple[str, Initialize] | None:
        """The first frame, which must be ``initialize`` with this socket's token; None closes the socket."""
        try:
            async with asyncio.timeout(INIT_SECONDS):
                frame = await self.socket.receive()
        except TimeoutError:
            await self.socket.close(code=1008, message=b"no initialize within 30 s")
            return None
        envelope = _envelope(frame.data) if frame.type == WSMsgType.TEXT else None
        if not isinstance(envelope, Envelope) or not isinstance(envelope.payload, Initialize):
            await self.socket.close(code=1008, message=b"the first frame must be initialize")
            return None
        if envelope.payload.session_identifier != self.token:
            await self.socket.close(code=1008, message=b"initialize names another session")
            return None
        return envelope.stream_id, envelope.payload

    async def _pump(self, terminal: PtyProcess, stream_id: str) -> None:
        """The terminal's output to the socket, until the program has ended."""
        ended = asyncio.create_task(terminal.process.wait())
        try:
            while True:
                read = asyncio.create_task(terminal.read())
                await asyncio.wait([read, ended], return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    # The program ended: what it wrote last may still be on its way.
                    done, _ = await asyncio.wait([read], timeout=END_DRAIN_SECONDS)
                    if not done:
                        read.cancel()
                        return
                text = read.result()
                if text is None:
                    return
                if text:
                    await self.socket.send_json(message(stream_id, {"type": "data", "data": text}))
        finally:
            ended.cancel()

    async def _keys(self, terminal: PtyProcess) -> None:
        """The socket's frames to the terminal, until the socket closes."""
        async for frame in self.socket:
            if frame.type != WSMsgType.TEXT:
                continue  # as IM2: only text frames carry requests
            envelope = _envelope(frame.data)
            if isinstance(envelope, _Refusal):
                await self.socket.send_json(refused(envelope.stream_id, 400, envelope.why))
                continue
            request = envelope.payload
            if isinstance(request, Input):
                await terminal.write(request.data)
            elif isinstance(request, Resize | Initialize):  # a second initialize is a resize (as IM2)
                terminal.resize(request.cols, request.rows)
            await self.socket.send_json(message(envelope.stream_id, {"type": "ack"}))


@dataclass(frozen=True)
class _Refusal:
    stream_id: str
    why: str


def _envelope(text: str) -> Envelope | _Refusal:
    """The frame's envelope, or why it is refused (on its stream, when it names one)."""
    try:
        data = json.loads(text)
    except ValueError:
        return _Refusal("", "a frame must be JSON")
    stream_id = data.get("streamId") if isinstance(data, dict) else None
    stream_id = stream_id if isinstance(stream_id, str) and len(stream_id) <= MAX_STREAM_ID_CHARS else ""
    try:
        return ENVELOPE.validate_python(data)
    except ValidationError as error:
        return _Refusal(stream_id, readable(error))


def setup_terminal_routes(app: web.Application) -> None:
    app[SHELL_TOKENS] = OneTimeTokens(token_bytes=32)
    app.router.add_post(SHELL_SESSIONS_PATH, create_session)
    app.router.add_get(SHELL_WEBSOCKET_PATH, shell_socket)

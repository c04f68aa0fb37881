"""Shell sessions in the instance: tokens (one use, expiry), the websocket's frames, resize bounds, the PTY.

The terminal of a folder session is a real ``bash -l`` in a PTY as the test's user (a
process, but a fast one); job sessions are checked up to the srun argv (Slurm faked).
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from ucim.common.shell_protocol import SHELL_SESSIONS_PATH, SHELL_WEBSOCKET_PATH, is_token
from ucim.common.slurm import CommandResult, SlurmClient
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.keys import SUBMITTER
from ucim.user_sidecar.one_time_tokens import OneTimeTokens
from ucim.user_sidecar.settings import SidecarSettings
from ucim.user_sidecar.terminal import SHELL_TOKENS, Command

USER = getpass.getuser()
HOME_DRIVE = f"home:{USER}"


class HostnamesSlurm(SlurmClient):
    """``scontrol show hostnames`` of a fixed node list; nothing else runs."""

    async def run(self, tool: str, args: Any, **_: Any) -> CommandResult:
        assert [tool, *args[:2]] == ["scontrol", "show", "hostnames"]
        nodes = "node1\nnode2\n" if args[2] == "node[1-2]" else ""
        return CommandResult(("scontrol",), 0 if nodes else 1, nodes, "", 0.0)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> TestClient[Any, Any]:
    (tmp_path / "work dir").mkdir()
    app = init_app(SidecarSettings(user=USER, home=tmp_path, path="/usr/local/bin:/usr/bin:/bin"))
    app[SUBMITTER].slurm = HostnamesSlurm(app[SUBMITTER].slurm.config)
    return await aiohttp_client(app)


async def folder_token(client: TestClient[Any, Any], folder: str = "/7/work dir") -> str:
    response = await client.post(SHELL_SESSIONS_PATH, json={"kind": "folder", "folder": folder, "drive": HOME_DRIVE})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    assert is_token(token)
    return token


def frame(payload: dict[str, Any], stream: str = "0") -> str:
    return json.dumps({"call": "jobs.compute.p.shell.open", "streamId": stream, "payload": payload})


async def output_until(ws: Any, marker: str, timeout: float = 10.0) -> str:  # noqa: ASYNC109
    seen = ""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            message = await ws.receive_json()
            if message["payload"]["type"] == "data":
                seen += message["payload"]["data"]
    return seen


# --- tokens ---


def test_a_token_is_claimed_once_and_expires() -> None:
    now = [0.0]
    tokens: OneTimeTokens[Command] = OneTimeTokens(token_bytes=32, seconds=60, clock=lambda: now[0])
    command = Command(("/bin/true",), Path("/"))
    first, second = tokens.make(command), tokens.make(command)
    assert tokens.claim(first) == command
    assert tokens.claim(first) is None  # used
    now[0] = 61
    assert tokens.claim(second) is None  # expired
    assert tokens.claim("0" * 84) is None


async def test_a_job_session_runs_srun_on_the_node_of_its_rank(client: TestClient[Any, Any]) -> None:
    request = {"kind": "job", "slurmJobId": 42, "nodeList": "node[1-2]", "rank": 1}
    response = await client.post(SHELL_SESSIONS_PATH, json=request)
    assert response.status == 200
    command = client.app[SHELL_TOKENS].claim((await response.json())["token"])
    assert command is not None
    assert command.argv[0].endswith("srun")
    assert command.argv[1:] == ("--overlap", "--pty", "--jobid", "42", "-w", "node2", "bash", "-l")


@pytest.mark.parametrize(
    ("request_body", "status", "why"),
    [
        ({"kind": "job", "slurmJobId": 42, "nodeList": "node[1-2]", "rank": 2}, 400, "rank 2 is not in the job"),
        ({"kind": "job", "slurmJobId": 42, "nodeList": "nowhere", "rank": 0}, 400, "names no node"),
        ({"kind": "job", "slurmJobId": -1, "nodeList": "node1"}, 400, "slurmJobId"),
        ({"kind": "folder", "folder": "/7/../etc", "drive": HOME_DRIVE}, 400, ".."),
        ({"kind": "folder", "folder": "/7/missing", "drive": HOME_DRIVE}, 404, "missing"),
        ({"kind": "folder", "folder": "/7/work dir", "drive": "home:someone-else"}, 403, "another user"),
        ({"kind": "shell"}, 400, "kind"),
    ],
)
async def test_a_session_that_cannot_run_is_refused_with_a_why(
    client: TestClient[Any, Any], request_body: dict[str, Any], status: int, why: str
) -> None:
    response = await client.post(SHELL_SESSIONS_PATH, json=request_body)
    assert response.status == status
    assert why.lower() in (await response.json())["why"].lower()


@pytest.mark.parametrize("session", ["", "not-a-token", "1" * 200, "'; rm -rf /"])
async def test_a_socket_without_a_valid_token_is_a_400(client: TestClient[Any, Any], session: str) -> None:
    response = await client.get(SHELL_WEBSOCKET_PATH, params={"session": session})
    assert response.status == 400


async def test_a_used_token_is_a_404_before_the_upgrade(client: TestClient[Any, Any]) -> None:
    token = await folder_token(client)
    ws = await client.ws_connect(SHELL_WEBSOCKET_PATH, params={"session": token})
    await ws.close()
    again = await client.get(SHELL_WEBSOCKET_PATH, params={"session": token})
    assert again.status == 404
    assert "used or expired" in (await again.json())["why"]


# --- the socket ---


async def test_a_folder_shell_starts_in_the_folder_and_resizes(client: TestClient[Any, Any], tmp_path: Path) -> None:
    token = await folder_token(client)
    async with client.ws_connect(SHELL_WEBSOCKET_PATH, params={"session": token}) as ws:
        await ws.send_str(frame({"type": "initialize", "sessionIdentifier": token, "cols": 100, "rows": 30}))
        assert (await ws.receive_json()) == {"type": "message", "payload": {"type": "initialize"}, "streamId": "0"}
        await ws.send_str(frame({"type": "input", "data": "echo AT:$(pwd):$(stty size):END\n"}, "1"))
        assert f"AT:{tmp_path / 'work dir'}:30 100:END" in await output_until(ws, " 100:END")
        await ws.send_str(frame({"type": "resize", "cols": 120, "rows": 40}, "2"))
        await ws.send_str(frame({"type": "input", "data": "stty size\n"}, "3"))
        await output_until(ws, "40 120")


@pytest.mark.parametrize(
    "hostile",
    [
        {"type": "resize", "cols": 0, "rows": 10},
        {"type": "resize", "cols": 10, "rows": 70000},
        {"type": "resize", "cols": -1, "rows": 10},
        {"type": "resize", "cols": "80", "rows": 24},
        {"type": "resize", "cols": 1e9, "rows": 24},
        {"type": "explode"},
    ],
)
async def test_a_hostile_frame_is_refused_and_the_shell_lives_on(
    client: TestClient[Any, Any], hostile: dict[str, Any]
) -> None:
    token = await folder_token(client)
    async with client.ws_connect(SHELL_WEBSOCKET_PATH, params={"session": token}) as ws:
        await ws.send_str(frame({"type": "initialize", "sessionIdentifier": token}))
        await ws.receive_json()
        await ws.send_str(frame(hostile, "9"))
        answer: dict[str, Any] = {}
        while answer.get("type") != "response":
            answer = await ws.receive_json()
        assert answer["status"] == 400 and answer["streamId"] == "9"
        await ws.send_str(frame({"type": "input", "data": "echo still-$((40+2))\n"}, "10"))
        await output_until(ws, "still-42")


async def test_initialize_with_another_token_closes_the_socket(client: TestClient[Any, Any]) -> None:
    token, other = await folder_token(client), await folder_token(client)
    async with client.ws_connect(SHELL_WEBSOCKET_PATH, params={"session": token}) as ws:
        await ws.send_str(frame({"type": "initialize", "sessionIdentifier": other}))
        closed = await ws.receive()
        assert closed.type == WSMsgType.CLOSE and ws.close_code == 1008


async def test_exit_closes_the_socket(client: TestClient[Any, Any]) -> None:
    token = await folder_token(client)
    async with client.ws_connect(SHELL_WEBSOCKET_PATH, params={"session": token}) as ws:
        await ws.send_str(frame({"type": "initialize", "sessionIdentifier": token}))
        await ws.send_str(frame({"type": "input", "data": "exit\n"}, "1"))
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                pass

"""Shells end to end: Core's interactiveSession / openTerminalInFolder → gateway → bridge → the user's instance.

The browser's side is an aiohttp websocket speaking Shell.tsx's frames to the URL Core would
hand it; the terminal is a real srun step in alice's running Slurm job, or a login shell in
her folder, as alice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ucim.common.protocol import Job, JobState
from ucim.common.resources import UCloudJob
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e


def frame(payload: dict[str, Any], stream: str) -> str:
    return json.dumps({"call": "jobs.compute.p.shell.open", "streamId": stream, "payload": payload})


class Terminal:
    """The browser's end of a shell socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.stream = 0

    async def send(self, payload: dict[str, Any]) -> None:
        self.stream += 1
        await self.ws.send_str(frame(payload, str(self.stream)))

    async def run(self, line: str, marker: str, timeout: float = 30.0) -> str:  # noqa: ASYNC109
        """Type ``line``; the output up to ``marker`` (which the echoed line itself must not contain)."""
        await self.send({"type": "input", "data": line + "\n"})
        seen = ""
        async with asyncio.timeout(timeout):
            while marker not in seen:
                message = await self.ws.receive_json()
                if message.get("payload", {}).get("type") == "data":
                    seen += message["payload"]["data"]
        return seen


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def open_terminal(client: aiohttp.ClientSession, url: str, token: str) -> Terminal:
    ws = await client.ws_connect(url, protocols=("binary",))
    terminal = Terminal(ws)
    await ws.send_str(frame({"type": "initialize", "sessionIdentifier": token, "cols": 80, "rows": 24}, "0"))
    first = await ws.receive_json(timeout=30)
    assert first["payload"] == {"type": "initialize"}
    return terminal


async def running_job(stack: Stack) -> tuple[Job, UCloudJob]:
    job_id = str(uuid.uuid4().int % 10**9)
    spec = stack.core.make_job(job_id, "alice", ("sleep-exit", "1"), {"seconds": 300})
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job_id, JobState.RUNNING, timeout=60)
    return spec, UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job_id)}"))


async def test_a_shell_in_alices_job_runs_as_alice_on_its_node(stack: Stack, session: aiohttp.ClientSession) -> None:
    spec, job = await running_job(stack)
    try:
        answer = await stack.core.open_shell(spec)
        assert answer.status == 200, answer.body
        opened = answer.body["responses"][0]
        assert opened["type"] == "shell" and opened["jobId"] == spec.id and opened["rank"] == 0
        url = stack.core.shell_url(opened, "alice")
        terminal = await open_terminal(session, url, opened["sessionIdentifier"])
        assert "=alice=" in await terminal.run("echo =$(id -un)=", "=alice=")
        node = job.status.node_list
        # Both platform nodes are slurmd on this one host: the node is Slurm's name for where the step runs.
        assert f"@{node}@" in await terminal.run("echo @$SLURMD_NODENAME@ $(hostname)", f"@{node}@")
        assert f"+{job.status.slurm_job_id}+" in await terminal.run(
            "echo +$SLURM_JOB_ID+", f"+{job.status.slurm_job_id}+"
        )
        await terminal.send({"type": "resize", "cols": 132, "rows": 43})
        assert "43 132" in await terminal.run("stty size", "43 132")

        # The token was used: a second socket with it (alice's or bob's) is refused before the upgrade.
        for user in ("alice", "bob"):
            again = await session.get(stack.core.shell_url(opened, user))
            assert again.status == 404, await again.text()
        await terminal.ws.close()
    finally:
        await stack.core.terminate_jobs([spec])


async def test_bob_cannot_use_alices_session_token(stack: Stack, session: aiohttp.ClientSession) -> None:
    spec, _ = await running_job(stack)
    try:
        opened = (await stack.core.open_shell(spec)).body["responses"][0]
        refused = await session.get(stack.core.shell_url(opened, "bob"))
        assert refused.status == 404
        assert "unknown, used or expired" in (await refused.json())["why"].lower()
        # bob asking Core for a shell in alice's job is refused by the gateway too.
        answer = await stack.core.open_shell(spec, username="bob")
        assert answer.status == 403, answer.body
        # alice's token still works: bob's attempt did not use it up.
        terminal = await open_terminal(session, stack.core.shell_url(opened, "alice"), opened["sessionIdentifier"])
        await terminal.ws.close()
    finally:
        await stack.core.terminate_jobs([spec])


async def test_a_shell_in_a_folder_starts_there_as_alice(stack: Stack, session: aiohttp.ClientSession) -> None:
    core = stack.core
    (await core.call_provider("POST", "integration/init", {"username": "alice"})).raise_for_status()
    name = f"shell-{uuid.uuid4().hex[:8]}"
    home = core.home_of("alice")
    created = await core.files_call("alice", "folder", [{"id": f"/{home.id}/{name}", "conflictPolicy": "REJECT"}])
    assert created.ok, created.body
    try:
        answer = await core.open_terminal_in_folder("alice", f"/{home.id}/{name}")
        assert answer.status == 200, answer.body
        opened = answer.body["responses"][0]
        assert opened["jobId"] == f"/{home.id}/{name}"
        terminal = await open_terminal(session, core.shell_url(opened, "alice"), opened["sessionIdentifier"])
        out = await terminal.run("echo =$(pwd)=$(id -un)=", "=alice=")
        assert f"=/home/alice/{name}=alice=" in out
        await terminal.ws.close()
    finally:
        stack.run_as("alice", "rm", "-rf", f"/home/alice/{name}", check=False)


@pytest.mark.parametrize(
    "query",
    [
        "session=x&usernameHint=YWxpY2U",
        "session=' OR 1=1 --&usernameHint=YWxpY2U",
        f"session={'9' * 5000}&usernameHint=YWxpY2U",
        f"session={'1' * 19}{'a' * 64}&usernameHint=YWxpY2U",  # well-formed, unknown
        "session=1&usernameHint=!!!",
        "usernameHint=YWxpY2U",
        f"session={'1' * 19}{'a' * 64}",
    ],
)
async def test_hostile_session_ids_are_refused_without_a_5xx(
    stack: Stack, session: aiohttp.ClientSession, query: str
) -> None:
    url = stack.core.provider_endpoint("websocket") + "?" + query
    answer = await session.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert 400 <= answer.status < 500, await answer.text()


async def test_hostile_resize_values_are_refused_and_the_shell_lives_on(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    core = stack.core
    (await core.call_provider("POST", "integration/init", {"username": "alice"})).raise_for_status()
    opened = (await core.open_terminal_in_folder("alice", f"/{core.home_of('alice').id}")).body["responses"][0]
    terminal = await open_terminal(session, core.shell_url(opened, "alice"), opened["sessionIdentifier"])
    for cols, rows in ((0, 24), (80, 65536), (-5, 24), ("80", 24), (10**12, 10**12)):
        await terminal.send({"type": "resize", "cols": cols, "rows": rows})
        answer: dict[str, Any] = {}
        while answer.get("type") != "response":
            answer = await terminal.ws.receive_json(timeout=10)
        assert answer["status"] == 400
    assert "=ok=" in await terminal.run("echo =$((1+1))k= | tr 2 o", "=ok=")
    await terminal.ws.close()

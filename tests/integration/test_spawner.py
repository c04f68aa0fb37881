"""The fork server drops privileges completely: checked from inside real children, as real users."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.instance_support import PROBE, Spawner, fork_server, session_for
from tests.support.platform import Platform
from ucim.slurm_bridge.spawner import SpawnError, SpawnRequest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spawner(platform: Platform) -> AsyncIterator[Spawner]:
    async with fork_server(platform, PROBE) as started:
        yield started


async def probe(path: str) -> dict[str, object]:
    async with session_for(path) as session, session.get("/probe") as response:
        assert response.status == 200
        result: dict[str, object] = await response.json()
        return result


async def test_child_runs_as_the_user_with_her_groups_and_cannot_regain_root(
    spawner: Spawner, platform: Platform
) -> None:
    pid, path = await spawner.spawn("alice")
    seen = await probe(path)
    assert seen["pid"] == pid
    assert seen["resuid"] == [1101, 1101, 1101]
    assert seen["resgid"] == [1101, 1101, 1101]
    assert seen["groups"] == [1101, 1200]  # alice and ucimproj
    assert seen["setuid0_error"] == "[Errno 1] Operation not permitted"
    status = Path(f"/proc/{pid}/status").read_text()
    assert "CapEff:\t0000000000000000" in status
    assert "CapPrm:\t0000000000000000" in status
    assert seen["sid"] == pid, "the child leads its own session"
    assert seen["cwd"] == "/home/alice"
    assert seen["umask"] == 0o007
    assert seen["modules"] == [], "no Kubernetes client or kopf in an instance"


async def test_child_has_a_clean_environment(spawner: Spawner, platform: Platform) -> None:
    _, path = await spawner.spawn("alice")
    assert (await probe(path))["environ"] == {
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "SLURM_CONF": platform.env["SLURM_CONF"],
    }


async def test_child_inherits_no_fd_but_its_socket(spawner: Spawner) -> None:
    pid, path = await spawner.spawn("bob")
    fds = {info["fd"]: info for info in (await probe(path))["fds"]}  # type: ignore[attr-defined]
    assert fds[0]["target"] == fds[1]["target"] == "/dev/null"
    assert fds[2]["target"].startswith("pipe:")  # stderr: the log relay of the fork server
    assert fds[3]["target"].startswith("socket:") and fds[3]["listening"]
    assert fds[3]["family"] == socket.AF_UNIX
    for fd, info in fds.items():
        if fd <= 3:
            continue
        target = info["target"]
        assert not target.startswith("/"), f"fd {fd} is a file: {target}"
        assert not target.startswith("pipe:"), f"fd {fd} is an inherited pipe"
        if target.startswith("socket:"):
            # Only the event loop's own self-pipe (peer: the child) and this request (peer: us).
            assert not info["listening"], f"fd {fd} is a second listening socket"
            assert info["type"] == socket.SOCK_STREAM, f"fd {fd} is the fork server's channel"
            assert info["peer_pid"] in (pid, os.getpid()), f"fd {fd} talks to pid {info['peer_pid']}"
        else:
            assert target == "anon_inode:[eventpoll]", f"fd {fd}: {target}"


async def test_bob_cannot_read_alices_job_folder(spawner: Spawner, platform: Platform) -> None:
    folder = f"/home/alice/ucloud-jobs/probe-{uuid.uuid4().hex[:8]}"
    platform.run_as("alice", "bash", "-c", f"umask 0007 && mkdir -p {folder} && echo secret > {folder}/stdout.txt")
    _, alice = await spawner.spawn("alice")
    _, bob = await spawner.spawn("bob")
    async with session_for(alice) as session, session.get("/read", params={"path": f"{folder}/stdout.txt"}) as r:
        assert (r.status, await r.text()) == (200, "secret\n")
    async with session_for(bob) as session, session.get("/read", params={"path": f"{folder}/stdout.txt"}) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "Permission denied"


async def test_other_local_users_cannot_reach_an_instance(spawner: Spawner, platform: Platform) -> None:
    _, path = await spawner.spawn("alice")
    assert (Path(path).parent.stat().st_mode & 0o777) == 0o700
    # Not even the instance's own user: only the bridge (root) reaches instances.
    for user in ("alice", "bob"):
        result = platform.run_as(user, "curl", "-sS", "--unix-socket", path, "http://x/healthz", check=False)
        assert result.returncode != 0
        assert "Permission denied" in result.stderr or "Couldn't connect" in result.stderr


async def test_sigterm_stops_a_child_promptly_without_spinning(spawner: Spawner) -> None:
    pid, path = await spawner.spawn("alice")
    await probe(path)
    started = asyncio.get_running_loop().time()
    os.kill(pid, signal.SIGTERM)
    assert await spawner.wait_exit(pid, seconds=3) == 0
    assert asyncio.get_running_loop().time() - started < 1.0
    # Its whole life's CPU time (from wait4): a child that spun would show seconds here.
    assert spawner.cpu_seconds[pid] < 0.3, spawner.cpu_seconds[pid]
    assert not Path(path).exists(), "the fork server removes the socket of a stopped instance"


async def test_sigterm_during_a_request_stops_within_the_grace_time(spawner: Spawner) -> None:
    pid, path = await spawner.spawn("bob")
    async with session_for(path) as session:
        pending = asyncio.ensure_future(session.get("/sleep", params={"seconds": "60"}))
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        os.kill(pid, signal.SIGTERM)
        assert await spawner.wait_exit(pid, seconds=6) == 0
        took = asyncio.get_running_loop().time() - started
        with contextlib.suppress(Exception):
            (await pending).close()
    assert took < 3.5, f"stopping took {took:.2f} s (grace 3 s)"
    assert spawner.cpu_seconds[pid] < 0.3, spawner.cpu_seconds[pid]


async def test_stop_request_and_crash_are_reported(spawner: Spawner) -> None:
    pid, path = await spawner.spawn("alice")
    await probe(path)
    await spawner.server.stop(pid)
    assert await spawner.wait_exit(pid) == 0
    pid, path = await spawner.spawn("alice")
    async with session_for(path) as session:
        with pytest.raises(Exception):  # noqa: B017  (the connection just breaks)
            await session.get("/exit", params={"code": "3"})
    assert await spawner.wait_exit(pid) == 3


async def test_fork_server_refuses_privileged_or_misplaced_spawns(spawner: Spawner) -> None:
    good: dict[str, object] = {
        "key": "t/x", "socket_path": str(spawner.socket_dir / "x.sock"), "user": "alice", "uid": 1101,
        "gid": 1101, "groups": [1101], "home": "/home/alice", "shell": "/bin/bash",
    }  # fmt: skip
    cases: list[tuple[dict[str, object], str]] = [
        ({"uid": 0, "user": "root"}, "refusing to run an instance as uid 0"),
        ({"uid": 999}, "refusing to run an instance as uid 999"),
        ({"gid": 0}, "gid 0"),
        ({"groups": [1101, 0]}, "refusing"),
        ({"socket_path": "/tmp/elsewhere.sock"}, "is not in"),
    ]
    for bad, message in cases:
        with pytest.raises(SpawnError, match=message):
            await spawner.server.spawn(SpawnRequest.model_validate({**good, **bad}))

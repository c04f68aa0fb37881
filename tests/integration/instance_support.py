"""Helpers for tests that run user instances through a real fork server."""

from __future__ import annotations

import asyncio
import pwd
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.platform import REPO, Platform
from ucim.slurm_bridge.mapping import account_by_name
from ucim.slurm_bridge.spawner import ForkServer, ForkServerConfig, SpawnRequest, prepare_socket_dir

PROBE = "tests.integration.sidecar_probe:for_fork_server"
SIDECAR = "ucim.user_sidecar.app:for_fork_server"


def alice_home() -> Path:
    return Path(pwd.getpwnam("alice").pw_dir)  # the platform creates alice; so not at import time


def as_alice(*command: str) -> None:
    """Run a command as alice, as her login would (files it makes are hers)."""
    subprocess.run(["runuser", "-u", "alice", "--", *command], check=True, timeout=30, cwd="/")


@dataclass
class Spawner:
    """A started fork server, with the exit statuses of its children as they come."""

    server: ForkServer
    socket_dir: Path
    log: Path
    exits: dict[int, int] = field(default_factory=dict)
    cpu_seconds: dict[int, float] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def on_exit(self, pid: int, status: int, cpu_seconds: float) -> None:
        self.exits[pid] = status
        self.cpu_seconds[pid] = cpu_seconds
        self.exited.set()

    async def spawn(self, user: str, key: str | None = None) -> tuple[int, str]:
        account = account_by_name(user, 1000)
        path = str(self.socket_dir / f"{uuid.uuid4().hex[:16]}.sock")
        request = SpawnRequest(
            key=key or f"test/{user}",
            socket_path=path,
            user=account.name,
            uid=account.uid,
            gid=account.gid,
            groups=list(account.groups),
            home=account.home,
            shell=account.login_shell,
        )
        return await self.server.spawn(request), path

    async def wait_exit(self, pid: int, seconds: float = 10.0) -> int:
        async with asyncio.timeout(seconds):
            while pid not in self.exits:
                self.exited.clear()
                await self.exited.wait()
        return self.exits[pid]


@asynccontextmanager
async def fork_server(platform: Platform, app_factory: str, **options: Any) -> AsyncIterator[Spawner]:
    socket_dir = Path(f"/run/ucim/test-{uuid.uuid4().hex[:8]}")
    prepare_socket_dir(socket_dir)
    slurm_conf = platform.env["SLURM_CONF"]
    config = ForkServerConfig(
        socket_dir=str(socket_dir),
        app_factory=app_factory,
        app_options={"slurm_conf": slurm_conf, **options},
        slurm_conf=slurm_conf,
        stop_grace_seconds=3.0,
    )
    log = Path(tempfile.mkstemp(prefix="ucim-fork-server-", suffix=".log")[1])
    with log.open("wb") as stderr:
        server = ForkServer.start(config, extra_env={"PYTHONPATH": str(REPO)}, stderr=stderr)
    spawner = Spawner(server=server, socket_dir=socket_dir, log=log)
    server.attach(spawner.on_exit)
    try:
        yield spawner
    finally:
        await server.close()
        print(log.read_text()[-20000:])  # shown with the tests' output when one fails
        log.unlink()
        for leftover in socket_dir.glob("*"):
            leftover.unlink()
        socket_dir.rmdir()


def session_for(path: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=path), base_url="http://instance", timeout=aiohttp.ClientTimeout(30)
    )

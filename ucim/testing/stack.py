"""The whole of ucim as local processes against the local platform, driven by Core's stand-in.

Used by the e2e tests and by ``make demo``: it starts the gateway, the operator and
the slurm_bridge (their real console scripts, with settings from the environment)
in one namespace, and plays UCloud/Core in-process with ``CoreStandIn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ucim.common.kube import Kube
from ucim.common.resources import UCloudJob
from ucim.testing.core_standin import CoreStandIn

PROVIDER = "ucim"
CLUSTER = "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Component:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    health_url: str

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


@dataclass
class Stack:
    """A running ucim: gateway, operator and bridge processes plus Core's stand-in."""

    core: CoreStandIn
    namespace: str
    gateway_url: str
    workdir: Path
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ({c.log})\n{c.tail()}" for c in self.components.values())

    async def kill(self, name: str) -> None:
        """Kill a component hard (SIGKILL), as a crash would."""
        component = self.components[name]
        component.process.kill()
        await component.process.wait()

    async def start(self, name: str) -> None:
        """(Re)start a component with the settings it was first started with."""
        component = self.components[name]
        self.components[name] = await _start(name, component.log, self.envs[name], component.health_url)


async def _start(command: str, log: Path, env: Mapping[str, str], health_url: str) -> Component:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    component = Component(command, process, log, health_url)
    await _wait_healthy(component)
    return component


async def _wait_healthy(component: Component, timeout: float = 30) -> None:  # noqa: ASYNC109
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if component.process.returncode is not None:
                raise RuntimeError(f"{component.name} exited ({component.process.returncode}):\n{component.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(component.health_url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{component.name} did not become healthy in {timeout} s:\n{component.tail()}")


def component_env(
    platform_env: Mapping[str, str], namespace: str, core: CoreStandIn, ingress_token: str, socket_dir: Path
) -> dict[str, dict[str, str]]:
    """Each component's environment: its settings, the platform's kubeconfig and Slurm."""
    base = {**os.environ, **platform_env, "UCIM_LOG_FORMAT": "json"}
    ports = {name: free_port() for name in ("gateway", "operator", "bridge", "ingress")}
    core_key = core.keys.public_key_b64()
    return {
        "ucim-gateway": {
            **base,
            "UCIM_GATEWAY_PORT": str(ports["gateway"]),
            "UCIM_GATEWAY_NAMESPACE": namespace,
            "UCIM_GATEWAY_CLUSTER": CLUSTER,
            "UCIM_GATEWAY_PROVIDER_ID": PROVIDER,
            "UCIM_GATEWAY_CORE_PUBLIC_KEY": core_key,
        },
        "ucim-operator": {
            **base,
            "UCIM_OPERATOR_METRICS_PORT": str(ports["operator"]),
            "UCIM_OPERATOR_NAMESPACE": namespace,
            "UCIM_OPERATOR_PROVIDER_ID": PROVIDER,
            "UCIM_OPERATOR_CORE_URL": core.url,
            "UCIM_OPERATOR_CORE_REFRESH_TOKEN": core.refresh_token,
            "UCIM_OPERATOR_INGRESS_TOKEN": ingress_token,
        },
        "ucim-bridge": {
            **base,
            "UCIM_BRIDGE_METRICS_PORT": str(ports["bridge"]),
            "UCIM_BRIDGE_NAMESPACE": namespace,
            "UCIM_BRIDGE_CLUSTER": CLUSTER,
            "UCIM_BRIDGE_INGRESS_PORT": str(ports["ingress"]),
            "UCIM_BRIDGE_INGRESS_TOKEN": ingress_token,
            "UCIM_BRIDGE_SOCKET_DIR": str(socket_dir),
        },
    }


async def _release_jobs(platform_env: Mapping[str, str], namespace: str, timeout: float = 30) -> None:  # noqa: ASYNC109
    """Delete the namespace's UCloudJobs while the operator still runs, so its finalizer lets them go.

    Otherwise deleting the namespace later would hang on finalizers nobody removes.
    """
    async with await Kube.connect(platform_env.get("KUBECONFIG")) as kube:
        for job in await kube.list(UCloudJob, namespace):
            await kube.delete(UCloudJob, namespace, job.metadata.name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    if not await kube.list(UCloudJob, namespace):
                        break
                    await asyncio.sleep(0.2)


HEALTH_PORT_KEYS = {
    "ucim-gateway": "UCIM_GATEWAY_PORT",
    "ucim-operator": "UCIM_OPERATOR_METRICS_PORT",
    "ucim-bridge": "UCIM_BRIDGE_METRICS_PORT",
}


@contextlib.asynccontextmanager
async def running_stack(platform_env: Mapping[str, str], namespace: str) -> AsyncIterator[Stack]:
    """Start Core's stand-in and every component; stop them all afterwards (logs kept on failure)."""
    workdir = Path(tempfile.mkdtemp(prefix="ucim-stack-"))
    socket_dir = Path("/run") / f"ucim-{namespace}"
    ingress_token = secrets.token_urlsafe(32)
    async with CoreStandIn(PROVIDER, secrets.token_urlsafe(16)) as core:
        await core.start()
        envs = component_env(platform_env, namespace, core, ingress_token, socket_dir)
        gateway_url = f"http://127.0.0.1:{envs['ucim-gateway']['UCIM_GATEWAY_PORT']}"
        core.provider_url = gateway_url
        stack = Stack(core=core, namespace=namespace, gateway_url=gateway_url, workdir=workdir, envs=envs)
        try:
            # The bridge first: the operator and the gateway need instances to become Ready.
            for command in ("ucim-bridge", "ucim-operator", "ucim-gateway"):
                env = envs[command]
                health = f"http://127.0.0.1:{env[HEALTH_PORT_KEYS[command]]}/healthz"
                stack.components[command] = await _start(command, workdir / f"{command}.log", env, health)
            yield stack
        finally:
            await _release_jobs(platform_env, namespace)
            for component in reversed(list(stack.components.values())):
                if component.process.returncode is None:
                    component.process.terminate()
                    try:
                        async with asyncio.timeout(15):
                            await component.process.wait()
                    except TimeoutError:
                        component.process.kill()
                        await component.process.wait()
            shutil.rmtree(socket_dir, ignore_errors=True)

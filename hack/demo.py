"""The demo behind `make demo`: the local platform, ucim's components, and UCloud/Core's stand-in.

It starts the gateway as a process against the running local platform, plays
UCloud/Core (ucim.testing.CoreStandIn) to talk to it, and shows what the
cluster holds with kubectl. The platform itself is started by `make
platform-up`, which `make demo` runs first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from ucim.testing import CoreStandIn

RUN_DIR = Path(os.environ.get("UCIM_RUN_DIR", "/var/tmp/ucim-platform"))
PROVIDER = "ucim"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def platform_env() -> dict[str, str]:
    pairs = (line.partition("=") for line in (RUN_DIR / "platform.env").read_text().splitlines())
    return {key: value for key, sep, value in pairs if sep}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl(env: dict[str, str], *args: str) -> str:
    cmd = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"], *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


async def wait_healthy(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def main() -> None:
    env = {**os.environ, **platform_env()}
    if "ucim" not in kubectl(env, "get", "namespaces", "-o", "name"):
        kubectl(env, "create", "namespace", "ucim")
    port = free_port()
    async with CoreStandIn(PROVIDER, "demo-refresh-token", provider_url=f"http://127.0.0.1:{port}") as core:
        with tempfile.NamedTemporaryFile("w", suffix=".pub") as key:
            key.write(core.keys.public_key_b64())
            key.flush()
            gateway_env = {**env, "UCIM_GATEWAY_PORT": str(port), "UCIM_GATEWAY_CORE_PUBLIC_KEY_FILE": key.name,
                           "UCIM_GATEWAY_PROVIDER_ID": PROVIDER, "UCIM_LOG_FORMAT": "text"}  # fmt: skip
            gateway = await asyncio.create_subprocess_exec("ucim-gateway", env=gateway_env)
            try:
                async with asyncio.timeout(15):
                    await wait_healthy(f"http://127.0.0.1:{port}/healthz")
                say(f"gateway serving on :{port}; Core's stand-in asks for products")
                for support in await core.retrieve_products():
                    say(f"  product {support.product.category}/{support.product.id}: native batch jobs")
                say("Core calls integration/init for alice (the bridge makes her instance Ready)")
                await core.call_provider("POST", "integration/init", json={"username": "alice"})
                print(kubectl(env, "get", "userinstances", "-n", "ucim"), end="")
                print(kubectl(env, "get", "ucloudjobs", "-A"), end="")
            finally:
                gateway.terminate()
                await gateway.wait()
    say("done")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

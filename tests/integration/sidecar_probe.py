"""A stand-in instance application that reports what its process looks like from inside.

The fork server runs it exactly as it runs the real sidecar (``app_factory =
"tests.integration.sidecar_probe:for_fork_server"``), so the tests see the privilege
drop, environment, fds and signal handling of a real instance.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web


def _fd_info(fd: int) -> dict[str, Any] | None:
    try:
        target = str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError:
        return None  # the fd os.listdir used to read /proc/self/fd, closed since
    info: dict[str, Any] = {"fd": fd, "target": target}
    if target.startswith("socket:"):
        with socket.socket(fileno=os.dup(fd)) as sock:
            info["family"] = int(sock.family)
            info["type"] = int(sock.type)
            info["listening"] = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            if sock.family == socket.AF_UNIX and not info["listening"]:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                info["peer_pid"], info["peer_uid"], _ = struct.unpack("3i", creds)
    return info


async def probe(request: web.Request) -> web.Response:
    try:
        os.setuid(0)
        setuid_error = None
    except PermissionError as error:
        setuid_error = str(error)
    umask = os.umask(0o007)
    fds = [info for fd in sorted(int(p.name) for p in Path("/proc/self/fd").iterdir()) if (info := _fd_info(fd))]
    return web.json_response(
        {
            "pid": os.getpid(),
            "sid": os.getsid(0),
            "resuid": list(os.getresuid()),
            "resgid": list(os.getresgid()),
            "groups": sorted(os.getgroups()),
            "environ": dict(os.environ),
            "cwd": str(Path.cwd()),
            "umask": umask,
            "setuid0_error": setuid_error,
            "fds": fds,
            "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes_asyncio", "kopf")),
        }
    )


async def read(request: web.Request) -> web.Response:
    try:
        return web.Response(text=Path(request.query["path"]).read_text())
    except OSError as error:
        return web.json_response({"error": error.strerror, "errno": error.errno}, status=403)


async def exit_now(request: web.Request) -> web.Response:
    os._exit(int(request.query.get("code", "3")))


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "60")))
    return web.json_response({"slept": True})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def for_fork_server(options: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], web.Application]:
    def make(account: Mapping[str, Any]) -> web.Application:
        app = web.Application()
        app.router.add_get("/probe", probe)
        app.router.add_get("/read", read)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/exit", exit_now)
        app.router.add_get("/sleep", sleep)
        return app

    return make

"""nginx (the Debian package, ``hack/install-deps.sh``) as a baseline proxy for the benches.

:func:`running_nginx` starts its own nginx process, never the system service: configuration,
pid file, error log and temporary paths all live in a folder of the caller's, and it listens
on a free unprivileged port of 127.0.0.1. It proxies everything to a unix socket the way a
well-set-up streaming proxy does: request bodies and answers are passed through as they come
(``proxy_request_buffering off``, ``proxy_buffering off``), bodies of any size
(``client_max_body_size 0``), HTTP/1.1 with kept-alive upstream connections.

Started as root, nginx runs its workers as ``www-data`` (Debian's choice), so the upstream
socket must let them in: :func:`let_workers_connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp

from ucim.testing.stack import free_port

WORKER_USER: Final = "www-data"
START_SECONDS: Final = 10.0


class NginxUnavailableError(RuntimeError):
    """nginx is not installed, or did not start; the message says why."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NginxUnavailableError("nginx is not installed: run hack/install-deps.sh as root")
    return found


def _server(upstream: Path | str) -> str:
    """An upstream server: a unix socket's path, or ``host:port``."""
    return f"unix:{upstream}" if isinstance(upstream, Path) else upstream


def config(folder: Path, port: int, upstream: Path | str) -> str:
    """The whole nginx.conf: everything nginx writes goes below ``folder``."""
    user = f"user {WORKER_USER};" if os.geteuid() == 0 else "# not root: the workers run as the caller"
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{user}
daemon off;
worker_processes auto;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
{temp}
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    upstream endpoint {{
        server {_server(upstream)};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://endpoint;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def write_config(folder: Path, port: int, upstream: Path | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(config(folder, port, upstream))
    return conf


def let_workers_connect(socket: Path) -> None:
    """Hand the upstream socket to nginx's worker user (when root; otherwise the workers are the caller)."""
    if os.geteuid() == 0:
        account = pwd.getpwnam(WORKER_USER)
        os.chown(socket, account.pw_uid, account.pw_gid)


async def _wait_serving(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        deadline = asyncio.get_running_loop().time() + START_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            if process.returncode is not None:
                raise NginxUnavailableError(f"nginx exited ({process.returncode}): {_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise NginxUnavailableError(f"nginx did not serve {url} within {START_SECONDS} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no error log)"


@contextlib.asynccontextmanager
async def running_nginx(folder: Path, upstream: Path | str, health_path: str = "/healthz") -> AsyncIterator[str]:
    """nginx in front of ``upstream`` (a unix socket, or ``host:port``), until the block ends; yields its base URL.

    It counts as started once ``GET <health_path>`` answers 200 through it (the upstream serves).
    """
    binary = nginx_binary()
    port = free_port()
    conf = write_config(folder, port, upstream)
    log = folder / "error.log"
    # -e: the log of start-up, before the configuration is read (else /var/log/nginx/error.log).
    process = await asyncio.create_subprocess_exec(
        binary, "-e", str(log), "-p", str(folder), "-c", str(conf),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_serving(url + health_path, process, log)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

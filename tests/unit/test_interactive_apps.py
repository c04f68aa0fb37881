"""The catalogue's interactive applications and the test helpers that drive them, without running them.

web-echo and desktop-vnc render through what a real job goes through (tests/support/library_jobs.py); the RFB
client's DES against TigerVNC's own vncpasswd, and its handshake against a scripted server that splits its
bytes across frames; the browser's command line. tests/integration/test_interactive_apps.py runs them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer

from tests.support.library_jobs import REPO, library_job
from ucim.common.resources import JobInterface
from ucim.testing import browser
from ucim.testing.core_apps import ApplicationStore
from ucim.testing.rfb import (
    RfbAuthenticationError,
    RfbError,
    ServerInit,
    rfb_handshake,
    vnc_auth_response,
)

FOLDER = Path("/home/alice/ucloud-jobs/4821")


def commands(script: str) -> list[str]:
    """The script's lines after the exports: what the invocation made of the job."""
    lines = script.rstrip("\n").split("\n")
    last_export = max(i for i, line in enumerate(lines) if line.startswith("export UCLOUD_"))
    return [line for line in lines[last_export + 1 :] if line.strip()]


def check_bash(script: str, tmp_path: Path) -> None:
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)


def test_web_echo_is_a_web_application_with_a_dynamic_target(tmp_path: Path) -> None:
    job = library_job("web-echo", FOLDER, port=23817)
    lines = job.script.split("\n")
    assert "#SBATCH --job-name" in job.script
    ports = lines.index("export UCLOUD_PORT=23817")
    assert lines[ports + 1] == f"echo 23817 > '{FOLDER}/allocated-port.txt'"
    assert commands(job.script) == [
        f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",  # the site's load instructions of ucim-testing
        'exec python3 -m ucim.testing.web_app --port "$UCLOUD_PORT" --port 23818',
    ]
    assert job.dynamic_targets == (JobInterface(rank=0, type="WEB", target="alt", port=23818),)
    assert job.port == 23817
    check_bash(job.script, tmp_path)


def test_desktop_vnc_is_a_vnc_application_with_its_password(tmp_path: Path) -> None:
    application = ApplicationStore.with_library().applications[("desktop-vnc", "1")]
    assert application.invocation.application_type == "VNC"
    assert application.invocation.vnc is not None
    password = application.invocation.vnc.password
    job = library_job("desktop-vnc", FOLDER, port=23817)
    assert "export UCLOUD_PORT=23817" in job.script.split("\n")
    body = commands(job.script)
    assert f"printf '%s\\n' {password} | vncpasswd -f > \"$vnc/passwd\"" in body, "the server's password is Core's"
    assert 'websockify --unix-target="$vnc/socket" "0.0.0.0:$UCLOUD_PORT" &' in body
    assert password is not None and len(password.encode()) <= 8, "VncAuth uses 8 bytes of a password"
    assert job.dynamic_targets == ()
    check_bash(job.script, tmp_path)


# --- the RFB client --------------------------------------------------------------------------------------

# TigerVNC's vncpasswd stores a password DES-encrypted under VNC's fixed key, with the same bit-reversed key
# schedule as the VncAuth response: `echo secret12 | vncpasswd -f | xxd -p` is 24b5ae4ce15503c6.
VNC_FIXED_KEY = "".join(map(chr, (23, 82, 107, 6, 35, 78, 88, 7)))


def test_the_des_response_is_vncs() -> None:
    assert vnc_auth_response(b"secret12", VNC_FIXED_KEY) == bytes.fromhex("24b5ae4ce15503c6")
    # A password is its first 8 bytes; a shorter one is NUL-padded.
    assert vnc_auth_response(bytes(16), "12345678") == vnc_auth_response(bytes(16), "123456789")
    assert vnc_auth_response(bytes(16), "abc") == vnc_auth_response(bytes(16), "abc\0\0\0\0\0")


CHALLENGE = bytes(range(16))
GOOD = "ucimvnc1"


def server_init(name: bytes = b"desk") -> bytes:
    return (640).to_bytes(2, "big") + (480).to_bytes(2, "big") + bytes(16) + len(name).to_bytes(4, "big") + name


def scripted_server(types: bytes = b"\x01\x02", accept: Callable[[bytes], bool] | None = None) -> web.Application:
    """An RFB server as websockify relays one: every byte its own frame (RFB does not follow frames)."""
    accept = accept or (lambda response: response == vnc_auth_response(CHALLENGE, GOOD))

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("binary",))
        await ws.prepare(request)

        async def send(data: bytes) -> None:
            for byte in data:
                await ws.send_bytes(bytes([byte]))

        async def receive(size: int) -> bytes:
            message = await ws.receive()
            assert message.type == WSMsgType.BINARY and len(message.data) == size
            return bytes(message.data)

        await send(b"RFB 003.008\n")
        assert await receive(12) == b"RFB 003.008\n"
        await send(bytes([len(types)]) + types if types else b"\x00" + (4).to_bytes(4, "big") + b"full")
        if not types or 2 not in types:
            return ws
        assert await receive(1) == b"\x02"
        await send(CHALLENGE)
        if accept(await receive(16)):
            await send(bytes(4))
            assert await receive(1) == b"\x01", "ClientInit: shared"
            await send(server_init())
        else:
            await send((1).to_bytes(4, "big") + (22).to_bytes(4, "big") + b"Authentication failure")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/websockify", handler)
    return app


async def test_the_handshake_reaches_server_init(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(scripted_server())
    assert await rfb_handshake(str(server.make_url("/websockify")), GOOD) == ServerInit(640, 480, "desk")


async def test_a_wrong_password_is_a_clear_error(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(scripted_server())
    with pytest.raises(RfbAuthenticationError, match="refused the password: Authentication failure"):
        await rfb_handshake(str(server.make_url("/websockify")), "wrong")


@pytest.mark.parametrize(
    ("types", "why"), [(b"\x01", r"offers security types \[1\], not VncAuth"), (b"", "refused the connection: full")]
)
async def test_a_server_without_vnc_auth_is_an_error(aiohttp_server: AiohttpServer, types: bytes, why: str) -> None:
    server = await aiohttp_server(scripted_server(types))
    with pytest.raises(RfbError, match=why):
        await rfb_handshake(str(server.make_url("/websockify")), GOOD)


async def test_a_refused_upgrade_carries_its_status(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(scripted_server())
    with pytest.raises(RfbError, match="was refused: 404") as refused:
        await rfb_handshake(str(server.make_url("/elsewhere")), GOOD)
    assert refused.value.status == 404


# --- the browser ----------------------------------------------------------------------------------------


def test_the_browser_maps_hosts_in_a_fresh_profile() -> None:
    arguments = browser.chromium_arguments(
        "https://app-1-0.apps.test/", "/tmp/p", resolve={"*.apps.test": "127.0.0.1"}, ignore_certificate_errors=True
    )
    assert arguments[-2:] == ["--dump-dom", "https://app-1-0.apps.test/"]
    assert "--host-resolver-rules=MAP *.apps.test 127.0.0.1" in arguments
    assert {"--headless", "--user-data-dir=/tmp/p", "--ignore-certificate-errors"} <= set(arguments)


async def test_a_missing_browser_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", "ucim-no-such-browser")
    with pytest.raises(browser.BrowserError, match="ucim-no-such-browser is not installed"):
        await browser.dump_dom("http://127.0.0.1/")

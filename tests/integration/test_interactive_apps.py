"""The catalogue's interactive applications, run as their job scripts (no Slurm, no ucim gateway).

Each application's job.sbatch is rendered as a real job's is (tests/support/library_jobs.py) and run with bash
in a temporary job folder, as the current user, on the PATH a job's login shell has (Debian's python3 and
python3-aiohttp, TigerVNC, websockify). web-echo is then reached with aiohttp and with headless chromium through
a wildcard host name, desktop-vnc through websockify with a real RFB handshake (ucim/testing/rfb.py).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from tests.support.library_jobs import library_job
from ucim.testing.browser import dump_dom
from ucim.testing.core_apps import ApplicationStore
from ucim.testing.rfb import RfbAuthenticationError, rfb_handshake
from ucim.testing.stack import free_port
from ucim.testing.web_app import MARKER, expected_bytes

pytestmark = pytest.mark.integration

JOB_PATH = "/usr/bin:/bin"  # what a job's login shell has (Debian's /etc/profile): not root's virtualenv
START_SECONDS = 20


@dataclass(frozen=True)
class RunningJob:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    def stdout(self) -> str:
        return (self.folder / "stdout.txt").read_text()


def free_port_pair() -> int:
    """A free port whose next one is free too (web-echo's dynamic target listens there)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def wait_listening(job: RunningJob, port: int) -> None:
    for attempt in Retrying(
        retry=retry_if_exception_type(OSError), stop=stop_after_delay(START_SECONDS), wait=wait_fixed(0.1), reraise=True
    ):
        with attempt:
            if job.process.poll() is not None:
                pytest.fail(
                    f"the job script ended ({job.process.returncode}): {(job.folder / 'stderr.txt').read_text()}"
                )
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


@contextlib.contextmanager
def running(name: str, folder: Path, port: int) -> Iterator[RunningJob]:
    """``name``'s job script, run by bash in ``folder`` as Slurm would (stdout.txt, stderr.txt), until the end."""
    script = library_job(name, folder, port=port).script
    (folder / "job.sbatch").write_text(script)
    (folder / "tmp").mkdir()  # the job's TMPDIR
    with (folder / "stdout.txt").open("wb") as out, (folder / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(
            ["bash", "job.sbatch"],
            cwd=folder,
            env={"PATH": JOB_PATH, "HOME": str(folder), "LANG": "C.UTF-8", "TMPDIR": str(folder / "tmp")},
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so that teardown ends all of it
        )
    job = RunningJob(folder, port, process)
    try:
        wait_listening(job, port)
        yield job
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def web_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJob]:
    with running("web-echo", tmp_path_factory.mktemp("web-echo"), free_port_pair()) as job:
        wait_listening(job, job.port + 1)
        yield job


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


# --- web-echo ---------------------------------------------------------------------------------------


def test_the_job_script_wrote_its_port(web_echo: RunningJob) -> None:
    assert (web_echo.folder / "allocated-port.txt").read_text() == f"{web_echo.port}\n"


async def test_the_page_has_the_marker_and_its_websocket_script(
    web_echo: RunningJob, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"http://127.0.0.1:{web_echo.port}/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        page = await response.text()
    assert MARKER in page and '"/ws"' in page and 'id="echo"' in page


async def test_the_websocket_echoes_text_and_binary(web_echo: RunningJob, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"ws://127.0.0.1:{web_echo.port}/ws") as ws:
        await ws.send_str("ping-1")
        assert await ws.receive_str() == "ping-1"
        await ws.send_bytes(bytes(range(256)) * 4096)
        assert await ws.receive_bytes() == bytes(range(256)) * 4096


async def test_a_large_body_streams_back(web_echo: RunningJob, http: aiohttp.ClientSession) -> None:
    chunk, count = os.urandom(64 * 1024), 512  # 32 MiB, sent chunked

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    sent, received, size = hashlib.sha256(chunk * count).hexdigest(), hashlib.sha256(), 0
    async with http.post(f"http://127.0.0.1:{web_echo.port}/echo", data=body()) as response:
        assert response.status == 200 and response.headers["Transfer-Encoding"] == "chunked"
        async for part in response.content.iter_chunked(1 << 20):
            received.update(part)
            size += len(part)
    assert (size, received.hexdigest()) == (len(chunk) * count, sent)


async def test_bytes_streams_n_bytes_and_refuses_a_bad_n(web_echo: RunningJob, http: aiohttp.ClientSession) -> None:
    n = 5 * 1024 * 1024 + 7
    async with http.get(f"http://127.0.0.1:{web_echo.port}/bytes", params={"n": n}) as response:
        assert response.status == 200 and response.content_length == n
        assert await response.read() == expected_bytes(n)
    async with http.get(f"http://127.0.0.1:{web_echo.port}/bytes", params={"n": "-1"}) as response:
        assert response.status == 400
        assert "n must be a whole number of bytes" in await response.text()


async def test_whoami_on_the_port_and_on_the_dynamic_target(web_echo: RunningJob, http: aiohttp.ClientSession) -> None:
    for port in (web_echo.port, web_echo.port + 1):
        async with http.get(f"http://127.0.0.1:{port}/whoami") as response:
            assert await response.json() == {"user": getpass.getuser(), "host": socket.gethostname(), "port": port}


async def test_a_browser_on_a_wildcard_host_sees_the_websocket_echo(web_echo: RunningJob) -> None:
    dom = await dump_dom(f"http://app-4821-0.apps.test:{web_echo.port}/", resolve={"*.apps.test": "127.0.0.1"})
    sent = re.search(r'<span id="sent">(ping-[a-z0-9]+)</span>', dom)
    echo = re.search(r'<span id="echo">([^<]*)</span>', dom)
    assert sent and echo, dom
    assert echo[1] == sent[1], f"the page's websocket echo did not arrive: {dom}"


async def test_every_request_is_logged_to_stdout(web_echo: RunningJob, http: aiohttp.ClientSession) -> None:
    async with http.get(f"http://127.0.0.1:{web_echo.port}/whoami?logged=1") as response:
        assert response.status == 200
    # aiohttp logs a request once its response is sent: the line may follow the response by a moment.
    for attempt in Retrying(stop=stop_after_delay(5), wait=wait_fixed(0.05), reraise=True):
        with attempt:
            assert '"GET /whoami?logged=1 HTTP/1.1" 200' in web_echo.stdout()
    assert f"{MARKER}: user {getpass.getuser()}" in web_echo.stdout()


# --- desktop-vnc --------------------------------------------------------------------------------------


def desktop_password() -> str:
    vnc = ApplicationStore.with_library().applications[("desktop-vnc", "1")].invocation.vnc
    assert vnc is not None and vnc.password
    return vnc.password


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJob]:
    with running("desktop-vnc", tmp_path_factory.mktemp("desktop-vnc"), free_port()) as job:
        yield job


async def test_the_desktop_completes_the_rfb_handshake_through_websockify(desktop: RunningJob) -> None:
    init = await rfb_handshake(f"ws://127.0.0.1:{desktop.port}/websockify", desktop_password())
    assert (init.width, init.height, init.name) == (1280, 800, "UCloud job 4821")
    assert re.search(rf"desktop :\d+, websockify on port {desktop.port}", desktop.stdout())


async def test_the_desktop_refuses_a_wrong_password(desktop: RunningJob) -> None:
    with pytest.raises(RfbAuthenticationError, match="refused the password"):
        await rfb_handshake(f"http://127.0.0.1:{desktop.port}/websockify", "wrong")


def test_the_desktop_ends_with_its_job(tmp_path: Path) -> None:
    """Slurm ends a job with SIGTERM: the script's trap stops the X server and websockify and removes their folder."""
    with running("desktop-vnc", tmp_path, free_port()) as job:
        assert [path.name for path in (tmp_path / "tmp").iterdir()], "the desktop keeps its socket in $TMPDIR"
        job.process.send_signal(signal.SIGTERM)
        assert job.process.wait(timeout=10) == 143
        for attempt in Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.1), reraise=True):
            with attempt:
                assert not live_members(job.process.pid), "a process of the job is still there"
        assert not list((tmp_path / "tmp").iterdir()), "the desktop's folder was not removed"


def live_members(group: int) -> list[str]:
    """The processes of a process group that still run (zombies aside: who reaps orphans here is slow)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == group and fields[0] != "Z":
                members.append((stat.parent / "cmdline").read_text().replace("\0", " "))
    return members

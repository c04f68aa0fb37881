"""Web interfaces and remote desktops end to end: Core's interactiveSession WEB/VNC → the browser → the job's server.

The jobs run the library's ``web-echo`` (ucim/testing/web_app.py on $UCLOUD_PORT) and ``desktop-vnc``
(TigerVNC behind websockify) as alice on the platform's Slurm. The browser is an aiohttp client that
maps the wildcard domain to loopback (as DNS would send it to the gateway) and keeps cookies, and a
real headless Chromium; the VNC check completes a real RFB handshake with the desktop's password.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from ucim.common.protocol import Job, JobState, SimpleDuration
from ucim.common.resources import UCloudJob
from ucim.testing.browser import LoopbackResolver, dump_dom
from ucim.testing.rfb import RfbAuthenticationError, RfbError, rfb_handshake
from ucim.testing.stack import WEB_SUFFIX, Stack
from ucim.testing.web_app import MARKER, expected_bytes

pytestmark = pytest.mark.e2e

VNC_PASSWORD = "ucimvnc1"  # desktop-vnc.yaml's


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser's HTTP: names of the wildcard domain reach the gateway, cookies are kept per host."""
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=False)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar()) as client:
        yield client


async def running(stack: Stack, app: str, owner: str = "alice") -> tuple[Job, UCloudJob]:
    """A running job of ``app``; its servers run until the job ends, so a failed start cancels it at once."""
    job_id = str(uuid.uuid4().int % 10**9)
    spec = stack.core.make_job(job_id, owner, (app, "1"), {}, time_allocation=SimpleDuration(minutes=10))
    await stack.core.create_jobs([spec])
    try:
        await stack.core.wait_for_update(job_id, JobState.RUNNING, timeout=60)
    except BaseException:
        await stack.core.terminate_jobs([spec])
        raise
    return spec, UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job_id)}"))


async def opened(stack: Stack, spec: Job, kind: str, **options: Any) -> dict[str, Any]:
    answer = await stack.core.open_session(spec, kind, **options)
    assert answer.status == 200, answer.body
    (session,) = answer.body["responses"]
    assert isinstance(session, dict)
    return session


async def until_serving(browser: aiohttp.ClientSession, url: str) -> None:
    """The job's server starts a moment after the job does: 502 until it listens."""
    for _ in range(100):
        async with browser.get(url) as answer:
            if answer.status != 502:
                return
            why = await answer.text()
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never served: {why}")


async def check_traffic(browser: aiohttp.ClientSession, origin: URL) -> None:
    """The server runs as alice on the job's node; bodies stream both ways; websockets pass."""
    async with browser.get(origin / "whoami") as who:
        assert (await who.json())["user"] == "alice"
    body = os.urandom(3 << 20)
    async with browser.post(origin / "echo", data=body) as echoed:
        assert echoed.status == 200 and await echoed.read() == body
    async with browser.get((origin / "bytes").with_query(n=5_000_000)) as streamed:
        assert await streamed.read() == expected_bytes(5_000_000)
    async with browser.ws_connect(origin.with_scheme("ws") / "ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=10) == "hello"
        await ws.send_bytes(b"\x00\x01binary")
        assert await ws.receive_bytes(timeout=10) == b"\x00\x01binary"


async def check_dynamic_target(stack: Stack, browser: aiohttp.ClientSession, spec: Job) -> None:
    """The dynamic target "alt" has a host of its own, and its own cookie; it is served on the next port."""
    alt = await opened(stack, spec, "WEB", target="alt")
    alt_url = URL(alt["redirectClientTo"])
    assert alt_url.host == f"app-{spec.id}-0-alt{WEB_SUFFIX}"
    async with browser.get(alt_url) as answer:
        assert answer.status in (200, 502)
    whoami = alt_url.with_path("/whoami").with_query(None)
    await until_serving(browser, str(whoami))
    async with browser.get(whoami) as who:
        assert who.status == 200 and (await who.json())["user"] == "alice"


async def test_a_web_app_is_served_on_its_host_to_its_owner_only(stack: Stack, browser: aiohttp.ClientSession) -> None:
    spec, job = await running(stack, "web-echo")
    try:
        assert [(i.type, i.rank, i.target) for i in job.status.interfaces] == [("WEB", None, None), ("WEB", 0, "alt")]
        # Core hears of the dynamic target as IM2 tells it: a status line, which its frontend turns into a button.
        port = job.status.interfaces[1].port
        lines = [u.status for u in stack.core.updates_for(spec.id) if u.state is None]
        assert f'Target: {{"rank":0,"type":"WEB","target":"alt","port":{port},"defaultName":null}}' in lines
        session = await opened(stack, spec, "WEB")
        assert session["type"] == "web" and session["jobId"] == spec.id and session["rank"] == 0
        redirect = URL(session["redirectClientTo"])
        assert redirect.host == f"app-{spec.id}-0{WEB_SUFFIX}"
        assert redirect.path == f"/ucloud/{stack.core.provider_id}/authorize-app"
        origin = redirect.with_path("/").with_query(None)

        # Before authorize-app: no cookie, no way in.
        async with browser.get(origin) as refused:
            assert refused.status == 403, await refused.text()
        # authorize-app sets the host's cookie and sends the browser to /, which is the job's page.
        async with browser.get(redirect) as answer:
            assert answer.status in (200, 502), await answer.text()
        cookies = browser.cookie_jar.filter_cookies(origin)
        assert f"ucloud-compute-session-{spec.id}-0-" in cookies
        await until_serving(browser, str(origin))
        async with browser.get(origin) as page:
            assert page.status == 200 and MARKER in await page.text()
        # The token was used: a second redemption (another browser) is refused.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver())) as other:
            async with other.get(redirect) as again:
                assert again.status == 404
                assert "Unknown application" in (await again.json())["why"]
            async with other.get(origin) as without:  # and without a cookie nothing passes
                assert without.status == 403

        await check_traffic(browser, origin)
        await check_dynamic_target(stack, browser, spec)

        # bob gets no session of alice's job from Core, and alice's cookie means nothing on another job's host.
        refused_bob = await stack.core.open_session(spec, "WEB", username="bob")
        assert refused_bob.status == 403, refused_bob.body
        other_host = origin.with_host(f"app-{int(spec.id) + 1}-0{WEB_SUFFIX}")
        async with browser.get(other_host) as unknown:
            assert unknown.status in (403, 404)
    finally:
        await stack.core.terminate_jobs([spec])
    # Once the job has ended its host answers 404, cookie or not.
    await stack.core.wait_for_update(spec.id, JobState.SUCCESS, timeout=60)
    for _ in range(50):
        async with browser.get(origin) as gone:
            if gone.status == 404:
                break
        await asyncio.sleep(0.1)
    assert gone.status == 404


@pytest.mark.parametrize(
    "host",
    ["app-1-0" + WEB_SUFFIX, "app-x-y" + WEB_SUFFIX, "app-" + "9" * 50 + "-0" + WEB_SUFFIX, "evil.example.org",
     "app-1-0" + WEB_SUFFIX + ".evil.org", "%00", "app-1-999999999" + WEB_SUFFIX],
)  # fmt: skip
async def test_hostile_hosts_and_cookies_get_a_clear_4xx(stack: Stack, host: str) -> None:
    gateway = URL(str(stack.core.provider_url))
    async with aiohttp.ClientSession() as client:
        headers = {"Host": host, "Cookie": f"ucloud-compute-session-1-0-=forged.{'x' * 300}.sig"}
        async with client.get(gateway.with_path("/"), headers=headers) as answer:
            assert 400 <= answer.status < 500, (host, answer.status, await answer.text())
        async with client.get(
            gateway.with_path("/ucloud/ucim/authorize-app").with_query(token="1" * 44), headers=headers
        ) as answer:
            assert 400 <= answer.status < 500


async def test_a_web_app_page_and_its_websocket_work_in_chromium(stack: Stack) -> None:
    spec, _job = await running(stack, "web-echo")
    try:
        session = await opened(stack, spec, "WEB")
        redirect = URL(session["redirectClientTo"])
        await asyncio.sleep(1.0)  # the server starts a moment after the job; the token is for one use only
        dom = await dump_dom(str(redirect), resolve={f"*{WEB_SUFFIX}": "127.0.0.1"})
        assert MARKER in dom
        sent = dom.split('<span id="sent">')[1].split("<")[0]
        assert sent.startswith("ping-") and f'<span id="echo">{sent}</span>' in dom
    finally:
        await stack.core.terminate_jobs([spec])


async def test_a_desktop_completes_a_real_vnc_handshake_with_its_password(stack: Stack) -> None:
    spec, job = await running(stack, "desktop-vnc")
    try:
        assert [(i.type, i.target) for i in job.status.interfaces] == [("VNC", None)]
        session = await opened(stack, spec, "VNC")
        assert session["type"] == "vnc" and session["jobId"] == spec.id and session["rank"] == 0
        assert session["password"] == VNC_PASSWORD  # the application's, from Core's resolvedApplication
        url = session["url"]
        assert url.startswith(f"{stack.core.provider_url}/ucloud/{stack.core.provider_id}/vnc?token=")
        init, last = None, None
        for _ in range(50):  # the desktop starts a moment after the job
            try:
                init = await rfb_handshake(url, VNC_PASSWORD)
                break
            except RfbError as error:
                last = error
                await asyncio.sleep(0.2)
        assert init is not None, last
        assert init.width == 1280 and init.height == 800
        assert f"UCloud job {spec.id}" in init.name
        # The URL is reusable (noVNC reconnects with it); a wrong password is the server's to refuse.
        with pytest.raises(RfbAuthenticationError):
            await rfb_handshake(url, "wrong!")
        async with aiohttp.ClientSession() as client:
            forged = URL(url).with_query(token="x.y.z")
            async with client.get(forged) as answer:
                assert answer.status == 403
        # A web session of a desktop job is refused clearly: it has no web interface.
        web = await stack.core.open_session(spec, "WEB")
        assert web.status == 400 and "no web interface" in web.body["why"]
    finally:
        await stack.core.terminate_jobs([spec])

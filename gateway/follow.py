"""The log follow websocket: ``GET /ucloud/jobs.provider.<id>/websocket`` (PROTOCOL-INTERACTIVE §1).

Core dials it with its JWT and the acting user in ``usernameHint``, and sends one init frame
naming the job. The job's UCloudJob must exist and belong to that user; otherwise the answer
is one response frame with the status (404, 403) and UCloud's error body, and the socket closes.

The output itself is read by the owner's instance, as the owner (``POST /jobs/follow``,
``ucim.user_sidecar.log_follow``): the gateway relays its NDJSON chunks as log messages,
remembering how far each file was read. It learns that the job is terminal by watching its
UCloudJob (``Kube.wait_for``), then stops the live stream and asks the instance once more,
without ``follow``, for what was written after those offsets: the last bytes are sent before
the end frame. A job that is already terminal gets its whole output and the end at once (the
anchor sends nothing then, PROTOCOL-INTERACTIVE §8.1). After the end the socket stays open until
Core closes it, as IM2 does. Pings go out right after init and every 30 s; a ``cancel`` frame or
Core closing the socket ends the follow (and the instance's read).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from ucim.common import follow_frames as frames
from ucim.common.instance_api import JOBS_FOLLOW_PATH, FollowRequest, LogChunk
from ucim.common.resources import UCloudJob
from ucim.common.retry import retrying
from ucim.gateway.errors import ProviderError
from ucim.gateway.files import core_user
from ucim.gateway.instance_proxy import InstanceNotReadyError, InstanceUnreachableError
from ucim.gateway.keys import KUBE, PROXY, SETTINGS
from ucim.gateway.metrics import LOG_BYTES, LOG_LINES
from ucim.gateway.sockets import tracked
from ucim.gateway.transfers import wake

log = logging.getLogger(__name__)

INIT_TIMEOUT_SECONDS = 30.0  # Core sends init right after dialling
MAX_FRAME_BYTES = 4 << 20  # an init carries a whole Job


class FollowRefusedError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _final(job: UCloudJob | None) -> bool:
    return job is None or (job.status.state is not None and job.status.state.is_final)


def _folder(job: UCloudJob | None) -> str | None:
    return None if job is None else job.status.job_folder


class FollowSession:
    """One follow: the socket, the user, and how far each output file was relayed."""

    def __init__(self, request: web.Request, socket: web.WebSocketResponse, username: str) -> None:
        self.request = request
        self.socket = socket
        self.username = username
        self.session = frames.session_id()
        self.stream = ""  # the init frame's streamId, echoed in every frame
        self.offsets: dict[str, int] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send_str(json.dumps(frame, separators=(",", ":")))

    async def run(self) -> None:
        try:
            job = await self.job(await self.init())
        except frames.FrameError as error:
            await self.socket.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=str(error)[:120].encode())
            return
        except FollowRefusedError as refusal:
            await self.send(frames.refusal_frame(self.stream, refusal.status, refusal.why))
            await self.socket.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=refusal.why[:120].encode())
            return
        pinger = asyncio.create_task(self.ping())
        follower = asyncio.create_task(self.follow(job))
        listener = asyncio.create_task(self.listen())
        try:
            await asyncio.wait({follower, listener}, return_when=asyncio.FIRST_COMPLETED)
            failure = follower.exception() if follower.done() else None
            if not self.socket.closed:
                await self.send(self.last_frame(job, failure))
            if follower.done() and failure is None:
                # After the end, as IM2, the socket stays open (pings go on) until Core closes it: core2 stops
                # polling the job for the browser when the provider closes, so the terminal state would not reach
                # it, and the browser's socket, closed by Core, reconnects and gets the whole output again.
                await listener
        finally:
            for task in (pinger, follower, listener):
                task.cancel()
            await asyncio.gather(pinger, follower, listener, return_exceptions=True)
        await self.socket.close()

    def last_frame(self, job: UCloudJob, failure: BaseException | None) -> dict[str, Any]:
        """The end frame, or a response with the status of what ended the follow early."""
        if failure is None:
            return frames.end_frame(self.session, self.stream)
        log.warning("log follow ended early", extra={"job": job.spec.job_id, "why": str(failure)})
        if isinstance(failure, FollowRefusedError):
            return frames.refusal_frame(self.stream, failure.status, failure.why)
        return frames.refusal_frame(self.stream, 502, "the follow broke off")

    async def init(self) -> str:
        """The job id of Core's init frame."""
        try:
            message = await self.socket.receive(timeout=INIT_TIMEOUT_SECONDS)
        except TimeoutError as error:
            raise frames.FrameError(f"no init frame within {INIT_TIMEOUT_SECONDS:g} s") from error
        if message.type != aiohttp.WSMsgType.TEXT:
            raise frames.FrameError("the first frame must be a text frame with the init request")
        envelope = frames.parse_request(message.data, self.request.app[SETTINGS].provider_id)
        self.stream = envelope.stream_id
        if envelope.payload.type != "init":
            raise frames.FrameError("the first request must be init")
        return frames.job_id_of(envelope)

    async def job(self, job_id: str) -> UCloudJob:
        """The UCloudJob of ``job_id``, which the acting user must own."""
        settings = self.request.app[SETTINGS]
        job = await self.request.app[KUBE].get(UCloudJob, settings.namespace, UCloudJob.name_for(job_id))
        if job is None or job.spec.cluster != settings.cluster:
            raise FollowRefusedError(404, f"this provider has no job {job_id}")
        if job.spec.owner != self.username:
            raise FollowRefusedError(403, f"job {job_id} belongs to another user; only its owner can follow its output")
        return job

    async def ping(self) -> None:
        while True:
            await self.send(frames.PING)
            await asyncio.sleep(frames.PING_SECONDS)

    async def listen(self) -> None:
        """Until Core closes the socket or cancels; other frames are ignored, as IM2 does."""
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                if json.loads(message.data).get("type") == "cancel":
                    return

    async def follow(self, job: UCloudJob) -> None:
        """Relay the output live until the job is terminal, then what was written after."""
        kube, namespace, name = self.request.app[KUBE], self.request.app[SETTINGS].namespace, job.metadata.name
        # The folder exists once the instance submitted the job.
        found = await kube.wait_for(UCloudJob, namespace, name, lambda j: _final(j) or _folder(j) is not None)
        folder = _folder(found)
        if folder is None:
            return
        if not _final(found):
            live = asyncio.create_task(self.relay_live(folder))
            try:
                await kube.wait_for(UCloudJob, namespace, name, _final)
            finally:
                live.cancel()
                await asyncio.gather(live, return_exceptions=True)
        await self.relay(folder, follow=False)

    async def relay_live(self, folder: str) -> None:
        """The live stream, resumed from the offsets when it breaks (an instance restarted, a bridge went)."""
        async for attempt in retrying(first=1.0, cap=30.0, log=log, what="log follow"):
            with attempt:
                await self.relay(folder, follow=True)

    async def relay(self, folder: str, *, follow: bool) -> None:
        body = FollowRequest(job_folder=folder, offsets=self.offsets, follow=follow).model_dump_json(by_alias=True)
        upstream = await self.open(body.encode())
        async with upstream:
            if upstream.status != 200:
                why = await upstream.text()
                with contextlib.suppress(json.JSONDecodeError, AttributeError):
                    why = json.loads(why).get("why", why)
                raise FollowRefusedError(upstream.status, f"the job's output cannot be read: {why}")
            async for line in upstream.content:
                if line.strip():
                    await self.relay_chunk(LogChunk.model_validate_json(line))

    async def relay_chunk(self, chunk: LogChunk) -> None:
        await self.send(frames.log_message(self.session, self.stream, chunk.rank, chunk.stream, chunk.text))
        self.offsets[chunk.file] = chunk.end
        LOG_BYTES.inc(len(chunk.text.encode()))
        LOG_LINES.inc(chunk.text.count("\n"))

    async def open(self, body: bytes) -> aiohttp.ClientResponse:
        """The instance's streamed answer; a stopped instance is started again first (Core does not init here)."""
        proxy, headers = self.request.app[PROXY], {"Content-Type": "application/json"}
        try:
            try:
                return await proxy.send(
                    self.username, "POST", JOBS_FOLLOW_PATH, headers=headers, body=body, tunnel=True
                )
            except InstanceNotReadyError:
                await wake(self.request, self.username)
                return await proxy.send(
                    self.username, "POST", JOBS_FOLLOW_PATH, headers=headers, body=body, tunnel=True
                )
        except (InstanceNotReadyError, InstanceUnreachableError) as error:
            raise FollowRefusedError(503, str(error)) from error
        except ProviderError as error:
            raise FollowRefusedError(error.status, error.why) from error


async def follow_socket(request: web.Request) -> web.StreamResponse:
    username = core_user(request)  # a 400 before the upgrade without usernameHint
    socket = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES)
    await socket.prepare(request)
    async with tracked(request, socket, "follow"):
        await FollowSession(request, socket, username).run()
    return socket


def setup_follow_routes(app: web.Application, provider_id: str) -> None:
    app.router.add_get(f"/ucloud/jobs.provider.{provider_id}/websocket", follow_socket)

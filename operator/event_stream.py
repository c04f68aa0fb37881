"""Core's accounting event stream, kept open by the operator, turned into UCloudProjects.

The operator dials ``/api/accounting/notifications``, authenticates in the stream (the
first frame: the replay point and an access token) and applies every project and wallet
event to the spec of the workspace's UCloudProject; the bridge makes the frontend match
that spec (groups, Slurm accounts, locks). After each frame the replay point is saved on
the stream's Lease, so a restarted operator asks Core to replay only what came after.

Nothing is applied twice: an event makes the spec equal to what Core said, so a replayed
event patches nothing, and the bridge acts on the difference between the spec and what it
applied (recorded in the status), never on events. The replay point is therefore kept a
margin behind the newest event (Core's clock decides what is replayed, and the records of
one flush are not ordered by time): replaying a minute more costs a few no-op comparisons.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import aiohttp

from ucim.common.accounting_stream import (
    REPLAY_EVERYTHING_MS,
    ProjectUpdated,
    StreamProtocolError,
    StreamSession,
    WalletUpdated,
    auth_frame,
)
from ucim.common.core_client import CoreClient
from ucim.common.kube import Kube, NotFoundError
from ucim.common.resources import (
    Lease,
    LeaseSpec,
    UCloudProject,
    UCloudProjectSpec,
    Workspace,
    cluster_labels,
    cluster_selector,
)
from ucim.common.retry import retrying
from ucim.operator import metrics
from ucim.operator.workspaces import (
    new_project,
    project_workspace,
    spec_patch,
    wallet_workspace,
    with_project,
    with_wallet,
)

log = logging.getLogger(__name__)

NOTIFICATIONS_PATH: Final = "/api/accounting/notifications"
LEASE_NAME: Final = "ucim-accounting-stream"
REPLAY_ANNOTATION: Final = "ucim.io/replay-from"
REPLAY_MARGIN_MS: Final = 60_000
# A session that ends sooner than this counts as a failure (a refused token closes the socket at once):
# the backoff grows. One that lasted longer ends normally and the next dial comes at once.
HEALTHY_SESSION_SECONDS: Final = 30.0
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0


class StreamClosedError(Exception):
    """Core closed the stream (or it broke) before the session had proved healthy."""


class ReplayPoint:
    """The replay point, an annotation of the stream's Lease (the operator's own object)."""

    def __init__(self, kube: Kube, namespace: str, cluster: str) -> None:
        self.kube, self.namespace, self.cluster = kube, namespace, cluster
        self.millis = REPLAY_EVERYTHING_MS

    async def load(self) -> int:
        lease = await self.kube.get(Lease, self.namespace, LEASE_NAME)
        if lease is None:
            lease = Lease.model_validate(
                {
                    "metadata": {"name": LEASE_NAME, "labels": cluster_labels(self.cluster)},
                    "spec": LeaseSpec(holder_identity="ucim-operator"),
                }
            )
            await self.kube.create(lease, self.namespace)
        saved = (lease.metadata.annotations or {}).get(REPLAY_ANNOTATION, "")
        self.millis = int(saved) if saved.lstrip("-").isdigit() else REPLAY_EVERYTHING_MS
        return self.millis

    async def advance(self, newest_event_ms: int) -> None:
        """Move the point to a margin behind ``newest_event_ms``; never back."""
        wanted = newest_event_ms - REPLAY_MARGIN_MS
        if wanted <= self.millis:
            return
        await self.kube.patch(
            Lease, self.namespace, LEASE_NAME, {"metadata": {"annotations": {REPLAY_ANNOTATION: str(wanted)}}}
        )
        self.millis = wanted


class Workspaces:
    """The UCloudProjects of this cluster as the operator last wrote them: it is their spec's one writer."""

    def __init__(self, kube: Kube, namespace: str, cluster: str) -> None:
        self.kube, self.namespace, self.cluster = kube, namespace, cluster
        self.known: dict[str, UCloudProject] = {}

    async def load(self) -> None:
        listed = await self.kube.list(UCloudProject, self.namespace, cluster_selector(self.cluster))
        self.known = {p.metadata.name: p for p in listed}

    async def apply(self, event: ProjectUpdated | WalletUpdated) -> bool:
        """Make the workspace's spec say what ``event`` says; True if that changed it."""
        workspace = project_workspace(event) if isinstance(event, ProjectUpdated) else wallet_workspace(event)
        current = self.known.get(UCloudProject.name_for(workspace)) or new_project(workspace, self.cluster)
        if isinstance(event, WalletUpdated) and not current.spec.can_consume_resources:
            return False  # as the anchor: a project that may not consume resources has no wallets here
        if isinstance(event, ProjectUpdated):
            wanted = with_project(current.spec, event)
        else:
            wanted = with_wallet(current.spec, event)
        return await self._write(current, workspace, wanted)

    async def _write(self, current: UCloudProject, workspace: Workspace, wanted: UCloudProjectSpec) -> bool:
        name = current.metadata.name
        if name not in self.known:
            created = await self.kube.create(current.model_copy(update={"spec": wanted}), self.namespace)
            self.known[name] = created
            log.info("workspace created", extra={"workspace": workspace.id, "kind": workspace.kind})
            return True
        patch = spec_patch(current.spec, wanted)
        if patch is None:
            return False
        try:
            self.known[name] = await self.kube.patch(UCloudProject, self.namespace, name, patch)
        except NotFoundError:
            # Deleted behind our back (kubectl delete): Core's state makes it again.
            del self.known[name]
            return await self._write(new_project(workspace, self.cluster), workspace, wanted)
        return True


class AccountingStream:
    """Keep Core's accounting event stream open and apply what it says, for ever."""

    def __init__(self, core: CoreClient, kube: Kube, *, core_url: str, namespace: str, cluster: str) -> None:
        self.core = core
        self.url = core_url.rstrip("/").replace("http", "ws", 1) + NOTIFICATIONS_PATH
        self.replay = ReplayPoint(kube, namespace, cluster)
        self.workspaces = Workspaces(kube, namespace, cluster)

    async def run(self) -> None:
        metrics.ACCOUNTING_ENABLED.set(1)
        while True:
            async for attempt in retrying(
                first=FIRST_RETRY_SECONDS, cap=MAX_RETRY_SECONDS, log=log, what="Core's accounting event stream"
            ):
                with attempt:
                    await self.session()

    async def session(self) -> None:
        """One connection: authenticate, then apply frames until Core closes it."""
        replay_from = await self.replay.load()
        await self.workspaces.load()
        token = await self.core.access_token()
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.ws_connect(self.url, autoping=True) as socket:
            await socket.send_bytes(auth_frame(replay_from, token))
            metrics.ACCOUNTING_STREAM_CONNECTED.set(1)
            log.info("accounting event stream open", extra={"replay_from": replay_from})
            try:
                await self._read(socket, StreamSession())
            finally:
                metrics.ACCOUNTING_STREAM_CONNECTED.set(0)
                metrics.ACCOUNTING_STREAM_DISCONNECTS.inc()
        lasted = time.monotonic() - started
        if lasted < HEALTHY_SESSION_SECONDS:
            raise StreamClosedError(f"Core closed the accounting event stream after {lasted:.1f} s")
        log.info("Core closed the accounting event stream; dialling again", extra={"seconds": round(lasted)})

    async def _read(self, socket: aiohttp.ClientWebSocketResponse, session: StreamSession) -> None:
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                await self.frame(session, message.data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                raise StreamClosedError(f"the accounting event stream broke: {socket.exception()}")

    async def frame(self, session: StreamSession, data: bytes) -> None:
        """Apply every event of one frame, then move the replay point past them."""
        try:
            events = session.feed(data)
        except StreamProtocolError:
            metrics.ACCOUNTING_EVENTS.labels(kind="malformed").inc()
            raise  # as the anchor: a frame we cannot read ends the session
        newest = None
        for event in events:
            changed = await self.workspaces.apply(event)
            kind = "project" if isinstance(event, ProjectUpdated) else "wallet"
            metrics.ACCOUNTING_EVENTS.labels(kind=kind).inc()
            if changed:
                metrics.ACCOUNTING_CHANGES.labels(kind=kind).inc()
            stamp = event.modified_at_ms if isinstance(event, ProjectUpdated) else event.last_update_ms
            newest = stamp if newest is None else max(newest, stamp)
        if newest is not None:
            metrics.ACCOUNTING_LAST_EVENT.set(newest / 1000)
            await self.replay.advance(min(newest, int(time.time() * 1000)))

"""Core's accounting event stream → UCloudProjects, on the real apiserver, against the Core stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr

from tests.support.platform import Platform
from ucim.common import reasons
from ucim.common.accounting_stream import REPLAY_EVERYTHING_MS, Workspace
from ucim.common.conditions import find_condition
from ucim.common.core_client import CoreClient
from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.resources import Lease, UCloudProject, Wallet, cluster_selector
from ucim.common.resources import Workspace as WorkspaceRef
from ucim.operator.event_stream import LEASE_NAME, REPLAY_ANNOTATION, AccountingStream
from ucim.operator.usage import UsageReporter
from ucim.testing.core_standin import CoreStandIn

pytestmark = pytest.mark.integration

PROVIDER, REFRESH_TOKEN = "ucim", "refresh-accounting"
WAIT = 10.0


@pytest.fixture
async def kube(platform: Platform) -> AsyncIterator[Kube]:
    async with await Kube.connect(platform.kubeconfig, component="operator") as client:
        yield client


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, REFRESH_TOKEN) as standin:
        standin.record.products.extend(m.product(PROVIDER) for m in DEFAULT_MACHINE_TYPES)
        await standin.start()
        yield standin


@contextlib.asynccontextmanager
async def running(
    core: CoreStandIn, make: Callable[[CoreClient], AccountingStream | UsageWatch]
) -> AsyncIterator[None]:
    """The operator's stream or reporter, with its own Core client, until the block ends."""
    client = CoreClient(core.url, SecretStr(REFRESH_TOKEN))
    task = asyncio.create_task(make(client).run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def stream_running(core: CoreStandIn, kube: Kube, namespace: str) -> contextlib.AbstractAsyncContextManager[None]:
    return running(
        core, lambda client: AccountingStream(client, kube, core_url=core.url, namespace=namespace, cluster="local")
    )


def reporter_running(
    core: CoreStandIn, kube: Kube, namespace: str, resync_seconds: float = 600.0
) -> contextlib.AbstractAsyncContextManager[None]:
    return running(core, lambda client: UsageWatch(client, kube, namespace, resync_seconds))


class UsageWatch:
    """The operator's usage reporter with the informer that feeds it, as the operator runs them."""

    def __init__(self, client: CoreClient, kube: Kube, namespace: str, resync_seconds: float) -> None:
        self.projects = Informer(kube, UCloudProject, namespace, label_selector=cluster_selector("local"))
        self.reporter = UsageReporter(
            client, kube, self.projects, namespace=namespace, provider_id=PROVIDER, resync_seconds=resync_seconds
        )
        self.projects.on_event = self.reporter.on_project

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.projects.run())
            tasks.create_task(self.reporter.run())


async def wait_for_project(
    kube: Kube, namespace: str, project_id: str, what: str, check: Callable[[UCloudProject], object]
) -> UCloudProject:
    name = UCloudProject.name_for(WorkspaceRef(kind="project", id=project_id))
    found = await asyncio.wait_for(
        kube.wait_for(UCloudProject, namespace, name, lambda p: p is not None and bool(check(p))),
        WAIT,
    )
    assert found is not None, what
    return found


async def test_projects_and_wallets_of_core_become_ucloudprojects(
    core: CoreStandIn, kube: Kube, namespace: str
) -> None:
    project_id = core.accounting.create_project("Protein folding", {"alice#1": "PI", "bob#2": "USER"})
    owner = Workspace.project(project_id)
    await core.accounting.grant(owner, "cpu", 100)
    async with stream_running(core, kube, namespace):
        made = await wait_for_project(kube, namespace, project_id, "granted", lambda p: p.wallet("cpu"))
        assert made.spec.title == "Protein folding"
        assert [(m.username, m.role) for m in made.spec.members] == [("alice#1", "PI"), ("bob#2", "USER")]
        wallet = made.wallet("cpu")
        assert wallet is not None
        assert (wallet.quota, wallet.locked, wallet.frequency, wallet.product_type) == (
            100, False, "PERIODIC_HOUR", "COMPUTE",
        )  # fmt: skip
        assert made.metadata.labels == {"ucim.io/cluster": "local"}

        # Live: a lock, and a member leaving.
        await core.accounting.set_locked(owner, "cpu", True)
        await wait_for_project(kube, namespace, project_id, "locked", lambda p: cpu(p).locked)
        await core.accounting.set_members(project_id, {"alice#1": "PI"})
        await wait_for_project(kube, namespace, project_id, "bob left", lambda p: len(p.spec.members) == 1)


async def test_a_restarted_stream_resumes_from_its_replay_point_and_changes_nothing(
    core: CoreStandIn, kube: Kube, namespace: str
) -> None:
    project_id = core.accounting.create_project("Replayed", {"alice#1": "PI"})
    await core.accounting.grant(Workspace.project(project_id), "cpu", 10)
    async with stream_running(core, kube, namespace):
        first = await wait_for_project(kube, namespace, project_id, "granted", lambda p: p.wallet("cpu"))
        await asyncio.wait_for(
            kube.wait_for(Lease, namespace, LEASE_NAME, lambda lease: _replay_point(lease) > REPLAY_EVERYTHING_MS),
            WAIT,
        )
    # Killed (cancelled) and started again: it asks Core to replay from where it was, and what Core replays
    # (the same wallet, within the margin) patches nothing.
    async with stream_running(core, kube, namespace):
        auths = await core.accounting.wait_for_auths(2)
        assert auths[0].replay_from_ms == REPLAY_EVERYTHING_MS
        assert auths[-1].replay_from_ms > REPLAY_EVERYTHING_MS
        await core.accounting.grant(Workspace.project(project_id), "cpu", 20)
        second = await wait_for_project(kube, namespace, project_id, "raised", lambda p: cpu(p).quota == 20)
    assert second.metadata.generation == (first.metadata.generation or 0) + 1


def cpu(project: UCloudProject) -> Wallet:
    wallet = project.wallet("cpu")
    assert wallet is not None
    return wallet


def _replay_point(lease: Lease | None) -> int:
    saved = (lease.metadata.annotations or {}).get(REPLAY_ANNOTATION) if lease is not None else None
    return int(saved) if saved else REPLAY_EVERYTHING_MS


async def test_measured_usage_reaches_core_once_and_a_refusal_is_told(
    core: CoreStandIn, kube: Kube, namespace: str, platform: Platform
) -> None:
    project_id = core.accounting.create_project("Used", {"alice#1": "PI"})
    owner = Workspace.project(project_id)
    await core.accounting.grant(owner, "cpu", 10)
    async with stream_running(core, kube, namespace):
        made = await wait_for_project(kube, namespace, project_id, "granted", lambda p: p.wallet("cpu"))
    async with await Kube.connect(platform.kubeconfig, component="bridge") as bridge:
        # What the bridge measures: 4 core-hours of cpu, and usage of a category Core does not know.
        usage = [{"category": "cpu", "usage": 4}, {"category": "no-such-category", "usage": 1}]
        await bridge.patch_status(UCloudProject, namespace, made.metadata.name, {"usage": usage})
    async with reporter_running(core, kube, namespace):
        assert (await core.accounting.wait_for_usage(owner, "cpu", lambda used: used == 4)).usage == 4
        reported = await wait_for_project(
            kube, namespace, project_id, "refusal told",
            lambda p: (c := find_condition(p.status.conditions, reasons.USAGE_REPORTED)) is not None
            and c.status == "False",
        )  # fmt: skip
    assert [(u.category, u.usage) for u in reported.status.reported_usage] == [("cpu", 4)]
    condition = find_condition(reported.status.conditions, reasons.USAGE_REPORTED)
    assert condition is not None and "This category does not exist" in condition.message
    # Started again, the reporter sends no cpu figure again: Core has it already.
    sent = len([r for r in core.accounting.usage_reports if r.category == "cpu"])
    async with reporter_running(core, kube, namespace):
        await asyncio.sleep(2)
    assert len([r for r in core.accounting.usage_reports if r.category == "cpu"]) == sent


async def test_a_figure_core_holds_differently_is_set_right_by_the_next_resync(
    core: CoreStandIn, kube: Kube, namespace: str, platform: Platform
) -> None:
    project_id = core.accounting.create_project("Resynced", {"alice#1": "PI"})
    owner = Workspace.project(project_id)
    await core.accounting.grant(owner, "cpu", 10)
    async with stream_running(core, kube, namespace):
        made = await wait_for_project(kube, namespace, project_id, "granted", lambda p: p.wallet("cpu"))
    async with await Kube.connect(platform.kubeconfig, component="bridge") as bridge:
        await bridge.patch_status(
            UCloudProject, namespace, made.metadata.name, {"usage": [{"category": "cpu", "usage": 3}]}
        )
    async with reporter_running(core, kube, namespace, resync_seconds=2.0):
        await core.accounting.wait_for_usage(owner, "cpu", lambda used: used == 3)
        await core.accounting.set_usage(owner, "cpu", 7)  # someone else's report
        await core.accounting.wait_for_usage(owner, "cpu", lambda used: used == 3, timeout=WAIT)

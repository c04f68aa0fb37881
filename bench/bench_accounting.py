#!/usr/bin/env python3
"""Core's accounting on the real platform: how fast a change at Core reaches the spec and the frontend, what a
usage cycle costs at 1,000 and 10,000 workspaces, and how fresh Core's view of the usage is.

Runs against the local platform (``python3 hack/local_platform.py up``), as root (groupadd, sacctmgr), under
its lock (``flock /tmp/ucim-platform.lock``). Everything runs in this process, as the tests drive it: Core's
stand-in, the operator's AccountingStream and UsageReporter, and the bridge's WorkspaceController with a real
connections Informer, LocalGroups and SlurmAccounts (sacctmgr on the platform's slurmdbd).

1. **Change → spec**: a grant, a lock flip or a member change at Core → the UCloudProject's spec shows it.
2. **Change → applied**: the same change → the controller's status shows it applied (observedGeneration of
   that spec, and the accounts' quota/lock or the group's members), after groupadd/gpasswd and sacctmgr.
3. **Usage cycle** (``measure()``) over N UCloudProjects (one compute account each) in the controller's
   informer cache, with a stub ``usage_minutes()`` (one figure per account): the pure computation (nothing
   changed, no write) and the cycle in which every workspace's usage changed (N status patches).
4. **Usage freshness**: a changed ``status.usage`` → Core's wallet shows it (UsageReporter).
5. **Grant → applied at N accounts** (``--accounts N``): N more Slurm accounts (:class:`Fillers`), then
   ``--grants`` grants at Core, each timed until the status shows the quota applied: first with
   ``resync_seconds`` 0 (all accounts listed before every pass, as the controller did before its
   AccountsView), then with the view (the default). ``--changes 0`` leaves parts 1, 2 and 4 out.

Everything it makes is removed however it ends: the namespaces, the projects' Unix groups and Slurm accounts,
the N accounts.

    python3 -m bench accounting                       # 50 changes, 20 usage figures, 1,000 and 3,000 workspaces
    python3 -m bench accounting --changes 3 --usage-rounds 3 --sizes 10000 --json out.json
    python3 -m bench accounting --sizes '' --accounts 10000    # parts 1, 2, 4 and 5 (2 min 13 s)

Measured on the 2-core VM (Slurm 22.05.8 with slurmdbd/MariaDB, the platform's kube-apiserver and etcd, all on
the same 2 cores): the first four rows and the last two from ``--sizes '' --accounts 10000`` (with the
AccountsView), the usage cycle from the defaults (before it) and ``--changes 3 --usage-rounds 3 --sizes 10000``:

==================================================  =====================================================
what                                                figure
==================================================  =====================================================
change at Core → spec (50: grant, lock, members)    p50 15 ms, p95 16 ms, max 18 ms
change at Core → applied (grant / lock)             p50 384 / 387 ms, p95 388 / 391 ms
change at Core → applied (members)                  p50 628 ms, p95 671 ms (gpasswd, then sacctmgr)
status.usage changed → Core's wallet (20)           p50 1,032 ms, p95 1,038 ms (``GATHER_SECONDS`` is 1 s)
usage cycle, nothing changed: 1,000 / 3,000         11 ms / 26 ms (~10 µs a workspace; no write)
usage cycle, all changed: 1,000 / 3,000             7.7 s / 25.3 s (130 / 119 status patches a second)
usage cycle at 10,000: nothing / all changed        83 ms / 57.0 s (175 patches a second)
sshare (quoted from slurm_accounts.py)              15 ms at 1,000, 0.10 s at 3,000 accounts
grant → applied, 10,000 accounts: listing per pass  p50 736 ms, p95 809 ms (1.9 listings a grant)
grant → applied, 10,000 accounts: AccountsView      p50 388 ms, p95 396 ms (no listing)
==================================================  =====================================================

A change reaches the spec in one apiserver write; applying it is sacctmgr's time (one ``modify`` or ``add
user``, ~0.36 s; no listing of all accounts), a member change also gpasswd's. At 10,000 accounts the listing
(``show assoc wopinfo``) took 0.32 s and one account's 0.27 s; the listing without ``wopinfo``, what each pass
read before, takes ~1.2 ms per account with members (1.45 s at 1,000, 3.7 s at 3,000: ~12 s at 10,000), which
the empty filler accounts do not show. The usage
cycle is cheap while nothing changes (~8-11 µs a workspace) and costs one sequential status patch (6-8 ms) per
changed workspace otherwise: at 10,000 workspaces whose usage all changed, 57 s, about twice the default 30 s
interval. Making the 10,000 took 52 s (a create and a status patch each, 16 at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator as op
import pwd
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any, Final, NamedTuple

from prometheus_client import REGISTRY
from pydantic import SecretStr

from bench.bench_slurm_poll import platform_slurm_conf
from bench.report import bench_parser, run_bench
from ucim.common.accounting_stream import Workspace
from ucim.common.core_client import CoreClient
from ucim.common.informer import Informer
from ucim.common.kube import Kube
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.resources import (
    SlurmAccount,
    UCloudProject,
    UserConnection,
    Wallet,
    cluster_labels,
    cluster_selector,
)
from ucim.common.resources import Workspace as WorkspaceRef
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmError
from ucim.operator.event_stream import AccountingStream
from ucim.operator.usage import UsageReporter
from ucim.slurm_bridge.account_mapper import AccountMapperSettings, account_mapper
from ucim.slurm_bridge.sacctmgr import AccountState, outcome
from ucim.slurm_bridge.slurm_accounts import SlurmAccounts
from ucim.slurm_bridge.unix_groups import LocalGroups
from ucim.slurm_bridge.unix_groups.settings import GroupSettings
from ucim.slurm_bridge.workspaces import WorkspaceController
from ucim.testing.core_standin import CoreStandIn
from ucim.testing.stack import read_platform_env

PROVIDER, REFRESH_TOKEN, CLUSTER = "ucim", "refresh-accounting-bench", "local"
MEMBERS: Final = {"alice": "PI", "bob": "USER"}
WAIT: Final = 60.0
USAGE_WAIT: Final = 15.0
MAX_WORKSPACES: Final = 10_000
CREATE_CONCURRENCY: Final = 16
SLURM_ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "USER": "root"}
# Quoted from ucim.slurm_bridge.slurm_accounts (python -m bench accounts): the real sshare, not measured here.
SSHARE_MEDIAN_S: Final = {1000: 0.015, 3000: 0.10}
DEFAULT_RESYNC_SECONDS: Final = AccountMapperSettings().resync_seconds
# Seconds between the last change applied and the next, at scale: the controller's passes are over by then.
SETTLE: Final = 1.5
# Accounts per bulk create (~40 KB of arguments; one argument may hold 128 KB).
FILLER_CHUNK: Final = 2500


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "n": len(ordered),
    }


class Kubectl:
    def __init__(self, env: dict[str, str]) -> None:
        self.argv = [str(Path(env["UCIM_BIN_DIR"]) / "kubectl"), "--kubeconfig", env["KUBECONFIG"]]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, check=check, timeout=600)


@contextlib.asynccontextmanager
async def running(*coroutines: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run the loops while the block runs; cancelled after it, and what ended a loop early is told."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                print(f"# a loop ended early: {task.exception()!r}", file=sys.stderr, flush=True)
        # Cancelled again until they end: the controller's reconcile loop was seen to outlive a cancel
        # (left "cancelling" at its wait for work), which hung the run.
        pending = set(tasks)
        for _ in range(20):
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if not pending:
                break
        if pending:
            print(f"# {len(pending)} loops would not end", file=sys.stderr, flush=True)


# --- 1, 2 and 4: one project, changed at Core --------------------------------------------------


def connection(username: str) -> dict[str, Any]:
    """A UserConnection as the bridge leaves it once it has mapped the user (localUser, uid)."""
    return {
        "metadata": {"name": UserConnection.name_for(username, CLUSTER), "labels": cluster_labels(CLUSTER)},
        "spec": {"ucloudUsername": username, "cluster": CLUSTER, "localUser": username,
                 "uid": pwd.getpwnam(username).pw_uid},
    }  # fmt: skip


def cpu(project: UCloudProject) -> Wallet | None:
    return project.wallet("cpu")


class Step(NamedTuple):
    kind: str
    change: Callable[[], Awaitable[None]]
    in_spec: Callable[[UCloudProject], bool]
    applied: Callable[[UCloudProject], bool]


class ChangesAtCore:
    """A grant, a lock flip and a member change in turn, each with what the spec and the status then show."""

    def __init__(self, core: CoreStandIn, project_id: str) -> None:
        self.accounting, self.project_id = core.accounting, project_id
        self.owner = Workspace.project(project_id)
        self.locked, self.both = False, True

    def step(self, i: int, kind: str | None = None) -> Step:
        kind = kind or ("grant", "lock", "members")[i % 3]
        if kind == "grant":
            quota = 1001 + i
            return Step(
                kind,
                lambda: self.accounting.grant(self.owner, "cpu", quota),
                lambda p: (w := cpu(p)) is not None and w.quota == quota,
                lambda p: p.status.accounts[0].quota_minutes == quota * 60,
            )
        if kind == "lock":
            self.locked = locked = not self.locked
            return Step(
                kind,
                lambda: self.accounting.set_locked(self.owner, "cpu", locked),
                lambda p: (w := cpu(p)) is not None and w.locked == locked,
                lambda p: p.status.accounts[0].locked == locked,
            )
        self.both = not self.both
        wanted = sorted(MEMBERS) if self.both else ["alice"]
        return Step(
            kind,
            lambda: self.accounting.set_members(self.project_id, {u: MEMBERS[u] for u in wanted}),
            lambda p: sorted(m.username for m in p.spec.members) == wanted,
            lambda p: p.status.group_members == wanted and sorted(p.status.accounts[0].users) == wanted,
        )


async def timed_change(
    kube: Kube, namespace: str, name: str, step: Step, *, settle: float = 0.2
) -> tuple[float, float]:
    """Seconds from ``change`` to the spec showing it, and to the status showing it applied (one watch); the
    change is made ``settle`` seconds after the watch opened."""
    seen: dict[str, float] = {}
    generation: list[int] = []

    def check(project: UCloudProject | None) -> bool:
        if project is None:
            return False
        if "spec" not in seen and step.in_spec(project):
            seen["spec"] = time.perf_counter()
            generation.append(project.metadata.generation or 0)
        return bool(generation) and (project.status.observed_generation or 0) >= generation[0] and step.applied(project)

    waiter = asyncio.create_task(asyncio.wait_for(kube.wait_for(UCloudProject, namespace, name, check), WAIT))
    await asyncio.sleep(settle)  # the watch is open before the change
    started = time.perf_counter()
    await step.change()
    await waiter
    return seen["spec"] - started, time.perf_counter() - started


class Applying(NamedTuple):
    project_id: str
    name: str  # the UCloudProject's
    controller: WorkspaceController
    loops: list[asyncio.Task[Any]]


@contextlib.asynccontextmanager
async def applying(
    core: CoreStandIn, operator: Kube, bridge: Kube, namespace: str, *, resync_seconds: float
) -> AsyncIterator[Applying]:
    """A new project at Core (alice and bob, 1,000 core-hours of cpu) applied by the operator's stream and the
    bridge's controller, which run (with the usage reporter) in the block; it starts once the project's group and
    account are applied."""
    project_id = core.accounting.create_project("Accounting bench", MEMBERS)
    name = UCloudProject.name_for(WorkspaceRef(kind="project", id=project_id))
    await core.accounting.grant(Workspace.project(project_id), "cpu", 1000)
    client = CoreClient(core.url, SecretStr(REFRESH_TOKEN))
    stream = AccountingStream(client, operator, core_url=core.url, namespace=namespace, cluster=CLUSTER)
    for username in MEMBERS:
        await bridge.create(UserConnection.model_validate(connection(username)), namespace)
    connections: Informer[UserConnection] = Informer(
        bridge, UserConnection, namespace, label_selector=cluster_selector(CLUSTER)
    )
    controller = WorkspaceController(
        kube=bridge,
        namespace=namespace,
        cluster=CLUSTER,
        connections=connections,
        groups=LocalGroups(GroupSettings()),
        accounts=SlurmAccounts(SlurmConfig(slurm_conf=platform_slurm_conf(), env=SLURM_ENV, timeout_seconds=120)),
        names=account_mapper(AccountMapperSettings()),
        usage_interval_seconds=3600,  # the usage cycle is measured on its own (part 3)
        resync_seconds=resync_seconds,
    )
    connections.on_event = controller.on_connection
    watched = Informer(operator, UCloudProject, namespace, label_selector=cluster_selector(CLUSTER))
    reporter = UsageReporter(client, operator, watched, namespace=namespace, provider_id=PROVIDER)
    watched.on_event = reporter.on_project
    try:
        async with running(stream.run(), connections.run(), controller.run(), watched.run(), reporter.run()) as loops:
            await asyncio.wait_for(
                operator.wait_for(UCloudProject, namespace, name,
                                  lambda p: p is not None and len(p.status.accounts) == 1
                                  and len(p.status.group_members) == 2),
                WAIT,
            )  # fmt: skip
            yield Applying(project_id, name, controller, loops)
    finally:
        await client.close()


async def measure_changes(
    core: CoreStandIn, operator: Kube, bridge: Kube, namespace: str, *, changes: int, usage_rounds: int
) -> dict[str, Any]:
    to_spec: dict[str, list[float]] = {"grant": [], "lock": [], "members": []}
    to_applied: dict[str, list[float]] = {"grant": [], "lock": [], "members": []}
    freshness: list[float] = []
    missed: list[str] = []
    async with applying(core, operator, bridge, namespace, resync_seconds=DEFAULT_RESYNC_SECONDS) as run:
        changes_at_core = ChangesAtCore(core, run.project_id)
        for i in range(changes):
            step = changes_at_core.step(i)
            spec_s, applied_s = await timed_change(operator, namespace, run.name, step)
            to_spec[step.kind].append(spec_s)
            to_applied[step.kind].append(applied_s)
        # 4: usage written as the bridge would → Core's wallet.
        owner = Workspace.project(run.project_id)
        for k in range(1, usage_rounds + 1):
            started = time.perf_counter()
            await bridge.patch_status(UCloudProject, namespace, run.name, {"usage": [{"category": "cpu", "usage": k}]})
            try:
                await core.accounting.wait_for_usage(owner, "cpu", partial(op.eq, k), timeout=USAGE_WAIT)
            except TimeoutError as error:
                # Told, not fatal: the latencies above are still worth having.
                ended = [repr(t.exception()) for t in run.loops if t.done() and not t.cancelled() and t.exception()]
                missed.append(f"usage {k}: {error}; loops ended: {ended}")
                print(f"# {missed[-1]}", file=sys.stderr, flush=True)
                break
            freshness.append(time.perf_counter() - started)
    every_spec = [s for samples in to_spec.values() for s in samples]
    every_applied = [s for samples in to_applied.values() for s in samples]
    return {
        "change_to_spec": {"all": percentiles(every_spec), **{k: percentiles(v) for k, v in to_spec.items() if v}},
        "change_to_applied": {
            "all": percentiles(every_applied),
            **{k: percentiles(v) for k, v in to_applied.items() if v},
        },
        "usage_to_core": percentiles(freshness) if freshness else {"p50_ms": 0, "p95_ms": 0, "max_ms": 0, "n": 0},
        "usage_missed": missed,
    }


async def remove_frontend(kube: Kube, namespace: str, slurm: SlurmAccounts) -> None:
    """The Slurm accounts and Unix groups the bridge recorded in ``namespace``, whatever state the run left."""
    for project in await kube.list(UCloudProject, namespace):
        for account in project.status.accounts:
            try:
                await slurm.delete_account(account.name)
            except SlurmError as error:
                # Told, so it can be removed by hand: the rest is still cleaned up.
                print(f"# Slurm account {account.name} not deleted: {error}", file=sys.stderr, flush=True)
        if project.status.group:
            await asyncio.to_thread(
                subprocess.run, ["groupdel", project.status.group], capture_output=True, check=False
            )


# --- 3: the usage cycle at scale --------------------------------------------------------------------


class StubAccounts:
    """Slurm as the usage cycle sees it: a figure per account, set by the bench; no change is expected."""

    def __init__(self) -> None:
        self.minutes: dict[str, int] = {}

    async def usage_minutes(self) -> dict[str, int]:
        return self.minutes

    async def snapshot(self) -> dict[str, AccountState]:
        return {}

    async def account(self, name: str) -> AccountState | None:
        raise NotImplementedError

    async def ensure_account(self, name: str, *, description: str, organization: str) -> bool:
        raise NotImplementedError

    async def add_users(self, name: str, users: Collection[str]) -> None:
        raise NotImplementedError

    async def remove_users(self, name: str, users: Collection[str]) -> None:
        raise NotImplementedError

    async def set_limits(self, name: str, *, locked: bool, quota_minutes: int | None, fairshare: int | None) -> None:
        raise NotImplementedError


def workspace(i: int) -> UCloudProject:
    project_id = f"{uuid.UUID(int=i)}"
    return UCloudProject.model_validate(
        {
            "metadata": {"name": UCloudProject.name_for(WorkspaceRef(kind="project", id=project_id)),
                         "labels": cluster_labels(CLUSTER)},
            "spec": {"workspace": {"kind": "project", "id": project_id}, "cluster": CLUSTER, "title": f"w{i}",
                     "members": [{"username": "alice", "role": "PI"}],
                     "wallets": [{"category": "cpu", "productType": "COMPUTE", "frequency": "PERIODIC_HOUR",
                                  "quota": 1000, "usage": 0, "locked": False, "updatedAt": 0}]},
        }
    )  # fmt: skip


async def make_workspaces(operator: Kube, bridge: Kube, namespace: str, start: int, stop: int) -> None:
    """Workspaces ``start``..``stop``, each with the account the bridge would have recorded (``a<i>``)."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            made = await operator.create(workspace(i), namespace)
            account = SlurmAccount(category="cpu", name=f"a{i}", users=["alice"])
            await bridge.patch_status(UCloudProject, namespace, made.metadata.name, {"accounts": [account.to_dict()]})

    await asyncio.gather(*(one(i) for i in range(start, stop)))


async def caught_up(controller: WorkspaceController, size: int, usage: int | None) -> None:
    """Until the informer holds ``size`` workspaces with their account, and ``usage`` unless None (the watch
    delivered the writes)."""

    def done() -> bool:
        projects = controller.projects.objects.values()
        return len(projects) == size and all(
            p.status.accounts and (usage is None or [(u.category, u.usage) for u in p.status.usage] == [("cpu", usage)])
            for p in projects
        )

    async with asyncio.timeout(600):
        while not done():  # noqa: ASYNC110 - the informer has no event for "this many caught up"
            await asyncio.sleep(0.2)


async def measure_cycles(
    operator: Kube, bridge: Kube, kubectl: Kubectl, sizes: list[int], rounds: int
) -> list[dict[str, Any]]:
    namespace = f"ucim-bench-usage-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    rows: list[dict[str, Any]] = []
    stub = StubAccounts()
    controller = WorkspaceController(
        kube=bridge,
        namespace=namespace,
        cluster=CLUSTER,
        connections=Informer(bridge, UserConnection, namespace),
        groups=LocalGroups(GroupSettings()),
        accounts=stub,
        names=account_mapper(AccountMapperSettings()),
        usage_interval_seconds=3600,
    )
    made = level = 0
    try:
        # Only the informer runs: the reconcile loop would try to apply the workspaces (not what is measured).
        async with running(controller.projects.run()):
            await controller.projects.synced.wait()
            for size in sizes:
                started = time.perf_counter()
                await make_workspaces(operator, bridge, namespace, made, size)
                create_s = time.perf_counter() - started
                print(f"# created {size - made} workspaces in {create_s:.1f} s", file=sys.stderr, flush=True)
                made = size
                # Every workspace's usage changes (60·level minutes = level core-hours), then stays.
                changed: list[float] = []
                unchanged: list[float] = []
                for _ in range(rounds):
                    level += 1
                    stub.minutes = {f"a{i}": 60 * level for i in range(size)}
                    await caught_up(controller, size, None)
                    started = time.perf_counter()
                    written = await controller.measure()
                    changed.append(time.perf_counter() - started)
                    assert written == size, (written, size)
                    await caught_up(controller, size, level)
                    for _ in range(3):
                        started = time.perf_counter()
                        assert await controller.measure() == 0
                        unchanged.append(time.perf_counter() - started)
                rows.append({
                    "workspaces": size,
                    "create_s": round(create_s, 1),
                    "unchanged_ms": round(statistics.median(unchanged) * 1000, 1),
                    "unchanged_per_workspace_us": round(statistics.median(unchanged) / size * 1e6, 1),
                    "changed_s": round(statistics.median(changed), 2),
                    "writes_per_s": round(size / statistics.median(changed)),
                    "sshare_quoted_s": SSHARE_MEDIAN_S.get(size),
                })  # fmt: skip
                print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        kubectl("delete", "namespace", namespace, "--timeout=600s", check=False)
    return rows


# --- 5: grant → applied while slurmdbd holds many accounts ------------------------------------------


class Fillers:
    """``count`` Slurm accounts, the other workspaces' as far as slurmdbd's tables go, under a parent of their own.

    Without members: slurmdbd adds user associations one at a time, each moving its nested-set numbering
    (lft/rgt) of every row after it, so adding alice to 3,000 accounts took 3.7 min, and ~10,000 would take an
    hour; the listing the controller reads (``wopinfo``) took the same time with members as without at 3,000.
    Deleting thousands of accounts by name is as slow (and a cancelled delete is rolled back for as long), so they
    go with their parent: one call removes the whole subtree's associations, then the accounts have none left
    and go in a few calls.
    """

    def __init__(self, client: SlurmClient, count: int) -> None:
        self.client = client
        self.parent = f"ucimbench{uuid.uuid4().hex[:6]}"
        self.names = [f"{self.parent}_{i:05d}" for i in range(count)]

    async def sacctmgr(self, *args: str) -> None:
        result = await self.client.run("sacctmgr", ["-i", *args])
        if outcome(result.returncode, result.stdout, result.stderr) is None:  # "Nothing deleted" is no failure
            raise RuntimeError(f"sacctmgr {' '.join(args)[:120]}... failed: {result.stdout} {result.stderr}")

    def chunks(self) -> list[str]:
        return [",".join(self.names[i : i + FILLER_CHUNK]) for i in range(0, len(self.names), FILLER_CHUNK)]

    async def make(self) -> None:
        await self.sacctmgr("create", "account", f"name={self.parent}", "description=ucim bench", "organization=ucim")
        for chunk in self.chunks():
            await self.sacctmgr("create", "account", f"name={chunk}", f"parent={self.parent}",
                                "description=ucim bench", "organization=ucim")  # fmt: skip

    async def remove(self) -> None:
        await self.sacctmgr("delete", "account", "where", f"name={self.parent}")
        for chunk in self.chunks():
            await self.sacctmgr("delete", "account", "where", f"name={chunk}")


def listed() -> float:
    """sacctmgr show calls so far, by anyone in this process."""
    return REGISTRY.get_sample_value("ucim_sacctmgr_calls_total", {"verb": "show", "result": "ok"}) or 0.0


async def timed_calls(call: Callable[[], Awaitable[object]], rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def measure_at_scale(
    core: CoreStandIn, operator: Kube, bridge: Kube, kubectl: Kubectl, *, accounts: int, grants: int
) -> dict[str, Any]:
    """Grant → applied with ``accounts`` more accounts in slurmdbd: first with every pass reading them all
    (``resync_seconds`` 0, as the controller did before its view), then with the view (the default)."""
    namespace = f"ucim-bench-scale-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    client = SlurmClient(SlurmConfig(slurm_conf=platform_slurm_conf(), env=SLURM_ENV, timeout_seconds=3600))
    slurm = SlurmAccounts(client=client)
    fillers = Fillers(client, accounts)
    result: dict[str, Any] = {"accounts": accounts, "fillers": fillers.parent}
    try:
        started = time.perf_counter()
        await fillers.make()
        result["make_s"] = round(time.perf_counter() - started, 1)
        print(f"# made {accounts} accounts in {result['make_s']} s", file=sys.stderr, flush=True)
        result["snapshot"] = await timed_calls(slurm.snapshot, 3)
        result["one_account"] = await timed_calls(lambda: slurm.account(fillers.names[0]), 3)
        async with applying(core, operator, bridge, namespace, resync_seconds=0) as run:
            changes_at_core = ChangesAtCore(core, run.project_id)
            for phase in ("before", "after"):
                run.controller.view.resync_seconds = 0 if phase == "before" else DEFAULT_RESYNC_SECONDS
                await asyncio.sleep(SETTLE)  # the last phase's passes are over
                samples = []
                listings = listed()
                for i in range(grants):
                    step = changes_at_core.step(i + (grants if phase == "after" else 0), "grant")
                    # Made once the controller is idle (its pass for the last status write done), as an event
                    # comes: else that pass's listing, already under way, would hide this one's.
                    samples.append((await timed_change(operator, namespace, run.name, step, settle=SETTLE))[1])
                result[f"grant_to_applied_{phase}"] = percentiles(samples)
                # Full listings and one-account reads the controller made, per grant.
                result[f"sacctmgr_show_per_grant_{phase}"] = round((listed() - listings) / grants, 2)
                print(f"# {phase}: {result[f'grant_to_applied_{phase}']}", file=sys.stderr, flush=True)
    finally:
        await remove_frontend(operator, namespace, slurm)
        started = time.perf_counter()
        try:
            await fillers.remove()
        except (SlurmError, RuntimeError) as error:
            print(f"# accounts under {fillers.parent} not removed: {error}", file=sys.stderr, flush=True)
        result["remove_s"] = round(time.perf_counter() - started, 1)
        print(f"# removed them in {result['remove_s']} s", file=sys.stderr, flush=True)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return result


# --- the run -------------------------------------------------------------------------------------------


async def bench(
    changes: int, usage_rounds: int, sizes: list[int], cycle_rounds: int, *, accounts: int, grants: int
) -> dict[str, Any]:
    env = read_platform_env()
    kubectl = Kubectl(env)
    namespace = f"ucim-bench-acct-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    slurm = SlurmAccounts(SlurmConfig(slurm_conf=platform_slurm_conf(), env=SLURM_ENV, timeout_seconds=120))
    try:
        async with (
            CoreStandIn(PROVIDER, REFRESH_TOKEN) as core,
            await Kube.connect(env["KUBECONFIG"], component="operator") as operator,
            await Kube.connect(env["KUBECONFIG"], component="bridge") as bridge,
        ):
            core.record.products.extend(m.product(PROVIDER) for m in DEFAULT_MACHINE_TYPES)
            await core.start()
            latencies: dict[str, Any] = {}
            if changes:
                try:
                    latencies = await measure_changes(
                        core, operator, bridge, namespace, changes=changes, usage_rounds=usage_rounds
                    )
                finally:
                    await remove_frontend(operator, namespace, slurm)
            at_scale = (
                await measure_at_scale(core, operator, bridge, kubectl, accounts=accounts, grants=grants)
                if accounts
                else None
            )
            cycles = await measure_cycles(operator, bridge, kubectl, sizes, cycle_rounds) if sizes else []
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return {"namespace": namespace, **latencies, "at_scale": at_scale, "usage_cycle": cycles}


def table(document: dict[str, Any]) -> str:
    def row(label: str, s: dict[str, float]) -> str:
        return f"{label:<44}{s['p50_ms']:>9.0f}{s['p95_ms']:>9.0f}{s['max_ms']:>9.0f}{s['n']:>5}"

    lines = [f"{'latency (ms)':<44}{'p50':>9}{'p95':>9}{'max':>9}{'n':>5}", "-" * 76]
    for key, label in (("change_to_spec", "change at Core → spec"), ("change_to_applied", "change at Core → applied")):
        for kind, s in document.get(key, {}).items():
            lines.append(row(f"{label} ({kind})", s))
    if "usage_to_core" in document:
        lines.append(row("status.usage changed → Core's wallet", document["usage_to_core"]))
    if (scale := document["at_scale"]) is not None:
        n = f"{scale['accounts']:,} accounts"
        lines.append(row(f"grant → applied, {n}: before", scale["grant_to_applied_before"]))
        lines.append(row(f"grant → applied, {n}: after", scale["grant_to_applied_after"]))
        lines.append(row(f"sacctmgr show assoc, {n}", scale["snapshot"]))
        lines.append(row(f"sacctmgr show assoc of one, {n}", scale["one_account"]))
        lines.append(
            f"(sacctmgr show calls per grant: before {scale['sacctmgr_show_per_grant_before']},"
            f" after {scale['sacctmgr_show_per_grant_after']}; made in {scale['make_s']} s,"
            f" removed in {scale['remove_s']} s)"
        )
    lines += ["", f"{'usage cycle':<14}{'nothing changed':>18}{'per ws':>10}{'all changed':>14}{'writes/s':>10}"
              f"{'sshare (quoted)':>17}", "-" * 83]  # fmt: skip
    for r in document["usage_cycle"]:
        quoted = f"{r['sshare_quoted_s'] * 1000:.0f} ms" if r["sshare_quoted_s"] is not None else "-"
        lines.append(
            f"{r['workspaces']:>8} ws  {r['unchanged_ms']:>15.0f} ms{r['unchanged_per_workspace_us']:>7.1f} µs"
            f"{r['changed_s']:>12.1f} s{r['writes_per_s']:>10}{quoted:>17}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--changes", type=int, default=50, help="changes at Core (grant, lock, members in turn)")
    parser.add_argument("--usage-rounds", type=int, default=20, help="usage figures sent to Core")
    parser.add_argument("--sizes", default="1000,3000", help="workspaces in the usage cycle, ascending ('' for none)")
    parser.add_argument("--cycle-rounds", type=int, default=1, help="all-changed cycles per size")
    parser.add_argument("--accounts", type=int, default=0, help="grant → applied with this many more Slurm accounts")
    parser.add_argument("--grants", type=int, default=10, help="grants timed with --accounts, before and after")
    opts = parser.parse_args()
    sizes = sorted({int(s) for s in opts.sizes.split(",") if s})
    if sizes and sizes[-1] > MAX_WORKSPACES:
        parser.error(f"at most {MAX_WORKSPACES} workspaces")
    if not 0 <= opts.accounts <= MAX_WORKSPACES:
        parser.error(f"--accounts: 0 to {MAX_WORKSPACES}")
    return run_bench(
        "accounting",
        opts,
        lambda: asyncio.run(
            bench(opts.changes, opts.usage_rounds, sizes, opts.cycle_rounds, accounts=opts.accounts, grants=opts.grants)
        ),
        table,
        needs_root=True,
        changes=opts.changes,
        usage_rounds=opts.usage_rounds,
        sizes=sizes,
        accounts=opts.accounts,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Fault drills: a stream of short jobs, something crashes in the middle of it, nothing is lost.

Each drill streams short ``sleep-exit`` jobs of alice and bob, SIGKILLs one thing a few seconds
in, starts it again a few seconds later, and then checks every job (``ucim.testing.drills``):
each create was answered within Core's ~5 s budget (200, or a readable 449/503 that Core
retries), Core got IN_QUEUE → (RUNNING) → one final state in order and nothing twice, and
Slurm ran exactly one job of its name. The report of each drill is printed (``pytest -s``).

The platform's daemons (slurmctld, slurmdbd, etcd and the apiserver) are processes of this
machine only with ``--platform=local``; on kind those drills are skipped and the component and
Core drills run against the Helm release.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.platform import Platform
from ucim.testing.drills import Drill, component, core_unreachable, daemons
from ucim.testing.platform_daemons import APISERVER, ETCD, SLURMCTLD, SLURMDBD, PlatformDaemons
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e

# Eight jobs of one or two seconds over four seconds; the crash 1.5 s in, the restart 3 s later.
JOBS, OVER_SECONDS = 8, 4.0
CRASH_AFTER, DOWN_FOR = 1.5, 3.0
# Every job is final at Core within this long after the stream (the recovery included). Slurm holds a job it
# requeued (a duplicate after a slurmctld crash) for 120 s before it may start again: seen at 121 s.
SETTLE_SECONDS = 240.0


@pytest.fixture
async def platform_daemons(request: pytest.FixtureRequest) -> AsyncIterator[PlatformDaemons]:
    """The local platform's daemons; every one of them runs again after the test, whatever it did."""
    if request.config.getoption("--platform") == "kind":
        pytest.skip(
            "crashes the platform's daemons with hack/local_platform.py; on kind the apiserver runs in a node "
            "container and Slurm in the frontend container"
        )
    platform: Platform = request.getfixturevalue("platform")
    yield platform.daemons
    await platform.daemons.start()


async def check(drill: Drill) -> None:
    report = await drill.finish(timeout=SETTLE_SECONDS)
    print(report.table())
    report.check()


@pytest.mark.parametrize(
    "names", [(SLURMCTLD,), (SLURMDBD,), (ETCD, APISERVER)], ids=["slurmctld", "slurmdbd", "apiserver+etcd"]
)
async def test_a_platform_daemon_crash_loses_and_repeats_nothing(
    platform_daemons: PlatformDaemons, stack: Stack, names: tuple[str, ...]
) -> None:
    drill = Drill(stack, f"kill {'+'.join(names)}")
    async with drill.stream(JOBS, OVER_SECONDS):
        await drill.outage(daemons(platform_daemons, *names), after=CRASH_AFTER, down_for=DOWN_FOR)
    await check(drill)


@pytest.mark.parametrize("name", ["ucim-gateway", "ucim-bridge", "ucim-operator"])
async def test_a_component_crash_loses_and_repeats_nothing(stack: Stack, name: str) -> None:
    drill = Drill(stack, f"kill {name}")
    async with drill.stream(JOBS, OVER_SECONDS):
        await drill.outage(component(stack, name), after=CRASH_AFTER, down_for=DOWN_FOR)
    await check(drill)


async def test_a_rolling_restart_of_everything_loses_and_repeats_nothing(
    platform_daemons: PlatformDaemons, stack: Stack
) -> None:
    drill = Drill(stack, "rolling restart")
    faults = [
        component(stack, "ucim-gateway"),
        component(stack, "ucim-operator"),
        component(stack, "ucim-bridge"),
        daemons(platform_daemons, SLURMCTLD),
        daemons(platform_daemons, APISERVER),
    ]
    async with drill.stream(10, 10.0):
        for fault in faults:
            await drill.outage(fault, after=0.5, down_for=1.0)
    await check(drill)


async def test_core_failing_then_gone_for_a_minute_loses_and_repeats_nothing(stack: Stack) -> None:
    # Core answers 503 for 5 s, then listens to nothing for a minute; the jobs run on meanwhile.
    drill = Drill(stack, "Core unreachable")
    async with drill.stream(6, 3.0):
        await drill.outage(core_unreachable(stack.core, failing_seconds=5.0), after=1.0, down_for=60.0)
    await check(drill)

"""A real Prometheus scrapes every running component while jobs flow; every dashboard panel returns data.

Traffic covers what the panels show: jobs that succeed and fail, a submission Slurm rejects,
a while during which Core refuses updates (so delivery failures exist), and a file uploaded
and downloaded. Queries use a
two-minute window in place of Grafana's ``$__rate_interval``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.support.prometheus import dashboard_queries, prometheus, query, static_job, wait_for
from ucim.common.protocol import JobState, SimpleDuration
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.stack import Stack

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((REPO / "charts" / "ucim" / "dashboards").glob("*.json"))
RATE_WINDOW = "2m"


async def traffic(stack: Stack) -> None:
    core = stack.core
    ok, failing = str(uuid.uuid4().int % 10**9), str(uuid.uuid4().int % 10**9)
    # Core refuses updates for a few seconds: deliveries fail, then catch up.
    core.fail_requests("/api/jobs/control/update", seconds=3)
    await core.create_jobs([core.make_job(ok, "alice", ("sleep-exit", "1"), {"seconds": 1})])
    await core.create_jobs([core.make_job(failing, "bob", ("sleep-exit", "1"), {"seconds": 1, "exitCode": 3})])
    rejected = core.make_job("0", "alice", ("sleep-exit", "1"), {}, time_allocation=SimpleDuration(hours=5))
    rejected.specification.product.id, rejected.specification.product.category = "short-1", "cpu-short"
    with pytest.raises(ProviderCallError):
        await core.create_jobs([rejected])
    await core.wait_for_update(ok, JobState.SUCCESS, timeout=60)
    await core.wait_for_update(failing, JobState.FAILURE, timeout=60)
    await core.retrieve_products()
    await file_traffic(stack)


async def file_traffic(stack: Stack) -> None:
    """A file up and down through the gateway (the transfer panels), then removed."""
    core = stack.core
    await core.connect("alice")
    name = f"/{core.home_of('alice').id}/ucim-metrics-{uuid.uuid4().hex[:8]}.bin"
    upload = await core.create_upload("alice", name)
    assert (await core.upload(upload, b"metrics" * 1000, "alice")).ok
    download = await core.create_download("alice", name)
    assert (await core.download(download.endpoint)).ok
    assert (await core.files_call("alice", "delete", [{"id": name}])).ok


async def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    targets = stack.metrics_targets()  # gateway, operator, bridge: processes here, or the kind release's
    scrape = [static_job(name, target) for name, target in sorted(targets.items())]
    with prometheus(scrape) as url:
        await asyncio.to_thread(wait_for, lambda: len(query(url, "up == 1")) == len(targets), 30, "every target up")
        await traffic(stack)
        # Several scrapes after the traffic, so every rate has two samples in its window.
        await asyncio.sleep(4)
        empty = [
            f"{dashboard.stem} / {title}: {promql}"
            for dashboard in DASHBOARDS
            for title, promql in dashboard_queries(dashboard, RATE_WINDOW)
            if not query(url, promql)
        ]
        assert empty == [], "panels without data:\n" + "\n".join(empty)

"""Reporting usage to Core: what the bridge measured (``status.usage``) and Core has not accepted yet.

The operator watches the UCloudProjects of its cluster; a workspace whose measured usage
differs from what Core last accepted (``status.reportedUsage``, the operator's) is sent to
``reportUsage`` as absolute figures, gathered for a moment so one call carries many
(batches of at most 500, as the anchor). Absolute figures make a resend harmless: after a
restart, or a call whose answer was lost, Core just sets the same number again, so nothing
is counted twice. Core's answer (the wallet still usable or not) changes nothing here: a
lock reaches the workspace through the event stream, like every other wallet change.

Every ``resync_seconds`` (10 min) every measured figure is sent again, as the anchor resends
each cycle: a figure Core holds differently (a report made by hand, a restored database)
is set right, and one Core refused is tried again. Absolute figures make that free of
effect where Core already agrees; at 10,000 workspaces it is 20 calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from ucim.common import reasons
from ucim.common.conditions import ConditionUpdate, is_true
from ucim.common.core_client import CoreClient, CoreRejectedError, CoreUnavailableError
from ucim.common.informer import Change, Informer
from ucim.common.kube import Kube, NotFoundError
from ucim.common.protocol import ProductCategoryIdV2, ReportUsageRequest, WalletOwner
from ucim.common.resources import UCloudProject, WalletUsage
from ucim.common.retry import delay_after
from ucim.operator import metrics

log = logging.getLogger(__name__)

# Changes arriving within this long go to Core in one call.
GATHER_SECONDS: Final = 1.0
RESYNC_SECONDS: Final = 600.0


@dataclass(frozen=True)
class Report:
    """One workspace's usage of one category, as sent to Core."""

    project: str
    usage: WalletUsage
    item: ReportUsageRequest


def unreported(project: UCloudProject) -> list[WalletUsage]:
    """The measured usage Core has not accepted yet."""
    accepted = {u.category: u.usage for u in project.status.reported_usage}
    return [u for u in project.status.usage if accepted.get(u.category) != u.usage]


def report_item(project: UCloudProject, usage: WalletUsage, provider_id: str) -> ReportUsageRequest:
    workspace = project.spec.workspace
    owner = WalletOwner.project(workspace.id) if workspace.kind == "project" else WalletOwner.user(workspace.id)
    return ReportUsageRequest(
        owner=owner,
        category_id_v2=ProductCategoryIdV2(name=usage.category, provider=provider_id),
        usage=usage.usage,
    )


class UsageReporter:
    def __init__(
        self,
        core: CoreClient,
        kube: Kube,
        projects: Informer[UCloudProject],
        *,
        namespace: str,
        provider_id: str,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        """``projects`` is the operator's informer of its cluster's UCloudProjects; it hands changes to on_project."""
        self.core, self.kube, self.projects = core, kube, projects
        self.namespace, self.provider_id = namespace, provider_id
        self.resync_seconds = resync_seconds
        self._resend_all = False
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._failures = 0
        # (workspace, category) → the figure Core refused: not sent again until the figure changes.
        self._refused: dict[tuple[str, str], int] = {}

    def to_send(self, project: UCloudProject, *, everything: bool = False) -> list[WalletUsage]:
        if everything:
            return list(project.status.usage)
        name = project.metadata.name
        return [u for u in unreported(project) if self._refused.get((name, u.category)) != u.usage]

    def on_project(self, change: Change, project: UCloudProject) -> None:
        if change != "DELETED" and self.to_send(project):
            self._dirty.add(project.metadata.name)
            self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._report_forever())
            tasks.create_task(self._resync_forever())

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            self._refused.clear()
            self._resend_all = True
            self._dirty |= set(self.projects.objects)
            self._wake.set()

    async def _report_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_SECONDS)
            self._wake.clear()
            names, self._dirty = self._dirty, set()
            everything, self._resend_all = self._resend_all, False
            try:
                await self.report(names, everything=everything)
                self._failures = 0
            except Exception as error:
                # Core unreachable, or the apiserver refusing the status write: nothing sent is lost (the
                # figures are absolute), the same workspaces go again after the one backoff.
                self._failures += 1
                delay = delay_after(self._failures, first=1.0, cap=60.0)
                log.warning("usage not reported (%s); again in %.0f s", error, delay, exc_info=not isinstance(
                    error, CoreUnavailableError))  # fmt: skip
                self._dirty |= names
                self._resend_all |= everything
                await asyncio.sleep(delay)
                self._wake.set()

    async def report(self, names: set[str], *, everything: bool = False) -> None:
        """Send the workspaces' figures Core has not accepted (``everything``: all of them) in batches of 500."""
        reports = [
            Report(name, usage, report_item(project, usage, self.provider_id))
            for name in sorted(names)
            if (project := self.projects.get(name)) is not None
            for usage in self.to_send(project, everything=everything)
        ]
        if not reports:
            return
        try:
            await self.core.report_usage([r.item for r in reports])
        except CoreRejectedError:
            # Core fails the whole call at its first bad item: find it (and keep the others) one by one.
            for single in reports:
                await self._report_alone(single)
            return
        await self._accepted(reports)

    async def _report_alone(self, report: Report) -> None:
        try:
            await self.core.report_usage([report.item])
        except CoreRejectedError as refusal:
            metrics.USAGE_REPORTS.labels(result="refused").inc()
            self._refused[(report.project, report.usage.category)] = report.usage.usage
            why = f"Core refused usage {report.usage.usage} of {report.usage.category}: {refusal.why}"
            log.error(why, extra={"ucloudproject": report.project})  # noqa: TRY400 - Core's words say it all
            await self._condition(report.project, (reasons.USAGE_REPORTED, "False", reasons.CORE_REFUSED_USAGE, why))
            return
        await self._accepted([report])

    async def _accepted(self, reports: list[Report]) -> None:
        metrics.USAGE_REPORTS.labels(result="accepted").inc(len(reports))
        for name in sorted({r.project for r in reports}):
            project = self.projects.get(name)
            if project is None:
                continue
            before = {u.category: u for u in project.status.reported_usage}
            accepted = before | {r.usage.category: r.usage for r in reports if r.project == name}
            if accepted == before and is_true(project.status.conditions, reasons.USAGE_REPORTED):
                continue  # a resent figure Core already had: nothing to write
            try:
                await self.kube.patch_status(
                    UCloudProject, self.namespace, name, {"reportedUsage": [u.to_dict() for u in accepted.values()]}
                )
            except NotFoundError:
                continue
            why = ", ".join(f"{u.usage} {u.category}" for u in accepted.values())
            await self._condition(name, (reasons.USAGE_REPORTED, "True", reasons.CORE_ACCEPTED_USAGE, why))

    async def _condition(self, name: str, condition: ConditionUpdate) -> None:
        project = self.projects.get(name)
        if project is None:
            return
        await self.kube.apply_condition(
            UCloudProject,
            self.namespace,
            name,
            project.status.conditions,
            condition,
            observed_generation=project.metadata.generation,
        )

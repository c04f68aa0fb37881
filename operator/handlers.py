"""kopf handlers of the operator: UCloudJob and UserInstance.

Handlers are thin (at most 40 lines, which ``tests/unit/test_architecture.py``
checks): they unpack kopf's keyword arguments, call the pure functions of ``jobs``
and ``userinstances``, and write status through kopf's ``patch``: plain fields as
a merge patch, lists (conditions, transitions) as patch functions that kopf
applies to the freshest object under optimistic concurrency (see ``jobs``). A
step that can end the handler returns an ``Outcome`` (``outcomes.py``: patches,
events and the error) that the handler applies. "Not yet" is
``kopf.TemporaryError(delay=...)``, "never" is ``kopf.PermanentError``.

UCloudJob, who writes what:

* the gateway creates it (spec) and may set ``spec.terminate``;
* the operator (``submit``) writes ``slurmJobId``, ``submittedAt``, ``jobFolder``, ``outputFolder``,
  ``providerGeneratedId``, the first ``state``/``transitions`` entry (IN_QUEUE),
  or FAILURE when sbatch refuses; it owns ``conditions`` and ``reportedTransitions``;
* the slurm_bridge writes ``state``, ``slurmState``, ``reason``, ``nodeList``,
  ``exitCode``, ``startedAt``, ``endedAt`` and appends to ``transitions``;
* the operator (``report``) sends ``transitions[reportedTransitions:]`` to Core
  and then advances ``reportedTransitions``.

Delivery is a field handler on ``status.transitions`` (plus a resume handler for
what an earlier process left undelivered) rather than a timer: it runs as soon as
the bridge appends, kopf serialises it with the other handlers of the same job (so
two deliveries of one job never overlap and stay in order), and its retries are
kopf's. Several jobs' deliveries are batched by ``DeliveryQueue``. If the operator
stops after Core accepted a batch but before ``reportedTransitions`` was written,
the next process asks Core (once per job, only for changes older than itself) which
of them it already holds and sends only the rest: nothing is lost or repeated.

All kopf settings are fixed here, once, in the start-up handler: changing the
finalizer or the annotation prefix later would orphan existing objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import kopf
from aiohttp import web

from ucim.common import user_instances
from ucim.common.conditions import is_true
from ucim.common.core_client import CoreClient, CoreError, CoreRejectedError, batched
from ucim.common.informer import Informer, fan_out
from ucim.common.instance_api import SubmitRequest
from ucim.common.kube import Kube
from ucim.common.observability import start_health_server
from ucim.common.protocol import JobState, JobUpdateItem, now_ms
from ucim.common.reasons import (
    CANCEL_REQUESTED,
    CANCELLED,
    CORE_DELIVERY_FAILING,
    INSTANCE_UNREACHABLE,
    SLURM_CANCELLED,
)
from ucim.common.resources import (
    JobTransition,
    UCloudJob,
    UCloudProject,
    UserConnection,
    UserInstance,
    cluster_selector,
)
from ucim.common.retry import delay_after
from ucim.common.settings import API_GROUP, API_VERSION
from ucim.common.times import now_utc
from ucim.common.workspaces import (
    AccountNotReadyError,
    home_drive,
    job_workspace,
    ready_account,
    ready_drive,
    ready_drive_id,
)
from ucim.operator import jobs, userinstances
from ucim.operator.connections import ConnectionClearer
from ucim.operator.delivery import Backlog, DeliveryQueue
from ucim.operator.event_stream import AccountingStream
from ucim.operator.instances import InstanceClient, InstanceRejectedError, InstanceUnreachableError
from ucim.operator.metrics import JOB_STATE_TRANSITIONS, JOB_SUBMISSIONS
from ucim.operator.outcomes import Event, Outcome, temporary
from ucim.operator.project_drives import ProjectDrives
from ucim.operator.registration import products_of, register_products
from ucim.operator.settings import OperatorSettings
from ucim.operator.usage import UsageReporter

FINALIZER = f"{API_GROUP}/finalizer"
UCLOUDJOBS = (API_GROUP, API_VERSION, UCloudJob.PLURAL)
USERINSTANCES = (API_GROUP, API_VERSION, UserInstance.PLURAL)
# The first retry waits this long; later ones double, up to the configured maximum.
INSTANCE_FIRST_RETRY_SECONDS = 0.5
CORE_FIRST_RETRY_SECONDS = 1.0
# Core's refusal of a job's updates is retried this often (slowly) before they are dropped.
CORE_REJECTION_ATTEMPTS = 3


@dataclass
class Runtime:
    """What the handlers share, built once at start-up and kept in kopf's memo."""

    config: OperatorSettings
    kube: Kube
    core: CoreClient
    instances: InstanceClient
    queue: DeliveryQueue
    # The cluster's UserConnections, as the connection clearer watches them: a user's home drive id.
    connections: Informer[UserConnection]
    backlog: Backlog = field(default_factory=Backlog)
    # Per job uid: how many transitions this process has delivered. Guards against
    # sending twice when kopf hands a handler a body older than our own last write.
    delivered: dict[str, int] = field(default_factory=dict)
    # When this process started (epoch ms): changes older than this may have been sent by an earlier one.
    started_ms: int = field(default_factory=now_ms)
    # Jobs whose in-doubt changes were already checked against Core by this process.
    checked_with_core: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    health: web.AppRunner | None = None


def _runtime(memo: kopf.Memo) -> Runtime:
    return cast(Runtime, memo["runtime"])


# --- start-up and clean-up -----------------------------------------------------


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    # Only warnings and errors from logs become Kubernetes events: at INFO, every
    # "Handler ... succeeded" (one per delivery) would be an event. Our own events
    # (SlurmAccepted, SlurmCancelled, Ready flips) are posted explicitly.
    settings.posting.level = logging.WARNING
    # Reconnect watches regularly so a silently dropped stream cannot stall us.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # We watch one namespace and our CRDs are installed with the chart: kopf's cluster-wide
    # scan of namespaces and CRDs needs rights the operator's namespaced Role does not give,
    # and kopf would retry the refused listing for about a minute before it serves anything.
    settings.scanning.disabled = True

    kube = await Kube.connect(component="operator")
    core = CoreClient(config.core_url, config.core_refresh_token)
    queue = DeliveryQueue(
        core.push_job_updates, interval=config.delivery_batch_interval_seconds, max_items=config.delivery_batch_size
    )
    clearer = ConnectionClearer(core, kube, namespace=config.namespace, cluster=config.cluster)
    runtime = Runtime(
        config=config,
        kube=kube,
        core=core,
        instances=InstanceClient(config.ingress_token, timeout=config.submit_timeout_seconds),
        queue=queue,
        connections=clearer.connections,
    )
    runtime.tasks.extend(_background_tasks(config, core, kube, queue, clearer))
    runtime.health = await start_health_server(config.metrics_host, config.metrics_port)
    memo["runtime"] = runtime
    logger.info("operator started", extra={"namespace": config.namespace})


def _background_tasks(
    config: OperatorSettings, core: CoreClient, kube: Kube, queue: DeliveryQueue, clearer: ConnectionClearer
) -> list[asyncio.Task[Any]]:
    """The operator's work besides its handlers: deliveries, ended connections, products, Core's accounting."""
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(queue.run(), name="ucim-core-delivery"),
        asyncio.create_task(clearer.run(), name="ucim-connection-clears"),
    ]
    if config.register_products:
        # In the background: a Core that is down must not keep the operator from reconciling.
        products = products_of(config.machine_types, config.provider_id, storage_accounted=config.storage_accounted)
        tasks.append(asyncio.create_task(register_products(core, products), name="ucim-register-products"))
    if config.accounting_enabled:
        namespace, provider_id = config.namespace, config.provider_id
        stream = AccountingStream(core, kube, core_url=config.core_url, namespace=namespace, cluster=config.cluster)
        # One watch of the cluster's workspaces feeds both of the workers that read them.
        projects = Informer(kube, UCloudProject, namespace, label_selector=cluster_selector(config.cluster))
        usage = UsageReporter(core, kube, projects, namespace=namespace, provider_id=provider_id)
        drives = ProjectDrives(
            core, kube, projects, namespace=namespace, provider_id=provider_id, title=config.project_drive_title
        )
        projects.on_event = fan_out(usage.on_project, drives.on_project)
        tasks.append(asyncio.create_task(stream.run(), name="ucim-accounting-stream"))
        tasks.append(asyncio.create_task(projects.run(), name="ucim-workspaces-watch"))
        tasks.append(asyncio.create_task(usage.run(), name="ucim-usage-reports"))
        tasks.append(asyncio.create_task(drives.run(), name="ucim-project-drives"))
    return tasks


@kopf.on.cleanup()
async def shutdown(*, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runtime.instances.close()
    await runtime.core.close()
    await runtime.kube.close()
    if runtime.health is not None:
        await runtime.health.cleanup()


# --- UCloudJob: submission ------------------------------------------------------


@kopf.on.resume(*UCLOUDJOBS)
@kopf.on.create(*UCLOUDJOBS)
async def submit(*, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    runtime = _runtime(memo)
    job = UCloudJob.from_obj(dict(body))
    now = now_utc()

    # First visit: conditions start out Unknown, so `kubectl describe` shows the job is being worked on.
    if not job.status.conditions:
        patch.fns.append(jobs.first_visit(now))
    # Already in Slurm, or ended without it (refused, terminated early): submission is settled.
    if job.status.slurm_job_id is not None or jobs.is_final(job.status):
        return
    # Terminated before any submit call was made: end it without touching Slurm.
    if job.spec.terminate and not jobs.submit_attempted(job):
        jobs.terminated_before_submission(now).apply(body, patch)
        return

    # The owner's instance submits as the owner: create it or ask it to start, and wait until it serves.
    instance = await _ensure_instance(runtime, job, now)
    refusal, endpoint = user_instances.refusal(instance), instance.status.endpoint
    if refusal is not None or not user_instances.serving(instance) or endpoint is None:
        delay = _instance_backoff(runtime, retry)
        jobs.instance_not_ready(instance.metadata.name, refusal, delay=delay, now=now).apply(body, patch)
        return

    # With Core's accounting on, the job runs under its workspace's Slurm account, and a project's job keeps its
    # folder in the project's drive, once the bridge made the account and the group.
    try:
        placement = await _workspace_placement(runtime, job, instance.spec.local_user)
    except AccountNotReadyError as waiting:
        jobs.account_not_ready(str(waiting), delay=_instance_backoff(runtime, retry), now=now).apply(body, patch)
        return

    # From here a Slurm job may exist even if this process dies before writing its id: say so first.
    if not jobs.submit_attempted(job):
        await runtime.kube.patch(UCloudJob, _namespace(job), job.metadata.name, jobs.submit_started(now))
    request = jobs.submit_request(job, placement.account, placement.drive)
    outcome = await _submit_through(runtime, endpoint, request, job, placement, retry=retry, now=now)
    outcome.apply(body, patch)


async def _workspace_placement(runtime: Runtime, job: UCloudJob, local_user: str | None) -> jobs.Placement:
    """The Slurm account, the drive (a locator) and its id at Core, of the job's workspace.

    Without accounting the product's account applies, and the folder is in the owner's home.
    """
    home = runtime.connections.get(UserConnection.name_for(job.spec.owner, job.spec.cluster))
    home_drive_id = home_drive(home)
    if not runtime.config.accounting_enabled:
        return jobs.Placement(account=jobs.chosen_account(job), drive=None, drive_id=home_drive_id)
    workspace = job_workspace(job.spec.owner, job.spec.project)
    found = await runtime.kube.get(UCloudProject, _namespace(job), UCloudProject.name_for(workspace))
    user = local_user or ""
    drive = ready_drive(found, user)
    drive_id = home_drive_id if drive is None else ready_drive_id(found)
    return jobs.Placement(account=ready_account(found, job.spec.product.category, user), drive=drive, drive_id=drive_id)


async def _submit_through(
    runtime: Runtime,
    endpoint: str,
    request: SubmitRequest,
    job: UCloudJob,
    placement: jobs.Placement,
    *,
    retry: int,
    now: datetime,
) -> Outcome:
    """Ask the owner's instance (at ``endpoint``) to submit the job; what came of it."""
    try:
        answer = await runtime.instances.submit(endpoint, request)
    except InstanceRejectedError as rejection:
        # sbatch refused the job (bad time limit, partition, ...): it fails for good, with sbatch's words.
        JOB_SUBMISSIONS.labels(result="rejected").inc()
        return jobs.submit_rejected(rejection.why, now, cause=rejection)
    except InstanceUnreachableError as error:
        # The bridge or the instance is down or restarting: try again soon.
        JOB_SUBMISSIONS.labels(result="unreachable").inc()
        return jobs.submit_unreachable(error, delay=_instance_backoff(runtime, retry), now=now)
    # Accepted now, or found from an earlier attempt that died before recording it: record it once.
    JOB_SUBMISSIONS.labels(result="already_submitted" if answer.already_submitted else "accepted").inc()
    return jobs.submitted(job, answer, placement.drive_id, now)


# --- UCloudJob: reporting to Core ----------------------------------------------


@kopf.on.resume(*UCLOUDJOBS)
@kopf.on.field(*UCLOUDJOBS, field="status.transitions")
async def report(*, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    runtime = _runtime(memo)
    job = UCloudJob.from_obj(dict(body))
    uid = job.metadata.uid or job.metadata.name
    now = now_utc()
    if job.status.reported_transitions >= runtime.delivered.get(uid, 0):
        runtime.delivered.pop(uid, None)  # the status has caught up with what we sent
    start, pending = jobs.unreported(job.status, runtime.delivered.get(uid, 0))
    runtime.backlog.set(uid, len(pending))

    # Core has every state change already (make sure the counter says so, should our last write have been lost).
    if not pending:
        if start > job.status.reported_transitions:
            patch.status["reportedTransitions"] = start
        return
    # Send what Core has not acknowledged, in order; a job's changes travel in one request.
    outcome = await _deliver(runtime, job, uid, start, pending, retry=retry, now=now)
    outcome.apply(body, patch)


async def _deliver(
    runtime: Runtime, job: UCloudJob, uid: str, start: int, pending: list[JobTransition], *, retry: int, now: datetime
) -> Outcome:
    """Send Core ``pending`` (the changes from index ``start``) in order and count them; what to record."""
    recorded = reported = start
    try:
        skipped = await _held_by_core(runtime, job, uid, pending)
        start, pending = start + skipped, pending[skipped:]
        reported = start
        for chunk in batched(pending, runtime.config.delivery_batch_size):
            await runtime.queue.deliver(jobs.job_updates(job, chunk))
            reported += len(chunk)
            runtime.delivered[uid] = reported
            for transition in chunk:
                if transition.state is not None:  # not a status line
                    JOB_STATE_TRANSITIONS.labels(state=transition.state.value).inc()
    except CoreRejectedError as rejection:
        # Core refuses this job's updates (it does not know the job, e.g. after the gateway answered its
        # create with sbatch's 4xx): a few slow retries, then drop them, as the anchor purges such jobs.
        message = f"Core refused {len(pending) - (reported - start)} state change(s): {rejection.why}"
        if retry + 1 < CORE_REJECTION_ATTEMPTS:
            delay = runtime.config.delivery_retry_max_seconds
            return jobs.core_refused(message, delay=delay, cause=rejection, now=now)
        reported = start + len(pending)
        runtime.delivered[uid] = reported
        outcome = jobs.updates_dropped(message, reported=reported, now=now)
    except CoreError as error:
        # Core is down: say so on the job and try again later; later changes wait behind these, in order.
        runtime.backlog.set(uid, len(job.status.transitions) - reported)
        written = reported if reported > recorded else None
        return jobs.core_failing(error, reported=written, delay=_core_backoff(runtime, retry), now=now)
    else:
        outcome = jobs.core_up_to_date(job.status, reported, now)
    # Delivered (or dropped): advance the counter, a merge patch of this one field, so the bridge's appends stay.
    runtime.backlog.set(uid, len(job.status.transitions) - reported)
    return outcome


async def _held_by_core(runtime: Runtime, job: UCloudJob, uid: str, pending: list[JobTransition]) -> int:
    """How many leading ``pending`` changes Core already has, asked once per job and process.

    Only changes older than this process can be in doubt: an earlier operator may have been
    stopped after Core accepted them and before ``reportedTransitions`` was written. Asking
    Core closes that gap, so a restart neither loses nor repeats an update.
    """
    if pending[0].timestamp >= runtime.started_ms or uid in runtime.checked_with_core:
        return 0
    try:
        held = jobs.already_at_core(pending, await runtime.core.job_updates(job.spec.job_id))
    except CoreRejectedError:
        held = 0  # Core does not know the job (yet): nothing of it can be there
    runtime.checked_with_core.add(uid)
    return held


# --- UCloudJob: termination and deletion ---------------------------------------


@kopf.on.field(*UCLOUDJOBS, field="spec.terminate", new=True)
async def terminate(*, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    runtime = _runtime(memo)
    job = UCloudJob.from_obj(dict(body))
    now = now_utc()

    # Cancelled by an earlier attempt (or ended before submission, which counts as cancelled).
    if is_true(job.status.conditions, CANCELLED):
        return
    # Slurm has ended the job already: there is nothing left to cancel.
    if jobs.is_final(job.status):
        message = f"The job had already ended ({job.status.state})"
        patch.fns.append(jobs.condition(CANCELLED, "True", reason=SLURM_CANCELLED, message=message, now=now))
        return
    # Not in Slurm yet: the submit handler either ends it without Slurm or submits it, then we cancel.
    if job.status.slurm_job_id is None:
        message = "Cancellation requested; waiting for the submission to settle"
        patch.fns.append(jobs.condition(CANCELLED, "Unknown", reason=CANCEL_REQUESTED, message=message, now=now))
        raise kopf.TemporaryError(message, delay=_instance_backoff(runtime, retry))

    # scancel runs as the owner, in the owner's instance.
    try:
        await _cancel_in_slurm(runtime, job, now)
    except InstanceRejectedError as rejection:
        # The instance refused to cancel (not the user's job, unknown id): retrying cannot help.
        patch.fns.append(jobs.condition(CANCELLED, "False", reason=CANCEL_REQUESTED, message=rejection.why, now=now))
        raise kopf.PermanentError(f"cancellation refused: {rejection.why}") from rejection
    except InstanceUnreachableError as error:
        patch.fns.append(jobs.condition(CANCELLED, "Unknown", reason=CANCEL_REQUESTED, message=str(error), now=now))
        raise kopf.TemporaryError(str(error), delay=_instance_backoff(runtime, retry)) from error

    # Cancelled in Slurm; the final state (SUCCESS, as UCloud reports cancellations) arrives through the bridge.
    message = f"Slurm job {job.status.slurm_job_id} cancelled"
    patch.fns.append(jobs.condition(CANCELLED, "True", reason=SLURM_CANCELLED, message=message, now=now))
    kopf.event(body, type="Normal", reason=SLURM_CANCELLED, message=message)


@kopf.on.delete(*UCLOUDJOBS)
async def release(*, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    runtime = _runtime(memo)
    job = UCloudJob.from_obj(dict(body))
    uid = job.metadata.uid or job.metadata.name
    now = now_utc()
    out_of_attempts = retry + 1 >= runtime.config.delete_attempts

    # Still queued or running in Slurm: cancel it, so that a deleted job does not keep running.
    if job.status.slurm_job_id is not None and not jobs.is_final(job.status):
        ending = await _cancel_deleted(runtime, job, retry=retry, out_of_attempts=out_of_attempts, now=now)
    # Never submitted and not ended: it ends here.
    elif job.status.slurm_job_id is None and not jobs.is_final(job.status):
        ending = jobs.Ending(final=(JobState.SUCCESS, "The job was deleted on the provider before it ran"))
    # Ended in Slurm already: Core hears what it has not yet, and nothing more.
    else:
        ending = jobs.Ending()
    ending.apply(body, patch)

    # Tell Core what it has not heard yet, and the end if the job had none, so it does not stay active there.
    items = jobs.last_updates(job, runtime.delivered.get(uid, 0), ending.final, now)
    told = await _tell_core(runtime, items, retry=retry, out_of_attempts=out_of_attempts)
    told.apply(body, patch)
    runtime.delivered.pop(uid, None)
    runtime.backlog.forget(uid)


async def _cancel_deleted(
    runtime: Runtime, job: UCloudJob, *, retry: int, out_of_attempts: bool, now: datetime
) -> jobs.Ending:
    """Cancel a deleted job that Slurm still runs or queues; the state it ends in, or why not yet."""
    try:
        await _cancel_in_slurm(runtime, job, now)
    except InstanceRejectedError as rejection:
        # scancel refused (retrying cannot help): let the object go, and say so.
        message = f"Could not cancel Slurm job {job.status.slurm_job_id}: {rejection.why}"
        return jobs.Ending(final=(JobState.FAILURE, message), events=(Event("Warning", CANCEL_REQUESTED, message),))
    except InstanceUnreachableError as error:
        if not out_of_attempts:
            return jobs.Ending(error=temporary(str(error), delay=_instance_backoff(runtime, retry), cause=error))
        # Bounded: an instance that stays unreachable must not block the deletion forever.
        message = f"Gave up cancelling Slurm job {job.status.slurm_job_id}: {error}"
        return jobs.Ending(final=(JobState.FAILURE, message), events=(Event("Warning", INSTANCE_UNREACHABLE, message),))
    return jobs.Ending(final=(JobState.SUCCESS, "Cancelled: the job was deleted on the provider"))


async def _tell_core(runtime: Runtime, items: list[JobUpdateItem], *, retry: int, out_of_attempts: bool) -> Outcome:
    """Deliver a deleted job's last updates; retried while attempts are left, else given up with a Warning."""
    try:
        await runtime.queue.deliver(items)
    except CoreError as error:
        if not out_of_attempts:
            delay = _core_backoff(runtime, retry)
            return Outcome(error=temporary(f"delivering to Core failed: {error}", delay=delay, cause=error))
        return Outcome(events=(Event("Warning", CORE_DELIVERY_FAILING, f"Gave up telling Core: {error}"),))
    return Outcome()


async def _cancel_in_slurm(runtime: Runtime, job: UCloudJob, now: datetime) -> None:
    """``scancel`` the job through the owner's instance; InstanceUnreachableError while it does not serve."""
    if job.status.slurm_job_id is None:
        raise ValueError(f"UCloudJob {job.metadata.name} has no Slurm job to cancel")
    instance = await _ensure_instance(runtime, job, now)
    if not user_instances.serving(instance) or instance.status.endpoint is None:
        raise InstanceUnreachableError(f"the owner's instance {instance.metadata.name} is not ready")
    await runtime.instances.cancel(instance.status.endpoint, [job.status.slurm_job_id])


async def _ensure_instance(runtime: Runtime, job: UCloudJob, now: datetime) -> UserInstance:
    """The owner's instance, created or asked to start; a refused owner is not asked again (a job cannot help)."""
    return await user_instances.ensure_user_instance(
        runtime.kube,
        _namespace(job),
        job.spec.owner,
        job.spec.cluster,
        idle_timeout_seconds=runtime.config.idle_timeout_seconds,
        now=now,
        retry_refused=False,
    )


def _namespace(job: UCloudJob) -> str:
    if not job.metadata.namespace:
        raise ValueError(f"UCloudJob {job.metadata.name} has no namespace")
    return job.metadata.namespace


def _instance_backoff(runtime: Runtime, retry: int) -> float:
    return delay_after(retry + 1, first=INSTANCE_FIRST_RETRY_SECONDS, cap=runtime.config.instance_retry_max_seconds)


def _core_backoff(runtime: Runtime, retry: int) -> float:
    return delay_after(retry + 1, first=CORE_FIRST_RETRY_SECONDS, cap=runtime.config.delivery_retry_max_seconds)


# --- UserInstance ------------------------------------------------------------
# The bridge owns the instance's process and is the only writer of its status: it
# spawns it as the user's uid, restarts it when it dies and stops it when idle,
# because it is the one that can see the process. The operator turns Ready flips
# into events.


@kopf.on.field(*USERINSTANCES, field="status.conditions")
async def instance_conditions_changed(*, body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
    ready = userinstances.ready_flip(old, new)
    # Ready did not change (another condition did): nothing to announce.
    if ready is None:
        return
    kind = "Normal" if ready.status == "True" else "Warning"
    kopf.event(body, type=kind, reason=ready.reason, message=f"Ready={ready.status}: {ready.message}")

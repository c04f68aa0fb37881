"""The operator against the real apiserver, with a Core stand-in and a fake bridge ingress.

The operator runs in this process, in a thread with its own event loop (as
``kopf.testing.KopfRunner`` does), so it can be stopped gracefully or killed in
the middle of a handler. The test's own loop serves the Core stand-in and a tiny
fake of the slurm_bridge ingress (``/jobs/submit``, ``/jobs/cancel``), and plays
the bridge's other part: it marks UserInstances Ready and appends transitions to
UCloudJob status, as the real bridge will.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
import pytest
from aiohttp import web
from kubernetes_asyncio.config import kube_config

from tests.support.platform import Platform
from ucim.common.conditions import find_condition
from ucim.common.drives import HOME_DRIVE_ANNOTATION
from ucim.common.instance_api import CANCEL_PATH, SUBMIT_PATH, CancelRequest, SubmitRequest, SubmitResponse
from ucim.common.kube import Kube
from ucim.common.protocol import JobState, error_body
from ucim.common.reasons import REQUESTED_AT_ANNOTATION
from ucim.common.resources import Condition, UCloudJob, UserConnection, UserInstance, cluster_labels
from ucim.operator import handlers
from ucim.testing import CoreStandIn

PROVIDER = "ucim-test"
REFRESH_TOKEN = "refresh-token-for-tests"
INGRESS_TOKEN = "ingress-token-for-tests"
OWNER = "alice#1234"
CLUSTER = "local"

T = TypeVar("T")


# --- the fake bridge ingress ---------------------------------------------------


@dataclass
class FakeBridge:
    """Answers /jobs/submit and /jobs/cancel like user instances behind the bridge ingress.

    Submission is idempotent on the Slurm job name, as the real instance is: a
    second submit of a known name answers the same Slurm id with alreadySubmitted.
    """

    jobs: dict[str, int] = field(default_factory=dict)  # Slurm job name -> Slurm job id
    submit_calls: list[str] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    reject_with: str | None = None
    # When set, a submit creates its Slurm job and then waits for this before answering.
    hold: asyncio.Event | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _next_id: int = 5000

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/i/{user}" + SUBMIT_PATH, self._submit)
        app.router.add_post("/i/{user}" + CANCEL_PATH, self._cancel)
        return app

    def endpoint(self, local_user: str) -> str:
        return f"{self.url}/i/{local_user}"

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {INGRESS_TOKEN}"

    async def _submit(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(error_body(401, "Unauthorized"), status=401)
        body = SubmitRequest.model_validate(await request.json())
        self.submit_calls.append(body.slurm_job_name)
        if self.reject_with is not None:
            return web.json_response(error_body(400, self.reject_with), status=400)
        already = body.slurm_job_name in self.jobs
        if not already:
            self.jobs[body.slurm_job_name] = self._next_id
            self._next_id += 1
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        answer = SubmitResponse(
            slurm_job_id=self.jobs[body.slurm_job_name],
            job_folder=f"/home/alice/ucloud-jobs/{body.job_id}",
            folder_in_drive=f"ucloud-jobs/{body.job_id}",
            already_submitted=already,
        )
        return web.json_response(answer.model_dump(mode="json", by_alias=True))

    async def _cancel(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(error_body(401, "Unauthorized"), status=401)
        self.cancelled.extend(CancelRequest.model_validate(await request.json()).slurm_job_ids)
        return web.json_response({})


# --- the operator, in a thread -----------------------------------------------------


class OperatorThread:
    """kopf.operator() in its own thread and event loop; stop() is graceful, kill() is not."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"operator-{namespace}", daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        operator = kopf.operator(standalone=True, namespaces=[self.namespace], stop_flag=self._stop, ready_flag=ready)
        self._task = loop.create_task(operator)

        async def announce() -> None:
            await ready.wait()
            self._ready.set()

        announcer = loop.create_task(announce())
        try:
            loop.run_until_complete(self._task)
        except (asyncio.CancelledError, Exception):  # noqa: S110 - a killed operator ends this way
            pass
        finally:
            announcer.cancel()
            loop.run_until_complete(asyncio.gather(announcer, return_exceptions=True))
            loop.close()

    async def start(self) -> None:
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, 30):
            raise AssertionError("the operator did not start within 30 s")

    async def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 30)

    async def kill(self) -> None:
        """Cancel the operator wherever it is, as a SIGKILL would: no clean-up, no pending patch applied."""
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join, 30)


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture
async def kube(platform: Platform) -> AsyncIterator[Kube]:
    async with await Kube.connect(platform.kubeconfig) as client:
        yield client


@pytest.fixture
async def core() -> AsyncIterator[CoreStandIn]:
    async with CoreStandIn(PROVIDER, REFRESH_TOKEN) as standin:
        await standin.start()
        yield standin


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    fake = FakeBridge()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    if fake.hold is not None:
        fake.hold.set()
    await runner.cleanup()


@pytest.fixture
def operator_env(
    monkeypatch: pytest.MonkeyPatch, platform: Platform, namespace: str, core: CoreStandIn
) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("KUBECONFIG", platform.kubeconfig)
    # kubernetes_asyncio reads $KUBECONFIG once, at import: point its default at the platform, as a fresh
    # operator process would find it (kopf's login and our Kube both load the default).
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", platform.kubeconfig)
    settings = {
        "NAMESPACE": namespace,
        "PROVIDER_ID": PROVIDER,
        "CORE_URL": core.url,
        "CORE_REFRESH_TOKEN": REFRESH_TOKEN,
        "INGRESS_TOKEN": INGRESS_TOKEN,
        "METRICS_PORT": "0",
        "LOG_FORMAT": "text",
        "DELIVERY_RETRY_MAX_SECONDS": "2",
        "INSTANCE_RETRY_MAX_SECONDS": "1",
        "SUBMIT_TIMEOUT_SECONDS": "5",
        "DELETE_ATTEMPTS": "3",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"UCIM_OPERATOR_{key}", value)
    yield monkeypatch


@pytest.fixture
async def start_operator(
    operator_env: pytest.MonkeyPatch, namespace: str, kube: Kube
) -> AsyncIterator[Callable[[], Awaitable[OperatorThread]]]:
    running: list[OperatorThread] = []

    async def start() -> OperatorThread:
        operator = OperatorThread(namespace)
        running.append(operator)
        await operator.start()
        return operator

    yield start
    for operator in running:
        await operator.stop()
    # Nobody removes our finalizer once the operator is gone: do it, so the namespace can go.
    for job in await kube.list(UCloudJob, namespace):
        if job.metadata.finalizers:
            await kube.patch(UCloudJob, namespace, job.metadata.name, {"metadata": {"finalizers": None}})


@pytest.fixture
async def operator(start_operator: Callable[[], Awaitable[OperatorThread]]) -> OperatorThread:
    return await start_operator()


# --- helpers -------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0) -> T:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def ready_instance(kube: Kube, namespace: str, bridge: FakeBridge, owner: str = OWNER) -> UserInstance:
    """What the bridge does: the user's instance exists, is mapped, and serves at an endpoint."""
    name = UserInstance.name_for(owner, CLUSTER)
    if await kube.get(UserInstance, namespace, name) is None:
        manifest = {
            "metadata": {"name": name, "labels": cluster_labels(CLUSTER)},
            "spec": {"ucloudUsername": owner, "cluster": CLUSTER},
        }
        await kube.create(UserInstance.model_validate(manifest), namespace)
    if await kube.get(UserConnection, namespace, name) is None:
        # What the gateway does at init: the connection, with the id Core gave the user's home drive.
        connection = {
            "metadata": {"name": name, "labels": cluster_labels(CLUSTER), "annotations": {HOME_DRIVE_ANNOTATION: "17"}},
            "spec": {"ucloudUsername": owner, "cluster": CLUSTER, "localUser": "alice"},
        }
        await kube.create(UserConnection.model_validate(connection), namespace)
    return await mark_ready(kube, namespace, name, bridge.endpoint("alice"))


async def mark_ready(kube: Kube, namespace: str, name: str, endpoint: str) -> UserInstance:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "InstanceServing",
        "message": "serving",
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return await kube.patch_status(UserInstance, namespace, name, {"conditions": [ready], "endpoint": endpoint})


def new_job(job_id: str, owner: str = OWNER, **spec: Any) -> UCloudJob:
    return UCloudJob.model_validate(
        {
            "metadata": {"name": UCloudJob.name_for(job_id)},
            "spec": {
                "jobId": job_id,
                "owner": owner,
                "cluster": CLUSTER,
                "application": {"name": "run-command", "version": "1"},
                "product": {"id": "cpu-1", "category": "cpu", "provider": PROVIDER},
                "slurm": {"partition": "normal"},
                "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 100, "timeLimitMinutes": 5},
                "parameters": {"command": {"type": "text", "value": "echo hello"}},
                **spec,
            },
        }
    )


async def get_job(kube: Kube, namespace: str, job_id: str) -> UCloudJob:
    job = await kube.get(UCloudJob, namespace, UCloudJob.name_for(job_id))
    assert job is not None, f"job {job_id} is gone"
    return job


async def submitted(kube: Kube, namespace: str, job_id: str) -> UCloudJob:
    async def check() -> UCloudJob | None:
        job = await get_job(kube, namespace, job_id)
        return job if job.status.slurm_job_id is not None else None

    return await eventually(check, f"job {job_id} to be submitted")


async def bridge_reports(kube: Kube, namespace: str, job_id: str, *states: JobState) -> None:
    """What the bridge does when Slurm moves a job on: append transitions and set the state."""
    for state in states:
        job = await get_job(kube, namespace, job_id)
        transitions = [t.to_dict() for t in job.status.transitions]
        transitions.append({"state": state.value, "timestamp": int(time.time() * 1000), "message": state.value})
        await kube.patch_status(
            UCloudJob, namespace, job.metadata.name, {"state": state.value, "transitions": transitions}
        )


def condition(job: UCloudJob, type_: str) -> Condition:
    found = find_condition(job.status.conditions, type_)
    assert found is not None, f"no {type_} condition on {job.metadata.name}"
    return found


async def events(platform: Platform, namespace: str) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(platform.kubectl, "get", "events", "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


# --- tests ---------------------------------------------------------------------------


async def test_a_job_is_submitted_once_and_core_hears_in_queue(
    *, operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge, platform: Platform
) -> None:
    await ready_instance(kube, namespace, bridge)
    created = await kube.create(new_job("101"), namespace)

    update = await core.wait_for_update("101", JobState.IN_QUEUE, timeout=20)
    job = await submitted(kube, namespace, "101")

    name = f"ucim-{created.metadata.uid}"
    assert bridge.submit_calls == [name]
    assert job.status.slurm_job_id == bridge.jobs[name]
    assert job.status.job_folder == "/home/alice/ucloud-jobs/101"
    assert job.status.provider_generated_id == job.metadata.name
    assert job.status.submitted_at is not None
    assert [t.state for t in job.status.transitions] == [JobState.IN_QUEUE]
    # Core's outputFolder is the folder as a UCloud path: the home drive's id, then its place in the drive.
    assert job.status.output_folder == "/17/ucloud-jobs/101"
    assert update.output_folder == "/17/ucloud-jobs/101"
    assert update.timestamp == job.status.transitions[0].timestamp
    assert (condition(job, "Submitted").status, condition(job, "Submitted").reason) == ("True", "SlurmAccepted")
    assert handlers.FINALIZER in (job.metadata.finalizers or [])

    async def reported() -> UCloudJob | None:
        current = await get_job(kube, namespace, "101")
        return current if current.status.reported_transitions == 1 else None

    job = await eventually(reported, "reportedTransitions to reach 1")
    assert condition(job, "Reported").status == "True"
    # The products were registered with Core at start-up.
    assert {p.name for p in core.record.products} == {"cpu-1", "cpu-2", "short-1", "home", "project"}

    async def accepted_event() -> list[dict[str, Any]]:
        return [e for e in await events(platform, namespace) if e.get("reason") == "SlurmAccepted"]

    await eventually(accepted_event, "a SlurmAccepted event")


async def test_the_bridges_transitions_reach_core_in_order(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    await ready_instance(kube, namespace, bridge)
    await kube.create(new_job("102"), namespace)
    await core.wait_for_update("102", JobState.IN_QUEUE, timeout=20)

    await bridge_reports(kube, namespace, "102", JobState.RUNNING, JobState.SUCCESS)

    await core.wait_for_update("102", JobState.SUCCESS, timeout=20)
    assert [u.state for u in core.updates_for("102")] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS]

    async def all_reported() -> UCloudJob | None:
        job = await get_job(kube, namespace, "102")
        return job if job.status.reported_transitions == 3 else None

    await eventually(all_reported, "reportedTransitions to reach 3")


async def test_updates_wait_while_core_is_offline_and_all_arrive_in_order(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    await ready_instance(kube, namespace, bridge)
    job_ids = ["201", "202", "203"]
    for job_id in job_ids:
        await kube.create(new_job(job_id), namespace)
    for job_id in job_ids:
        await core.wait_for_update(job_id, JobState.IN_QUEUE, timeout=20)

    await core.go_offline()
    for job_id in job_ids:
        await bridge_reports(kube, namespace, job_id, JobState.RUNNING)
    for job_id in job_ids:
        await bridge_reports(kube, namespace, job_id, JobState.SUCCESS)

    async def failing() -> UCloudJob | None:
        job = await get_job(kube, namespace, "201")
        reported = find_condition(job.status.conditions, "Reported")
        return job if reported is not None and reported.reason == "CoreDeliveryFailing" else None

    job = await eventually(failing, "Reported=False CoreDeliveryFailing while Core is offline")
    assert condition(job, "Reported").status == "False"
    assert job.status.reported_transitions == 1
    await asyncio.sleep(2)  # stay offline through a few retries
    await core.go_online()

    for job_id in job_ids:
        await core.wait_for_update(job_id, JobState.SUCCESS, timeout=30)
        assert [u.state for u in core.updates_for(job_id)] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS]

    async def up_to_date() -> UCloudJob | None:
        job = await get_job(kube, namespace, "201")
        return job if condition(job, "Reported").status == "True" and job.status.reported_transitions == 3 else None

    await eventually(up_to_date, "Reported=True after Core came back")


async def test_updates_core_refuses_are_dropped_after_a_few_tries(
    *, operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge, platform: Platform
) -> None:
    await ready_instance(kube, namespace, bridge)
    core.fail_requests("/api/jobs/control/update", status=404)  # Core does not know the job
    await kube.create(new_job("204"), namespace)

    async def dropped() -> UCloudJob | None:
        job = await get_job(kube, namespace, "204")
        return job if job.status.reported_transitions == 1 else None

    job = await eventually(dropped, "the refused IN_QUEUE update to be dropped", timeout=30)
    reported = condition(job, "Reported")
    assert (reported.status, reported.reason) == ("False", "CoreDeliveryFailing")
    assert "Injected failure" in reported.message
    assert core.updates_for("204") == []
    warnings = [e for e in await events(platform, namespace) if e.get("reason") == "CoreDeliveryFailing"]
    assert warnings

    # Later changes are delivered normally once Core takes them.
    core.clear_failures()
    await bridge_reports(kube, namespace, "204", JobState.RUNNING)
    await core.wait_for_update("204", JobState.RUNNING, timeout=20)
    assert [u.state for u in core.updates_for("204")] == [JobState.RUNNING]

    async def up_to_date() -> UCloudJob | None:
        current = await get_job(kube, namespace, "204")
        return current if condition(current, "Reported").status == "True" else None

    await eventually(up_to_date, "Reported=True again")


async def test_a_restart_between_submit_and_status_write_submits_once(
    start_operator: Callable[[], Awaitable[OperatorThread]],
    kube: Kube,
    namespace: str,
    core: CoreStandIn,
    bridge: FakeBridge,
) -> None:
    await ready_instance(kube, namespace, bridge)
    first = await start_operator()
    bridge.hold = asyncio.Event()
    created = await kube.create(new_job("301"), namespace)
    await asyncio.wait_for(bridge.held.wait(), 20)  # the Slurm job exists; its id has not reached the status

    await first.kill()
    bridge.hold.set()
    bridge.hold = None
    assert (await get_job(kube, namespace, "301")).status.slurm_job_id is None

    await start_operator()
    job = await submitted(kube, namespace, "301")
    name = f"ucim-{created.metadata.uid}"
    assert bridge.submit_calls == [name, name]
    assert list(bridge.jobs) == [name]  # one Slurm job
    assert job.status.slurm_job_id == bridge.jobs[name]
    assert "earlier attempt" in condition(job, "Submitted").message
    await core.wait_for_update("301", JobState.IN_QUEUE, timeout=20)
    assert [u.state for u in core.updates_for("301")] == [JobState.IN_QUEUE]


async def test_changes_made_while_the_operator_is_down_are_delivered_after_it_starts(
    start_operator: Callable[[], Awaitable[OperatorThread]],
    kube: Kube,
    namespace: str,
    core: CoreStandIn,
    bridge: FakeBridge,
) -> None:
    await ready_instance(kube, namespace, bridge)
    first = await start_operator()
    await kube.create(new_job("302"), namespace)
    await core.wait_for_update("302", JobState.IN_QUEUE, timeout=20)

    async def reported_once() -> UCloudJob | None:
        job = await get_job(kube, namespace, "302")
        return job if job.status.reported_transitions == 1 else None

    await eventually(reported_once, "reportedTransitions to reach 1")
    await first.stop()
    await bridge_reports(kube, namespace, "302", JobState.RUNNING, JobState.SUCCESS)

    await start_operator()
    await core.wait_for_update("302", JobState.SUCCESS, timeout=20)
    assert [u.state for u in core.updates_for("302")] == [JobState.IN_QUEUE, JobState.RUNNING, JobState.SUCCESS]


async def test_a_rejected_submission_fails_the_job_at_core(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    await ready_instance(kube, namespace, bridge)
    bridge.reject_with = "sbatch: error: Invalid time limit specification"
    await kube.create(new_job("401"), namespace)

    update = await core.wait_for_update("401", JobState.FAILURE, timeout=20)
    assert update.status == "Sbatch: error: Invalid time limit specification"
    job = await get_job(kube, namespace, "401")
    submitted_condition = condition(job, "Submitted")
    assert (submitted_condition.status, submitted_condition.reason) == ("False", "SlurmSubmitRejected")
    assert submitted_condition.message == update.status
    assert job.status.state == JobState.FAILURE
    assert job.status.slurm_job_id is None
    assert len(bridge.submit_calls) == 1  # never retried


async def test_a_user_the_mapping_refuses_fails_the_job(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    name = UserInstance.name_for(OWNER, CLUSTER)
    manifest = {
        "metadata": {"name": name, "labels": cluster_labels(CLUSTER)},
        "spec": {"ucloudUsername": OWNER, "cluster": CLUSTER},
    }
    await kube.create(UserInstance.model_validate(manifest), namespace)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    refused = [
        {"type": t, "status": "False", "reason": "MappingRefused", "message": "no local account"}
        for t in ("Mapped", "Ready")
    ]
    for entry in refused:
        entry["lastTransitionTime"] = now
    await kube.patch_status(UserInstance, namespace, name, {"conditions": refused})
    await kube.create(new_job("402"), namespace)

    update = await core.wait_for_update("402", JobState.FAILURE, timeout=20)
    assert update.status == "The user cannot run jobs on this cluster: no local account"
    job = await get_job(kube, namespace, "402")
    assert (condition(job, "Submitted").status, condition(job, "Submitted").reason) == ("False", "MappingRefused")
    assert bridge.submit_calls == []


async def test_terminate_cancels_the_slurm_job(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    await ready_instance(kube, namespace, bridge)
    await kube.create(new_job("501"), namespace)
    job = await submitted(kube, namespace, "501")

    await kube.patch(UCloudJob, namespace, job.metadata.name, {"spec": {"terminate": True}})

    async def cancelled() -> UCloudJob | None:
        current = await get_job(kube, namespace, "501")
        found = find_condition(current.status.conditions, "Cancelled")
        return current if found is not None and found.status == "True" else None

    job = await eventually(cancelled, "Cancelled=True")
    assert condition(job, "Cancelled").reason == "SlurmCancelled"
    assert bridge.cancelled == [job.status.slurm_job_id]
    # The final state comes from Slurm, through the bridge.
    await bridge_reports(kube, namespace, "501", JobState.SUCCESS)
    await core.wait_for_update("501", JobState.SUCCESS, timeout=20)


async def test_terminated_before_submission_never_reaches_slurm(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    # No instance is ready, so the job cannot have been submitted when it is terminated.
    await kube.create(new_job("502", terminate=True), namespace)
    update = await core.wait_for_update("502", JobState.SUCCESS, timeout=20)
    assert update.status == "Terminated before it was submitted to Slurm"
    assert bridge.submit_calls == []
    job = await get_job(kube, namespace, "502")
    assert condition(job, "Cancelled").status == "True"


async def test_delete_cancels_a_running_job_and_removes_the_finalizer(
    operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge
) -> None:
    await ready_instance(kube, namespace, bridge)
    await kube.create(new_job("601"), namespace)
    job = await submitted(kube, namespace, "601")
    await core.wait_for_update("601", JobState.IN_QUEUE, timeout=20)

    await kube.delete(UCloudJob, namespace, job.metadata.name)

    async def gone() -> bool:
        return await kube.get(UCloudJob, namespace, job.metadata.name) is None

    await eventually(gone, "the job to be deleted")
    assert bridge.cancelled == [job.status.slurm_job_id]
    final = await core.wait_for_update("601", JobState.SUCCESS, timeout=20)
    assert final.status == "Cancelled: the job was deleted on the provider"


async def test_delete_gives_up_on_an_unreachable_instance(
    *, operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge, platform: Platform
) -> None:
    await ready_instance(kube, namespace, bridge)
    await kube.create(new_job("602"), namespace)
    job = await submitted(kube, namespace, "602")
    # The instance "moves" to an address where nothing listens.
    await mark_ready(kube, namespace, UserInstance.name_for(OWNER, CLUSTER), "http://127.0.0.1:9/i/alice")

    await kube.delete(UCloudJob, namespace, job.metadata.name)

    async def gone() -> bool:
        return await kube.get(UCloudJob, namespace, job.metadata.name) is None

    await eventually(gone, "the job to be deleted despite the unreachable instance", timeout=30)
    final = await core.wait_for_update("602", JobState.FAILURE, timeout=20)
    assert final.status is not None and "Gave up cancelling" in final.status
    warnings = [e for e in await events(platform, namespace) if e.get("reason") == "InstanceUnreachable"]
    assert warnings


async def test_the_owners_instance_is_created_and_the_job_waits_for_it(
    *, operator: OperatorThread, kube: Kube, namespace: str, core: CoreStandIn, bridge: FakeBridge, platform: Platform
) -> None:
    await kube.create(new_job("701", owner="bob#42"), namespace)
    name = UserInstance.name_for("bob#42", CLUSTER)

    async def created() -> UserInstance | None:
        return await kube.get(UserInstance, namespace, name)

    instance = await eventually(created, "the operator to create bob's UserInstance")
    assert instance.spec.ucloud_username == "bob#42"
    assert REQUESTED_AT_ANNOTATION in (instance.metadata.annotations or {})
    assert instance.metadata.labels == {"ucim.io/cluster": CLUSTER}  # so that its cluster's bridge sees it
    assert instance.status.conditions == []  # the bridge is the only writer of its status

    async def waiting() -> Condition | None:
        # kopf writes the handler's outcome a moment after the handler created the instance.
        return find_condition((await get_job(kube, namespace, "701")).status.conditions, "Submitted")

    submitted = await eventually(waiting, "the job's Submitted condition")
    assert (submitted.status, submitted.reason) == ("Unknown", "WaitingForInstance")

    await mark_ready(kube, namespace, name, bridge.endpoint("bob"))
    await core.wait_for_update("701", JobState.IN_QUEUE, timeout=20)

    async def ready_event() -> list[dict[str, Any]]:
        return [e for e in await events(platform, namespace) if e.get("reason") == "InstanceServing"]

    await eventually(ready_event, "an event for the Ready flip")


def condition_of(instance: UserInstance, type_: str) -> Condition:
    found = find_condition(instance.status.conditions, type_)
    assert found is not None
    return found

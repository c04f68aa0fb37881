"""The demo behind `make demo`: a UCloud job for alice, end to end on the local platform.

`make demo` starts the local platform first. This script then starts ucim's
components as local processes (gateway, operator, slurm_bridge), plays
UCloud/Core with its stand-in, connects alice, uploads a text file to her home and
starts a Core-style application for her (word-count: a v2 YAML application held by
the stand-in, with an input file and an output folder), and shows it go IN_QUEUE →
RUNNING → SUCCESS in `kubectl get ucloudjobs` and in the updates Core received; then
Core browses the job's outputFolder and downloads its output and result through the
gateway, as alice's own instance reads them. Then a web interface (web-echo) and a remote
desktop (desktop-vnc) of alice's, opened as UCloud's browser opens them. Last, Core's accounting: a project of
alice and bob with an allocation becomes a Unix group and a Slurm account
(`kubectl get ucloudprojects`), a project job runs under that account in the project's
drive, and its usage reaches Core.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import PurePath

import aiohttp

from ucim.common import reasons
from ucim.common.accounting_stream import Workspace
from ucim.common.conditions import is_true
from ucim.common.protocol import AppParameterValue, JobState, SimpleDuration
from ucim.common.resources import UCloudProject
from ucim.common.resources import Workspace as WorkspaceRef
from ucim.testing.browser import LoopbackResolver
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.rfb import rfb_handshake
from ucim.testing.stack import (
    Stack,
    accounting_settings,
    platform_kubectl,
    read_platform_env,
    running_stack,
)

NAMESPACE = "ucim-demo"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def kubectl(env: dict[str, str], *args: str) -> str:
    return platform_kubectl(env)(*args).stdout


async def main() -> None:
    env = read_platform_env()
    # A fresh namespace each time, so the listing shows only this run's job.
    kubectl(env, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=60s")
    kubectl(env, "create", "namespace", NAMESPACE)
    say("starting ucim-bridge, ucim-operator and ucim-gateway against the local platform")
    # Core's accounting on: the operator keeps Core's event stream open, the bridge makes groups and Slurm accounts.
    async with running_stack(env, NAMESPACE, accounting_settings()) as stack:
        core = stack.core
        await core.connect("alice")
        await allocations_ready(stack)
        # Core sends a job only for a workspace with an allocation: alice's own gets 10 core-hours.
        await core.accounting.grant(Workspace.user("alice"), "cpu", 10)
        home = core.home_of("alice")
        say(f"alice connected; her home is drive {home.id} ({home.provider_generated_id}) at Core")
        await application_demo(stack, env, home.id)
        await interactive_demo(stack)
        print(kubectl(env, "get", "userinstances", "-n", NAMESPACE), end="")
        try:
            await project_demo(stack, env)
        finally:
            remove_groups_and_accounts(stack)
    say("done")


async def application_demo(stack: Stack, env: dict[str, str], home: str) -> None:
    """A Core-style application for alice: an input file, an output folder, and what Core sees of it."""
    core = stack.core
    job_id = str(int(time.time()))
    # The catalogue lives in Core: word-count is a v2 YAML application the Core stand-in holds
    # (ucim/testing/apps/word-count.yaml), sent with the job as its resolvedApplication.
    text = b"the quick brown fox jumps over the lazy dog and the fox naps\n"
    upload = await core.create_upload("alice", f"/{home}/demo-{job_id}.txt")
    uploaded = await core.upload(upload, text, "alice")
    if not uploaded.ok:
        raise SystemExit(f"demo: the upload failed: {uploaded.status} {uploaded.body!r}")
    created_folder = await core.files_call(
        "alice", "folder", [{"id": f"/{home}/demo-{job_id}-out", "conflictPolicy": "REJECT"}]
    )
    created_folder.raise_for_status()
    say(f"alice uploads demo-{job_id}.txt to her home ({len(text)} B) and makes a folder demo-{job_id}-out")
    say(f"Core starts job {job_id} for alice: the application word-count@1 (python, input file, output folder)")
    started = time.monotonic()
    parameters: dict[str, AppParameterValue | int] = {
        "input": AppParameterValue.file(f"/{home}/demo-{job_id}.txt"),
        "output": AppParameterValue.file(f"/{home}/demo-{job_id}-out"),
        "top": 3,
    }
    created = await core.create_jobs([core.make_job(job_id, "alice", ("word-count", "1"), parameters)])
    say(f"the gateway answered with providerGeneratedId {created[0].id}")
    seen: set[JobState] = set()
    while JobState.SUCCESS not in seen and time.monotonic() - started < 90:
        for update in core.updates_for(job_id):
            if update.state is not None and update.state not in seen:
                seen.add(update.state)
                say(f"Core received {update.state} after {time.monotonic() - started:.1f} s ({update.status})")
                print(kubectl(env, "get", "ucloudjobs", "-n", NAMESPACE), end="", flush=True)
        await asyncio.sleep(0.1)
    if JobState.SUCCESS not in seen:
        print(stack.logs())
        raise SystemExit("demo: the job did not finish in 90 s")
    folder = next(u.output_folder for u in core.updates_for(job_id) if u.output_folder)
    page = await core.files_browse("alice", folder)
    listing = ", ".join(f"{item.id.rsplit('/', 1)[1]} ({item.status.size_in_bytes} B)" for item in page.items)
    say(f"the job's outputFolder at Core is {folder}; Core browses it through the gateway: {listing}")
    download = await core.create_download("alice", f"{folder}/stdout.txt")
    output = (await core.download(download.endpoint)).body.decode()
    say(f"stdout.txt (a one-time download): {output.strip()}")
    result = f"/{home}/demo-{job_id}-out/word-count.txt"
    download = await core.create_download("alice", result)
    counts = (await core.download(download.endpoint)).body.decode()
    say(f"and its result, {result}: {' | '.join(counts.splitlines())}")


async def interactive_demo(stack: Stack) -> None:
    """A web interface and a remote desktop of alice's jobs, opened as UCloud's browser opens them."""
    core = stack.core
    web_id, desk_id = str(int(time.time()) + 1), str(int(time.time()) + 2)
    minutes = SimpleDuration(minutes=10)  # their servers run until the job ends
    jobs = [core.make_job(job_id, "alice", (app, "1"), time_allocation=minutes)
            for job_id, app in ((web_id, "web-echo"), (desk_id, "desktop-vnc"))]  # fmt: skip
    await core.create_jobs(jobs)
    try:
        for job in jobs:
            await core.wait_for_update(job.id, JobState.RUNNING, timeout=60)
        opened = await core.open_session(jobs[0], "WEB")
        opened.raise_for_status()
        redirect = opened.body["responses"][0]["redirectClientTo"]
        say(f"Core opens job {web_id}'s web interface (web-echo@1): the browser goes to {redirect[:90]}…")
        # A browser whose DNS sends the wildcard domain to the gateway, as a site's wildcard record does.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver())) as browser:
            await asyncio.sleep(1.0)  # the server starts a moment after the job
            async with browser.get(redirect) as page:
                title = (await page.text()).partition("<title>")[2].partition("</title>")[0]
            origin = str(page.url.origin())
            async with browser.get(f"{origin}/whoami") as who:
                served = await who.json()
        say(f"authorize-app set the session cookie and sent it to {origin}/: {page.status} {title!r}; "
            f"/whoami: {served['user']} on {served['host']}")  # fmt: skip
        opened = await core.open_session(jobs[1], "VNC")
        opened.raise_for_status()
        vnc = opened.body["responses"][0]
        desktop = await rfb_handshake(vnc["url"], vnc["password"])
        screen = f"{desktop.width}x{desktop.height} {desktop.name!r}"
        say(f"Core opens job {desk_id}'s remote desktop (desktop-vnc@1): noVNC's socket {vnc['url'][:70]}… "
            f"completes VNC's handshake with the password: {screen}")  # fmt: skip
    finally:
        await core.terminate_jobs(jobs)


async def allocations_ready(stack: Stack) -> None:
    """Until Core knows the product categories (the operator registers them at start-up)."""
    async with asyncio.timeout(30):
        while "cpu" not in stack.core.accounting.categories():  # noqa: ASYNC110 - the stand-in has no event for it
            await asyncio.sleep(0.2)


async def project_demo(stack: Stack, env: dict[str, str]) -> None:
    core = stack.core
    await core.connect("bob")
    project_id = core.accounting.create_project("Protein folding", {"alice": "PI", "bob": "USER"})
    owner = Workspace.project(project_id)
    await core.accounting.grant(owner, "cpu", 10)
    say(f"Core creates project {project_id} (alice PI, bob) and grants it 10 core-hours of cpu")
    started = time.monotonic()
    name = UCloudProject.name_for(WorkspaceRef(kind="project", id=project_id))
    project = None
    while time.monotonic() - started < 60:
        found = platform_kubectl(env)("get", "ucp", name, "-n", NAMESPACE, "-o", "json", check=False)
        project = UCloudProject.model_validate_json(found.stdout) if found.returncode == 0 else None
        if (
            project is not None
            and is_true(project.status.conditions, reasons.ACCOUNT_READY)
            and project.status.drive_id
        ):
            break
        await asyncio.sleep(0.3)
    say(f"the bridge made its Unix group, Slurm account and folder in {time.monotonic() - started:.1f} s:")
    print(kubectl(env, "get", "ucloudprojects", "-n", NAMESPACE), end="", flush=True)
    if project is None or not project.status.group or not project.status.drive_folder:
        raise SystemExit("demo: the project's group and folder were not made within 60 s")
    group, drive = project.status.group, PurePath(project.status.drive_folder)
    shown = stack.frontend.run("stat", "-c", "%U:%G %A", str(drive)).stdout.strip()
    say(f"its folder {drive} ({shown}) is drive {project.status.drive_id} at Core")
    job_id = f"{int(time.time())}1"
    say(f"bob starts project job {job_id}: run-command 'sleep 2; echo account $SLURM_JOB_ACCOUNT'")
    await core.create_jobs([core.make_job(job_id, "bob", ("run-command", "1"),
                                          {"command": "sleep 2; echo account $SLURM_JOB_ACCOUNT"},
                                          project=project_id)])  # fmt: skip
    await core.wait_for_update(job_id, JobState.SUCCESS, timeout=90)
    folder = drive / "ucloud-jobs" / job_id
    say(f"it ran in {folder} (group {group}): {stack.read_file(folder / 'stdout.txt').strip()}")
    wallet = await core.accounting.wait_for_usage(owner, "cpu", timeout=30)
    say(f"Core has the project's usage: {wallet.usage} of {wallet.quota} core-hours (a job of seconds is 0 of them)")
    await core.accounting.set_locked(owner, "cpu", True)
    say("Core locks the wallet; the next job is refused:")
    await asyncio.sleep(1)
    try:
        await core.create_jobs([core.make_job(f"{job_id}2", "alice", ("sleep-exit", "1"), {"seconds": 1},
                                              project=project_id)])  # fmt: skip
    except ProviderCallError as refusal:
        say(str(refusal))


def remove_groups_and_accounts(stack: Stack) -> None:
    """The demo's Unix groups and Slurm accounts: they outlive the namespace otherwise."""
    listed = stack.kubectl("get", "ucp", "-n", NAMESPACE, "-o", "json", check=False)
    if listed.returncode != 0:
        return
    for item in json.loads(listed.stdout)["items"]:
        project = UCloudProject.from_obj(item)
        for account in project.status.accounts:
            stack.frontend.run("sacctmgr", "-i", "delete", "account", account.name, check=False)
        if project.status.group:
            stack.frontend.run("groupdel", project.status.group, check=False)
        if project.status.drive_folder:
            stack.frontend.run("rm", "-rf", "--", project.status.drive_folder, check=False)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

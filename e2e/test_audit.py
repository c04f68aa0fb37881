"""The audit trail end to end: each action a user takes through Core is one line in the bridge's file.

Alice submits a job, browses and writes a file (folder, then a CHUNKED upload of three chunks),
fails to make a folder that exists, and cancels the job; bob makes a folder and fails to browse
alice's home. Every action is in the file exactly once, with the UCloud user, local user and uid of
the instance that took it (from the kernel, not from the record), how it ended (a refusal with its
status and why), and a request id the gateway's (or the operator's) log carries too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from e2e.test_shell import open_terminal
from ucim.common.protocol import JobState
from ucim.common.resources import UCloudJob
from ucim.testing.folder_upload_client import LocalFile
from ucim.testing.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.local_platform]


@pytest.fixture
def folder(stack: Stack) -> Iterator[str]:
    name = f"ucim-audit-{uuid.uuid4().hex[:8]}"
    yield name
    for user in ("alice", "bob"):
        stack.run_as(user, "rm", "-rf", f"/home/{user}/{name}", check=False)


def uid_of(stack: Stack, user: str) -> int:
    return int(stack.run_as(user, "id", "-u").stdout)


def only(records: list[dict[str, Any]], action: str, target: str) -> dict[str, Any]:
    """The one record of ``action`` on ``target``; fails when there is none or more than one."""
    found = [r for r in records if r["action"] == action and target in r.get("targets", [])]
    assert len(found) == 1, (action, target, found)
    return found[0]


async def records_until(stack: Stack, action: str, target: str, timeout: float = 10) -> list[dict[str, Any]]:  # noqa: ASYNC109
    """The trail once a record of ``action`` on ``target`` is in it (records arrive just after the answer)."""
    async with asyncio.timeout(timeout):
        while True:
            records = stack.audit_records()
            if any(r["action"] == action and target in r.get("targets", []) for r in records):
                return records
            await asyncio.sleep(0.1)


async def test_each_action_is_recorded_once_with_who_took_it_and_how_it_ended(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    await core.connect("bob")
    alice, bob = core.home_of("alice"), core.home_of("bob")

    job = str(uuid.uuid4().int % 10**9)
    spec = core.make_job(job, "alice", ("sleep-exit", "1"), {"seconds": 300})
    await core.create_jobs([spec])
    await core.wait_for_update(job, JobState.RUNNING, timeout=60)

    await core.files_browse("alice", f"/{alice.id}")
    base = f"/{alice.id}/{folder}"
    assert (await core.files_call("alice", "folder", [{"id": base, "conflictPolicy": "REJECT"}])).ok
    exists = await core.files_call("alice", "folder", [{"id": base, "conflictPolicy": "REJECT"}])
    assert exists.status == 409, exists.body
    upload = await core.create_upload("alice", f"{base}/note.txt")
    assert (await core.upload(upload, b"audited\n" * 100_000, "alice", chunk_size=300_000)).ok

    assert (await core.files_call("bob", "folder", [{"id": f"/{bob.id}/{folder}", "conflictPolicy": "REJECT"}])).ok
    refused = await core.files_browse_call("bob", f"/{alice.id}")
    assert refused.status == 403, refused.body

    await core.terminate_jobs([spec])
    await core.wait_for_update(job, JobState.SUCCESS, timeout=60)
    slurm_job = str(stack.get(f"ucj/{UCloudJob.name_for(job)}")["status"]["slurmJobId"])
    records = await records_until(stack, "jobs.cancel", f"slurm:{slurm_job}")
    alice_uid, bob_uid = uid_of(stack, "alice"), uid_of(stack, "bob")

    submit = only(records, "jobs.submit", f"job:{job}")
    assert (submit["ucloud_user"], submit["local_user"], submit["uid"], submit["status"]) == (
        "alice",
        "alice",
        alice_uid,
        200,
    )
    assert f"slurm:{slurm_job}" in submit["targets"]

    browse = only([r for r in records if r["ucloud_user"] == "alice"], "files.browse", f"/{alice.id}")
    made = [r for r in records if r["action"] == "files.create_folder" and base in r["targets"]]
    assert [(r["status"], r["result"]) for r in made] == [(200, "ok"), (409, "error")]
    assert "exists" in made[1]["why"] and made[0]["paths"] == [f"/home/alice/{folder}"]
    only(records, "files.upload", f"{base}/note.txt")
    written = only(records, "transfers.upload", f"{base}/note.txt")  # the last chunk only, not one line a chunk
    assert written["bytes"] == 800_000
    assert all(r["uid"] == alice_uid and r["ucloud_user"] == "alice" for r in (browse, *made, written))

    bobs = only(records, "files.create_folder", f"/{bob.id}/{folder}")
    assert (bobs["local_user"], bobs["uid"], bobs["result"]) == ("bob", bob_uid, "ok")
    bob_browse = [r for r in records if r["action"] == "files.browse" and r["ucloud_user"] == "bob"]
    assert [(r["status"], r["result"]) for r in bob_browse] == [(403, "error")]
    # Another user's drive is never rooted, not even for the record: no local path.
    assert "home:alice" in bob_browse[0]["why"] and "paths" not in bob_browse[0]

    cancel = only(records, "jobs.cancel", f"slurm:{slurm_job}")
    assert (cancel["local_user"], cancel["uid"], cancel["result"]) == ("alice", alice_uid, "ok")

    # The request ids join the trail with the gateway's log (file calls) and the operator's (submit, cancel).
    gateway_log = (stack.workdir / "ucim-gateway.log").read_text()
    operator_log = (stack.workdir / "ucim-operator.log").read_text()
    assert browse["request_id"] in gateway_log and bob_browse[0]["request_id"] in gateway_log
    assert submit["request_id"] in operator_log and cancel["request_id"] in operator_log


async def test_a_terminal_is_recorded_when_it_opens_and_when_it_ends(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    home = core.home_of("alice")
    target = f"/{home.id}/{folder}"
    assert (await core.files_call("alice", "folder", [{"id": target, "conflictPolicy": "REJECT"}])).ok
    opened = (await core.open_terminal_in_folder("alice", target)).body["responses"][0]
    async with aiohttp.ClientSession() as client:
        terminal = await open_terminal(client, core.shell_url(opened, "alice"), opened["sessionIdentifier"])
        assert "=alice=" in await terminal.run("echo =$(id -un)=", "=alice=")
        await terminal.ws.close()

    records = await records_until(stack, "shell.session", f"/home/alice/{folder}")
    async with asyncio.timeout(10):  # the end line comes when the instance has seen the socket close
        while len([r for r in records if r["action"] == "shell.session"]) < 2:
            await asyncio.sleep(0.1)
            records = stack.audit_records()
    grant = only(records, "shell.grant", target)
    assert (grant["local_user"], grant["result"]) == ("alice", "ok")
    sessions = [r for r in records if r["action"] == "shell.session"]
    assert [(r["phase"], r["status"]) for r in sessions] == [("open", 101), ("end", 101)]
    assert all(f"/home/alice/{folder}" in r["targets"] and r["uid"] == uid_of(stack, "alice") for r in sessions)
    assert sessions[0]["request_id"] == sessions[1]["request_id"]
    assert sessions[1]["seconds"] > 0

    path = stack.envs["ucim-bridge"]["UCIM_BRIDGE_AUDIT__PATH"]
    info = stack.frontend.run("stat", "-c", "%u %a", "--", path).stdout.split()
    assert info == ["0", "600"], "root's, read and written by root only"


async def test_a_folder_upload_is_recorded_when_its_connection_opens_and_ends(stack: Stack, folder: str) -> None:
    core = stack.core
    await core.connect("alice")
    target = f"/{core.home_of('alice').id}/{folder}"
    stack.run_as("alice", "mkdir", f"/home/alice/{folder}")
    created = await core.create_upload("alice", f"{target}/tree", upload_type="FOLDER")
    files = [LocalFile(f"sub/file-{i}.txt", b"audited\n", 1_700_000_000_000) for i in range(3)]
    assert (await core.upload_folder(created, files)).complete

    records = await records_until(stack, "transfers.folder_upload", f"{target}/tree")
    async with asyncio.timeout(10):
        while len(lines := [r for r in records if r["action"] == "transfers.folder_upload"]) < 2:
            await asyncio.sleep(0.1)
            records = stack.audit_records()
    assert [(r["phase"], r["status"], r["local_user"]) for r in lines] == [
        ("open", 101, "alice"),
        ("end", 101, "alice"),
    ]
    assert lines[1]["files"] == "3 completed" and lines[1]["paths"] == [f"/home/alice/{folder}/tree"]
    only(records, "files.upload", f"{target}/tree")

"""The audit trail: the instance's records, the bridge's checks of who sent them, the file and its rotation.

The instance side and the bridge side meet over a real ``SOCK_SEQPACKET`` socket in a temporary
folder, so the peer-credential check is the kernel's, as on the frontend.
"""

from __future__ import annotations

import asyncio
import getpass
import grp
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient

from tests.support.extension_jobs import extension, sample_job
from ucim.common.request_ids import HEADER
from ucim.common.resources import TimeExtension
from ucim.slurm_bridge.audit import (
    AuditListener,
    AuditLog,
    AuditSettings,
    Identity,
    InstanceRecord,
    audit_line,
    bind_socket,
    check_peer,
    peer_credentials,
)
from ucim.slurm_bridge.main import audited_extensions
from ucim.user_sidecar import audit
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.settings import SidecarSettings

ME = Identity(instance="ucim/alice", ucloud_user="alice#1234", local_user="alice", uid=os.getuid(), pid=os.getpid())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# --- the line ------------------------------------------------------------------------------------


def test_a_line_says_who_from_the_bridge_and_what_from_the_record() -> None:
    entry = {"action": "files.trash", "targets": ["/5/a.txt"], "result": "ok", "status": 200, "why": None}
    line = json.loads(
        audit_line(ME, {**entry, "uid": 0, "ucloud_user": "root"}, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    )
    assert line == {
        "time": "2026-01-02T03:04:05.000+00:00",
        "ucloud_user": "alice#1234",
        "local_user": "alice",
        "uid": os.getuid(),
        "instance": "ucim/alice",
        "pid": os.getpid(),
        "action": "files.trash",
        "targets": ["/5/a.txt"],
        "result": "ok",
        "status": 200,
    }


def test_a_record_naming_a_trusted_field_or_carrying_a_structure_is_refused() -> None:
    base = {"action": "jobs.submit", "result": "ok", "status": 200}
    InstanceRecord.model_validate({**base, "bytes": 12})
    for bad in ({"uid": 0}, {"ucloud_user": "root"}, {"nested": {"a": 1}}, {"request_id": "a b"}, {"action": "x\ny"}):
        with pytest.raises(ValueError):
            InstanceRecord.model_validate({**base, **bad})


def test_many_targets_are_cut_to_one_packet_and_counted() -> None:
    data = audit.encode({"action": "files.delete", "targets": [f"/5/{'x' * 1000}-{i}" for i in range(90)]})
    assert data is not None and len(data) <= audit.MAX_RECORD_BYTES
    record = json.loads(data)
    assert len(record["targets"]) + record["targets_omitted"] == 90
    many = json.loads(audit.encode({"action": "a", "targets": [str(i) for i in range(250)]}) or b"")
    assert len(many["targets"]) == audit.MAX_TARGETS and many["targets_omitted"] == 150


# --- the file ------------------------------------------------------------------------------------


def test_the_file_is_append_only_private_and_rotated_by_size(tmp_path: Path) -> None:
    path = tmp_path / "log" / "audit.log"
    log = AuditLog.open(AuditSettings(path=path, max_bytes=2000, backup_count=2))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = Path(f"/proc/self/fdinfo/{log.handler.stream.fileno()}").read_text()  # type: ignore[attr-defined]
        assert int(info.split("flags:")[1].split()[0], 8) & os.O_APPEND
        for number in range(60):
            log.write(ME, {"action": "files.browse", "targets": [f"/5/{number}"], "result": "ok", "status": 200})
    finally:
        log.close()
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["audit.log", "audit.log.1", "audit.log.2"]  # backup_count kept, older ones gone
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in path.parent.iterdir())
    kept = [
        line["targets"][0] for name in ("audit.log.2", "audit.log.1", "audit.log") for line in lines(path.parent / name)
    ]
    assert kept == [f"/5/{n}" for n in range(60 - len(kept), 60)]  # the newest, in order, none lost between files


def test_without_max_bytes_logrotate_rotates_and_the_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog.open(AuditSettings(path=path, max_bytes=0))
    try:
        log.write(ME, {"action": "a", "result": "ok", "status": 200})
        path.rename(tmp_path / "audit.log.1")  # what logrotate does
        log.write(ME, {"action": "b", "result": "ok", "status": 200})
    finally:
        log.close()
    assert [line["action"] for line in lines(path)] == ["b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- the socket ----------------------------------------------------------------------------------


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Callable[[Callable[[int], Identity | None]], Path]]:
    """An audit listener on ``tmp_path/audit.sock`` writing ``tmp_path/audit.log``; give it who the instances are."""
    tasks: list[asyncio.Task[None]] = []

    def start(identify: Callable[[int], Identity | None]) -> Path:
        listener = AuditListener(
            bind_socket(tmp_path / "run" / "audit.sock"),
            AuditLog.open(AuditSettings(path=tmp_path / "audit.log")),
            identify,
        )
        tasks.append(asyncio.get_running_loop().create_task(listener.run()))
        return tmp_path / "run" / "audit.sock"

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def settle(path: Path, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        if len(found := lines(path)) >= count:
            return found
        await asyncio.sleep(0.01)
    return lines(path)


def test_the_peer_credentials_are_the_connecting_process(tmp_path: Path) -> None:
    listener = bind_socket(tmp_path / "run" / "audit.sock")
    assert stat.S_IMODE((tmp_path / "run" / "audit.sock").stat().st_mode) == 0o666
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.connect(str(tmp_path / "run" / "audit.sock"))
    accepted, _ = listener.accept()
    with client, accepted, listener:
        assert peer_credentials(accepted) == (os.getpid(), os.getuid(), os.getgid())
    assert check_peer(os.getpid(), os.getuid(), {os.getpid(): ME}.get) == ME
    assert check_peer(os.getpid(), os.getuid() + 1, {os.getpid(): ME}.get) is None  # the uid is not the instance's
    assert check_peer(os.getpid() + 1, os.getuid(), {os.getpid(): ME}.get) is None  # not an instance's process


async def test_a_process_that_is_not_the_instance_it_claims_is_refused(bridge: Any, tmp_path: Path) -> None:
    # This process is "alice's instance" only with a uid it does not have: the kernel's uid wins.
    wrong_uid = Identity(
        instance="ucim/alice", ucloud_user="alice", local_user="alice", uid=os.getuid() + 1101, pid=os.getpid()
    )
    path = bridge({os.getpid(): wrong_uid}.get)
    refused = sample("ucim_audit_refused_connections_total")
    sender = audit.AuditSender(path)
    sender.send({"action": "files.trash", "result": "ok", "status": 200, "uid": os.getuid() + 1101})
    for _ in range(100):
        if sample("ucim_audit_refused_connections_total") > refused:
            break
        await asyncio.sleep(0.01)
    assert sample("ucim_audit_refused_connections_total") == refused + 1
    sender.close()
    assert lines(tmp_path / "audit.log") == []


async def test_a_forged_uid_in_a_record_is_never_written(bridge: Any, tmp_path: Path) -> None:
    path = bridge({os.getpid(): ME}.get)
    sender = audit.AuditSender(path)
    sender.send({"action": "files.trash", "result": "ok", "status": 200, "uid": 0, "local_user": "root"})
    sender.send({"action": "files.browse", "result": "ok", "status": 200, "targets": ["/5"]})
    written = await settle(tmp_path / "audit.log", 2)
    sender.close()
    assert [line["action"] for line in written] == ["audit.malformed", "files.browse"]
    assert all(line["uid"] == os.getuid() and line["local_user"] == "alice" for line in written)
    assert "uid" in written[0]["why"]


def test_a_missing_socket_drops_records_without_waiting_and_counts_them(tmp_path: Path) -> None:
    clock = [0.0]
    sender = audit.AuditSender(tmp_path / "nowhere.sock", clock=lambda: clock[0])
    dropped = REGISTRY.get_sample_value("ucim_instance_audit_records_total", {"outcome": "unavailable"}) or 0.0
    for _ in range(3):
        sender.send({"action": "a", "result": "ok", "status": 200})
    assert REGISTRY.get_sample_value("ucim_instance_audit_records_total", {"outcome": "unavailable"}) == dropped + 3


def test_a_full_socket_drops_records_without_blocking(tmp_path: Path) -> None:
    listener = bind_socket(tmp_path / "run" / "audit.sock")  # nobody reads it
    sender = audit.AuditSender(tmp_path / "run" / "audit.sock")
    before = REGISTRY.get_sample_value("ucim_instance_audit_records_total", {"outcome": "full"}) or 0.0
    record = {"action": "a", "result": "ok", "status": 200, "why": "x" * 400}
    for _ in range(5000):  # far more than a socket buffer holds
        sender.send(record)
    assert (REGISTRY.get_sample_value("ucim_instance_audit_records_total", {"outcome": "full"}) or 0.0) > before
    sender.close()
    listener.close()


# --- the instance's records ----------------------------------------------------------------------


async def test_each_instance_request_is_one_record_with_its_targets_result_and_request_id(
    bridge: Any, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    path = bridge({os.getpid(): ME}.get)
    home = tmp_path / "home"
    (home / "Trash").mkdir(parents=True)
    settings = SidecarSettings(user=getpass.getuser(), home=home, audit_socket=path)
    client = await aiohttp_client(init_app(settings))
    drive = {"id": "5", "providerGeneratedId": f"home:{getpass.getuser()}"}

    def items(*found: dict[str, Any]) -> dict[str, Any]:
        return {"items": [{"resolvedCollection": drive, **item} for item in found]}

    made = await client.post(
        "/files/folder", json=items({"id": "/5/made", "conflictPolicy": "REJECT"}), headers={HEADER: "r-1"}
    )
    assert made.status == 200
    again = await client.post(
        "/files/folder", json=items({"id": "/5/made", "conflictPolicy": "REJECT"}), headers={HEADER: "r 2"}
    )
    assert again.status == 409
    await client.get("/healthz")
    moved = items({"oldId": "/5/made", "newId": "/5/moved", "conflictPolicy": "REJECT"})
    moved["items"][0] |= {"resolvedOldCollection": drive, "resolvedNewCollection": drive}
    assert (await client.post("/files/move", json=moved)).status == 200
    assert (await client.post("/jobs/cancel", data=b"not json")).status == 400

    written = await settle(tmp_path / "audit.log", 4)
    assert [(line["action"], line["status"], line["result"]) for line in written] == [
        ("files.create_folder", 200, "ok"),
        ("files.create_folder", 409, "error"),
        ("files.move", 200, "ok"),
        ("jobs.cancel", 400, "error"),
    ]
    assert written[0]["targets"] == ["/5/made", f"drive:home:{getpass.getuser()}"]
    assert written[0]["request_id"] == "r-1"
    assert "request_id" not in written[1]  # "r 2" is no request id: never written as sent
    assert "already exists" in written[1]["why"] or "exists" in written[1]["why"]
    assert written[0]["paths"] == [str(home / "made")]
    assert written[2]["targets"] == ["/5/made", "/5/moved", f"drive:home:{getpass.getuser()}"]
    assert written[2]["paths"] == [str(home / "made"), str(home / "moved")]
    assert "JSON" in written[3]["why"]
    assert all(line["local_user"] == "alice" and line["uid"] == os.getuid() for line in written)


async def test_a_submit_is_recorded_with_the_job(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    app = init_app(SidecarSettings(user=getpass.getuser(), home=tmp_path))
    app[audit.SENDER].send = sent.append  # type: ignore[method-assign,assignment]
    client = await aiohttp_client(app)
    answer = await client.post("/jobs/submit", json={"jobId": "4711"})
    assert answer.status == 400
    assert sent == [
        {
            "action": "jobs.submit",
            "targets": ["job:4711"],
            "result": "error",
            "status": 400,
            "request_id": None,
            "why": sent[0]["why"],
        }
    ]


async def test_a_route_without_an_action_is_still_recorded(aiohttp_client: AiohttpClient) -> None:
    sent: list[dict[str, Any]] = []
    app = web.Application(middlewares=[audit.audit_actions])
    audit.setup_audit(app, None)
    app[audit.SENDER].send = sent.append  # type: ignore[method-assign,assignment]

    async def extend(_: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_post("/jobs/extend", extend)
    client = await aiohttp_client(app)
    assert (await client.post("/jobs/extend", json={})).status == 200
    assert [entry["action"] for entry in sent] == ["POST /jobs/extend"]


def test_a_socket_folder_the_instances_cannot_search_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "private").mkdir(mode=0o750)
    with pytest.raises(ValueError, match="searchable"):
        bind_socket(tmp_path / "private" / "audit.sock")


async def test_records_dropped_while_the_bridge_was_away_show_as_a_gap(bridge: Any, tmp_path: Path) -> None:
    clock = [0.0]
    sender = audit.AuditSender(tmp_path / "run" / "audit.sock", clock=lambda: clock[0])
    for _ in range(3):
        sender.send({"action": "files.browse", "result": "ok", "status": 200})  # no bridge yet: dropped
    bridge({os.getpid(): ME}.get)
    clock[0] += audit.RECONNECT_SECONDS
    lost = REGISTRY.get_sample_value("ucim_audit_records_total", {"outcome": "lost"}) or 0.0
    sender.send({"action": "files.trash", "result": "ok", "status": 200})
    sender.send({"action": "files.delete", "result": "ok", "status": 200})
    written = await settle(tmp_path / "audit.log", 2)
    sender.close()
    assert [(line["action"], line.get("dropped_before")) for line in written] == [
        ("files.trash", 3),
        ("files.delete", None),
    ]
    assert REGISTRY.get_sample_value("ucim_audit_records_total", {"outcome": "lost"}) == lost + 3


def test_a_site_may_give_the_file_to_a_group_that_reads_it(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o666)  # an existing file gets the setting's mode too
    AuditLog.open(AuditSettings(path=path, file_mode=0o640, group=group)).close()
    assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_gid) == (0o640, os.getgid())
    for wrong in (0o644, 0o604, 0o400, 0o660):
        with pytest.raises(ValueError, match="within 0640"):
            AuditSettings(file_mode=wrong)


async def test_what_the_instance_runs_never_inherits_its_audit_connection(bridge: Any) -> None:
    sender = audit.AuditSender(bridge({os.getpid(): ME}.get))
    sender.send({"action": "a", "result": "ok", "status": 200})
    assert sender._socket is not None
    assert not sender._socket.get_inheritable()
    sender.close()


def test_a_walltime_extension_the_bridge_answered_is_a_line_for_the_jobs_owner(tmp_path: Path) -> None:
    """The bridge applies extensions itself (as root): it writes their line, naming the owner's account."""

    class Manager:
        def identity_for(self, ucloud_username: str) -> Identity | None:
            return ME if ucloud_username == ME.ucloud_user else None

    path = tmp_path / "audit.log"
    log = AuditLog.open(AuditSettings(path=path))
    record = audited_extensions(log, Manager())  # type: ignore[arg-type]
    job = sample_job(asked=[extension("e1", 10, 15)])
    asked = TimeExtension.model_validate(extension("e1", 10, 15))
    record(job, asked, "Applied", "Time limit extended by 10 minutes to 15 minutes")
    record(job, asked, "Refused", "beyond the partition's MaxTime")
    log.close()
    applied, refused = lines(path)
    assert applied["ucloud_user"] == ME.ucloud_user and applied["uid"] == ME.uid and applied["action"] == "jobs.extend"
    assert applied["targets"] == [f"job:{job.spec.job_id}", "slurm:42"] and applied["result"] == "ok"
    assert applied["minutes"] == 10 and "why" not in applied
    assert (refused["result"], refused["status"], refused["why"]) == ("error", 400, "beyond the partition's MaxTime")

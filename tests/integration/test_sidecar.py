"""The real user instance, forked as real users, submitting to the real Slurm."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.instance_support import SIDECAR, Spawner, fork_server, session_for
from tests.support.platform import Platform
from ucim.slurm_bridge.spawner import uss_bytes
from ucim.testing.core_standin import instance_application

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

HOSTILE = '\'; touch /tmp/pwned; echo "$(id)" `id`'
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spawner(platform: Platform) -> AsyncIterator[Spawner]:
    async with fork_server(platform, SIDECAR) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def alice(spawner: Spawner) -> str:
    return (await spawner.spawn("alice"))[1]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bob(spawner: Spawner) -> str:
    return (await spawner.spawn("bob"))[1]


def job(app: str = "run-command", partition: str = "normal", **parameters: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    kinds = {str: "text", int: "integer", bool: "boolean", float: "floating_point"}
    return {
        "jobId": f"it-{tag}",
        "slurmJobName": f"ucloud-it-{tag}",
        "application": instance_application(app),
        "parameters": {k: {"type": kinds[type(v)], "value": v} for k, v in parameters.items()},
        "product": {"id": "cpu-1", "category": "cpu"},
        "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 100, "timeLimitMinutes": 5},
        "slurm": {"partition": partition},
    }


async def post(path: str, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session_for(path) as session, session.post(route, json=body) as response:
        return response.status, await response.json()


def slurm(platform: Platform, *args: str) -> str:
    return subprocess.run(
        list(args), env=platform.process_env(), capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def wait_finished(platform: Platform, job_id: int, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while True:
        state = slurm(platform, "squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T")
        if state in FINAL:
            return state
        assert time.monotonic() < deadline, f"job {job_id} did not finish (state {state!r})"
        time.sleep(0.3)


async def test_submit_runs_a_real_job_as_alice_in_her_job_folder(alice: str, platform: Platform) -> None:
    body = job(command='id -un; id -g; pwd; echo "$UCLOUD_JOB_ID"')
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 200, answer
    folder = Path(f"/home/alice/ucloud-jobs/{body['jobId']}")
    assert answer == {
        "slurmJobId": answer["slurmJobId"],
        "jobFolder": str(folder),
        "folderInDrive": f"ucloud-jobs/{body['jobId']}",
        "alreadySubmitted": False,
        "interfaces": [],
    }
    fields = slurm(platform, "squeue", "-h", "-t", "all", "-j", str(answer["slurmJobId"]), "-o", "%u|%j|%k")
    assert fields == f"alice|{body['slurmJobName']}|UCloud job"
    assert wait_finished(platform, answer["slurmJobId"]) == "COMPLETED"
    output = folder / "stdout.txt"
    assert output.read_text().split() == ["alice", "1101", str(folder), body["jobId"]]
    assert output.stat().st_uid == 1101
    assert (folder.stat().st_mode & 0o777) == 0o770
    assert (folder / "job.sbatch").stat().st_uid == 1101


async def test_shell_metacharacters_reach_bash_verbatim_and_run_nothing_else(alice: str, platform: Platform) -> None:
    Path("/tmp/pwned").unlink(missing_ok=True)
    # bash -c gets exactly the text: a quoted here-document prints it back, byte for byte.
    echo_back = job(command=f"cat <<'UCIM_END'\n{HOSTILE}\nUCIM_END")
    as_is = job(command=HOSTILE)
    ids = []
    for body in (echo_back, as_is):
        status, answer = await post(alice, "/jobs/submit", body)
        assert status == 200, answer
        ids.append(answer["slurmJobId"])
    for job_id in ids:
        wait_finished(platform, job_id)
    folder = Path("/home/alice/ucloud-jobs")
    assert (folder / echo_back["jobId"] / "stdout.txt").read_text() == HOSTILE + "\n"
    # The text as a command is one unterminated quote to bash: a syntax error, nothing runs.
    assert (folder / as_is["jobId"] / "stdout.txt").read_text() == ""
    assert "unexpected EOF" in (folder / as_is["jobId"] / "stderr.txt").read_text()
    assert not Path("/tmp/pwned").exists()


async def test_the_same_job_name_twice_is_one_slurm_job(alice: str, platform: Platform) -> None:
    body = job("sleep-exit", seconds=1)
    first, second = await asyncio.gather(post(alice, "/jobs/submit", body), post(alice, "/jobs/submit", body))
    third = await post(alice, "/jobs/submit", body)
    answers = [first[1], second[1], third[1]]
    assert {a["slurmJobId"] for a in answers} == {first[1]["slurmJobId"]}
    assert sorted(a["alreadySubmitted"] for a in answers) == [False, True, True]
    named = slurm(platform, "squeue", "-h", "-t", "all", "-u", "alice", "-n", body["slurmJobName"], "-o", "%A")
    assert named.split() == [str(first[1]["slurmJobId"])]


async def slurm_calls(path: str) -> Counter[str]:
    """How many Slurm commands the instance has run so far, by tool (from its own /metrics)."""
    async with session_for(path) as session, session.get("/metrics") as response:
        text = await response.text()
    calls: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ucim_slurm_command_seconds_count":
                calls[sample.labels["command"]] += int(sample.value)
    return calls


async def test_a_first_submission_runs_sbatch_alone_and_a_retry_reads_the_record(
    alice: str, platform: Platform
) -> None:
    body = job("sleep-exit", seconds=0)
    before = await slurm_calls(alice)
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 200, answer
    # No job folder yet: nothing was ever submitted for this job, so only sbatch runs.
    assert await slurm_calls(alice) - before == Counter({"sbatch": 1})
    record = Path(answer["jobFolder"]) / ".slurm-job-id"
    assert record.read_text() == f"slurm_job_id={answer['slurmJobId']}\nslurm_job_name={body['slurmJobName']}\n"
    assert record.stat().st_uid == 1101
    # The retry is answered from the record, without asking Slurm.
    before = await slurm_calls(alice)
    status, again = await post(alice, "/jobs/submit", body)
    assert (status, again) == (200, {**answer, "alreadySubmitted": True})
    assert await slurm_calls(alice) - before == Counter()


async def test_a_folder_without_its_record_asks_slurm_by_name(alice: str, platform: Platform) -> None:
    # The instance died between sbatch and the record: the job exists in Slurm, the record does not.
    body = job("sleep-exit", seconds=0)
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 200, answer
    record = Path(answer["jobFolder"]) / ".slurm-job-id"
    record.unlink()
    before = await slurm_calls(alice)
    status, again = await post(alice, "/jobs/submit", body)
    assert (status, again) == (200, {**answer, "alreadySubmitted": True})
    calls = await slurm_calls(alice) - before
    assert calls["squeue"] == 1 and calls["sbatch"] == 0, calls
    assert record.read_text().startswith(f"slurm_job_id={answer['slurmJobId']}\n"), "recorded again"
    named = slurm(platform, "squeue", "-h", "-t", "all", "-u", "alice", "-n", body["slurmJobName"], "-o", "%A")
    assert named.split() == [str(answer["slurmJobId"])]


async def test_a_folder_without_a_record_or_a_slurm_job_is_submitted(alice: str, platform: Platform) -> None:
    # An earlier attempt made the folder and stopped before sbatch (or the user made it): Slurm has no job.
    body = job("sleep-exit", seconds=0)
    folder = Path(f"/home/alice/ucloud-jobs/{body['jobId']}")
    platform.run_as("alice", "mkdir", "-p", str(folder))
    before = await slurm_calls(alice)
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 200, answer
    assert answer["alreadySubmitted"] is False
    calls = await slurm_calls(alice) - before
    assert calls["squeue"] == 1 and calls["sbatch"] == 1, calls
    assert (folder / ".slurm-job-id").exists()
    named = slurm(platform, "squeue", "-h", "-t", "all", "-u", "alice", "-n", body["slurmJobName"], "-o", "%A")
    assert named.split() == [str(answer["slurmJobId"])]


async def test_unknown_partition_is_a_readable_400_and_leaves_nothing_behind(alice: str) -> None:
    body = job(partition="nonexistent", command="true")
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 400
    assert answer["statusCode"] == 400
    assert "partition does not exist" in answer["why"]
    assert not Path(f"/home/alice/ucloud-jobs/{body['jobId']}").exists()


@pytest.mark.parametrize(
    ("parameters", "why"),
    [
        ({"command": "a\x00b"}, "NUL"),
        ({"command": 5}, "takes a value of type text, not integer"),
        ({}, "is required"),
    ],
)
async def test_bad_parameters_are_refused_before_anything_is_written(
    alice: str, parameters: dict[str, Any], why: str
) -> None:
    body = job(**parameters)
    status, answer = await post(alice, "/jobs/submit", body)
    assert status == 400
    assert why in answer["why"]
    assert not Path(f"/home/alice/ucloud-jobs/{body['jobId']}").exists()


async def test_cancel_is_the_users_own_scancel(alice: str, bob: str, platform: Platform) -> None:
    status, answer = await post(alice, "/jobs/submit", job("sleep-exit", seconds=300))
    assert status == 200, answer
    job_id = answer["slurmJobId"]
    status, refused = await post(bob, "/jobs/cancel", {"slurmJobIds": [job_id]})
    assert status == 400
    assert "denied" in refused["why"].lower() or "permission" in refused["why"].lower()
    assert (await post(alice, "/jobs/cancel", {"slurmJobIds": [job_id]}))[0] == 200
    assert wait_finished(platform, job_id) == "CANCELLED"
    # Cancelling again, or a job that ended, is not an error.
    assert (await post(alice, "/jobs/cancel", {"slurmJobIds": [job_id]}))[0] == 200


async def test_submissions_are_counted_in_the_instance_metrics(alice: str) -> None:
    async with session_for(alice) as session, session.get("/metrics") as response:
        text = await response.text()
    assert 'ucim_submissions_total{result="submitted"}' in text
    assert 'ucim_submissions_total{result="rejected"}' in text


async def test_instances_start_fast_and_stay_small(spawner: Spawner) -> None:
    took, children = [], []
    for _ in range(10):
        started = time.perf_counter()
        pid, path = await spawner.spawn("alice")
        async with session_for(path) as session, session.get("/healthz") as response:
            assert response.status == 200
        took.append(time.perf_counter() - started)
        children.append(pid)
    await asyncio.sleep(0.5)
    uss = [uss_bytes(pid) for pid in children]
    assert statistics.median(took) < 0.15, took
    assert max(uss) < 8 * 1024 * 1024, uss
    for pid in children:
        await spawner.server.stop(pid)


async def test_no_module_was_imported_after_a_fork(spawner: Spawner) -> None:
    # Last in this module: every route above ran in children that cannot read site-packages.
    log = spawner.log.read_text()
    assert "instance started" in log
    assert "imported after the fork" not in log
    assert '"severity": "error"' not in log and '"severity": "critical"' not in log

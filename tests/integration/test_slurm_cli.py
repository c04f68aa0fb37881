"""ucim.common.slurm against the real Slurm of the local platform.

The user-side operations (submit, cancel, find) run in a process that *is* alice: a worker
forked from this test process that dropped to alice's uid, gid and groups, exactly as a user
instance will (no ``runuser`` wrapper in the command, no root anywhere). The bridge-side poll
runs as root, as the bridge does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ucim.common.protocol import JobState
from ucim.common.slurm import SlurmClient, SlurmConfig
from ucim.common.slurm_errors import SlurmError, SlurmRejectedError
from ucim.common.slurm_parsing import SlurmJobInfo, minutes_to_slurm_time
from ucim.testing.stack import read_platform_env

pytestmark = pytest.mark.integration

PLATFORM_ENV = Path(os.environ.get("UCIM_RUN_DIR", "/var/tmp/ucim-platform")) / "platform.env"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


# --------------------------------------------------------------------------- running as a user


def _become(user: str) -> None:
    """Pool initializer: drop this (forked) worker to ``user`` for good."""
    pw = pwd.getpwnam(user)
    os.setgroups(os.getgrouplist(user, pw.pw_gid))
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    os.chdir(pw.pw_dir)


def _call(config: SlurmConfig, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs in the worker: one SlurmClient call, in a fresh event loop."""

    async def go() -> Any:
        assert os.geteuid() != 0, "the worker must not be root"
        return await getattr(SlurmClient(config), method)(*args, **kwargs)

    return asyncio.run(go())


class AsUser:
    """SlurmClient calls made by a process running as a local user."""

    def __init__(self, user: str, slurm_conf: Path) -> None:
        pw = pwd.getpwnam(user)
        self.user = user
        self.home = Path(pw.pw_dir)
        self.config = SlurmConfig(
            slurm_conf=slurm_conf,
            env={"PATH": BASE_PATH, "HOME": pw.pw_dir, "USER": user, "LOGNAME": user},
            timeout_seconds=60,
        )
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("fork"), initializer=_become, initargs=(user,)
        )

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._pool.submit(_call, self.config, method, args, kwargs).result(timeout=120)

        return call

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def slurm_conf() -> Path:
    """SLURM_CONF of the running platform; skip the module if Slurm is not up."""
    if not PLATFORM_ENV.exists():
        pytest.skip(f"the local platform is not up ({PLATFORM_ENV} missing): python3 hack/local_platform.py up")
    values = read_platform_env(PLATFORM_ENV.parent)
    conf = Path(values.get("SLURM_CONF", ""))
    ping = subprocess.run(
        ["scontrol", "ping"],
        env={"PATH": BASE_PATH, "SLURM_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.skip(f"slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}): platform down?")
    return conf


@pytest.fixture(scope="module")
def alice(slurm_conf: Path) -> Iterator[AsUser]:
    as_alice = AsUser("alice", slurm_conf)
    yield as_alice
    as_alice.close()


@pytest.fixture(scope="module")
def bob(slurm_conf: Path) -> Iterator[AsUser]:
    as_bob = AsUser("bob", slurm_conf)
    yield as_bob
    as_bob.close()


@pytest.fixture(scope="module")
def bridge(slurm_conf: Path) -> SlurmClient:
    """The bridge's client: root, polling everybody's jobs."""
    return SlurmClient(SlurmConfig(slurm_conf=slurm_conf, env={"PATH": BASE_PATH}, timeout_seconds=60))


@pytest.fixture
def workdir(alice: AsUser) -> Iterator[Path]:
    """A job folder owned by alice (0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ucim-slurm-it-"))
    pw = pwd.getpwnam(alice.user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def submitted(bridge: SlurmClient) -> Iterator[list[int]]:
    """Job ids a test submitted; whatever is left is cancelled (by root) at the end."""
    ids: list[int] = []
    yield ids
    if ids:
        asyncio.run(bridge.cancel(ids))


# --------------------------------------------------------------------------- helpers


def job_name() -> str:
    return f"ucim-it-{uuid.uuid4().hex[:10]}"


def write_script(workdir: Path, body: str, *directives: str) -> Path:
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "#SBATCH --output=stdout.txt", body, ""]
    script = workdir / "job.sbatch"
    script.write_text("\n".join(lines))
    script.chmod(0o644)
    return script


def watch(
    poll: Callable[[], dict[int, SlurmJobInfo]],
    job_id: int,
    until: Callable[[SlurmJobInfo], bool],
    timeout: float = 60,
) -> list[SlurmJobInfo]:
    """Poll every 0.2 s until ``until`` holds; every distinct observation, in order."""
    seen: list[SlurmJobInfo] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = poll().get(job_id)
        if info is not None and (not seen or seen[-1].state != info.state):
            seen.append(info)
        if info is not None and until(info):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there; seen {[s.state for s in seen]}")


# --------------------------------------------------------------------------- tests


def test_job_goes_through_pending_running_completed(
    alice: AsUser, bridge: SlurmClient, workdir: Path, submitted: list[int]
) -> None:
    # Slurm starts a job at submission when it can; a dependency on a short first job makes
    # the second one pend for a moment, and the first one's end makes it start at once.
    before = datetime.now(UTC) - timedelta(seconds=2)
    first = alice.submit(write_script(workdir, "sleep 2", f"--job-name={job_name()}"), cwd=workdir)
    submitted.append(first)
    name = job_name()
    script = write_script(
        workdir,
        'sleep 1\necho "var=$UCIM_IT_VAR"',
        f"--job-name={name}",
        f"--time={minutes_to_slurm_time(2)}",
        f"--dependency=afterok:{first}",
    )
    job_id = alice.submit(script, cwd=workdir, env={"UCIM_IT_VAR": "passed through"})
    submitted.append(job_id)

    seen = watch(lambda: alice.poll([job_id]), job_id, lambda i: i.is_finished)
    states = [i.state for i in seen]
    assert states[0] == "PENDING"
    assert "RUNNING" in states
    assert states[-1] == "COMPLETED"
    assert seen[0].ucloud_state() == (JobState.IN_QUEUE, "pending (Dependency)")
    assert seen[0].start_time is None and seen[0].node_list is None

    done = seen[-1]
    assert done.ucloud_state() == (JobState.SUCCESS, "completed")
    assert (done.exit_code, done.signal) == (0, 0)
    assert done.node_list == "localhost"
    assert done.name == name and done.user == "alice"
    assert done.time_limit == timedelta(minutes=2)
    assert done.submit_time is not None and done.start_time is not None and done.end_time is not None
    assert before <= done.submit_time <= done.start_time <= done.end_time <= datetime.now(UTC)
    # The job ran as alice, in its folder, with the environment given to submit().
    out = workdir / "stdout.txt"
    assert out.read_text().strip() == "var=passed through"
    assert out.stat().st_uid == pwd.getpwnam("alice").pw_uid

    # The bridge (root) sees the same job in its own single query.
    assert asyncio.run(bridge.poll([job_id]))[job_id].state == "COMPLETED"


def test_job_exiting_3_is_a_failure(alice: AsUser, bridge: SlurmClient, workdir: Path, submitted: list[int]) -> None:
    script = write_script(workdir, "exit 3", f"--job-name={job_name()}")
    job_id = alice.submit(script, cwd=workdir)
    submitted.append(job_id)

    done = watch(lambda: asyncio.run(bridge.poll([job_id])), job_id, lambda i: i.is_finished)[-1]
    assert done.state == "FAILED"
    assert (done.exit_code, done.signal) == (3, 0)
    assert done.reason == "NonZeroExitCode"
    assert done.ucloud_state() == (JobState.FAILURE, "exited with code 3")

    # The accounting fallback agrees (sacct sees a finished job within ~0.2 s).
    assert asyncio.run(bridge.has_accounting())
    deadline = time.monotonic() + 10
    while (acct := asyncio.run(bridge.poll_accounting([job_id])).get(job_id)) is None or not acct.is_finished:
        assert time.monotonic() < deadline, "sacct never showed the job"
        time.sleep(0.2)
    assert (acct.state, acct.exit_code, acct.signal) == ("FAILED", 3, 0)


def test_invalid_partition_is_a_readable_rejection(alice: AsUser, workdir: Path) -> None:
    script = write_script(workdir, "true", f"--job-name={job_name()}", "--partition=nope")
    with pytest.raises(SlurmRejectedError) as caught:
        alice.submit(script, cwd=workdir)
    err = caught.value
    assert err.message == "The requested partition does not exist on this cluster"
    assert err.detail.startswith("invalid partition specified: nope")
    assert "sbatch: error" not in str(err)
    assert err.returncode == 1


def test_cancel_is_reported_as_success(
    alice: AsUser, bob: AsUser, bridge: SlurmClient, workdir: Path, submitted: list[int]
) -> None:
    script = write_script(workdir, "sleep 120", f"--job-name={job_name()}")
    job_id = alice.submit(script, cwd=workdir)
    submitted.append(job_id)
    watch(lambda: alice.poll([job_id]), job_id, lambda i: i.state == "RUNNING")

    # Another user may not cancel it: the OS identity is the authorization.
    with pytest.raises(SlurmError, match="permission denied"):
        bob.cancel([job_id])

    alice.cancel([job_id])
    done = watch(lambda: asyncio.run(bridge.poll([job_id])), job_id, lambda i: i.is_finished)[-1]
    assert done.state == "CANCELLED"
    assert done.ucloud_state() == (JobState.SUCCESS, "cancelled")
    assert done.start_time is not None and done.end_time is not None
    # Cancelling again (and an id Slurm never had) is no error.
    alice.cancel([job_id, 2_000_000_000])


def test_find_jobs_by_name(alice: AsUser, bob: AsUser, workdir: Path, submitted: list[int]) -> None:
    name = job_name()
    assert alice.find_jobs_by_name(name) == []
    script = write_script(workdir, "true", f"--job-name={name}", "--hold")
    job_id = alice.submit(script, cwd=workdir)
    submitted.append(job_id)
    # A retry after a crash finds the job instead of submitting another.
    assert alice.find_jobs_by_name(name) == [job_id]
    assert bob.find_jobs_by_name(name) == []
    alice.cancel([job_id])
    # Still found once it has ended (squeue keeps it for MinJobAge, sacct after that).
    assert alice.find_jobs_by_name(name) == [job_id]


def test_poll_is_one_query_for_known_and_forgotten_jobs(
    alice: AsUser, bridge: SlurmClient, workdir: Path, submitted: list[int]
) -> None:
    ids = []
    for _ in range(3):
        ids.append(alice.submit(write_script(workdir, "true", f"--job-name={job_name()}", "--hold"), cwd=workdir))
    submitted.extend(ids)
    unknown = [2_000_000_001, 2_000_000_002]
    result = asyncio.run(bridge.poll([*ids, *unknown]))
    assert sorted(result) == sorted(ids)
    assert {i.state for i in result.values()} == {"PENDING"}
    assert {i.reason for i in result.values()} == {"JobHeldUser"}
    assert result[ids[0]].ucloud_state() == (JobState.IN_QUEUE, "pending (JobHeldUser)")
    # One id Slurm does not know: squeue fails on that, poll reports it missing.
    assert asyncio.run(bridge.poll(unknown[:1])) == {}
    assert asyncio.run(bridge.poll_accounting(unknown)) == {}


def test_without_accounting_sacct_is_skipped(slurm_conf: Path, tmp_path: Path) -> None:
    # The same cluster, seen through a slurm.conf without accounting storage: sacct checks
    # that locally ("Slurm accounting storage is disabled"), squeue still reaches slurmctld.
    conf = tmp_path / "slurm.conf"
    lines = [
        "AccountingStorageType=accounting_storage/none" if line.startswith("AccountingStorageType=") else line
        for line in slurm_conf.read_text().splitlines()
        if not line.startswith(("AccountingStorageHost=", "AccountingStoragePort="))
    ]
    conf.write_text("\n".join(lines) + "\n")
    client = SlurmClient(SlurmConfig(slurm_conf=conf, env={"PATH": BASE_PATH}, user="alice"))

    async def scenario() -> None:
        assert await client.has_accounting() is False
        assert await client.poll_accounting([1, 2]) == {}
        assert await client.find_jobs_by_name(job_name()) == []

    asyncio.run(scenario())

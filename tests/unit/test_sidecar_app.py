"""The instance API through the real app factory, with Slurm replaced by a recording stand-in."""

from __future__ import annotations

import asyncio
import getpass
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient

from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmRejectedError, SlurmUnavailableError
from ucim.user_sidecar import jobs
from ucim.user_sidecar.app import init_app
from ucim.user_sidecar.keys import SUBMITTER
from ucim.user_sidecar.load_instructions import SiteApplications
from ucim.user_sidecar.paths import DriveResolver, PathRefusedError
from ucim.user_sidecar.settings import SidecarSettings

# sleep-exit as Core sends it (the stand-in's library, ucim/testing/apps/sleep-exit.yaml), as the gateway keeps it.
SLEEP_EXIT = {
    "name": "sleep-exit",
    "version": "1",
    "invocation": [{"type": "jinja", "template": "sleep {{ seconds }}\nexit {{ exitCode }}\n"}],
    "parameters": [
        {"type": "integer", "name": "seconds", "optional": True, "defaultValue": 1},
        {"type": "integer", "name": "exitCode", "optional": True, "defaultValue": 0},
    ],
}


class FakeSlurm(SlurmClient):
    """Remembers jobs by name as Slurm would; can be told to refuse or to be away."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, int] = {}
        self.lookups: list[str] = []
        self.scripts: list[str] = []
        self.cancelled: list[int] = []
        self.refuse: str | None = None
        self.away = False

    async def find_jobs_by_name(self, name: str, *, user: str | None = None) -> list[int]:
        self.lookups.append(name)
        return [self.jobs[name]] if name in self.jobs else []

    async def submit(self, script_path: Path, *, cwd: Path, env: Mapping[str, str] | None = None) -> int:
        if self.away:
            raise SlurmUnavailableError("Slurm is not reachable right now")
        if self.refuse:
            raise SlurmRejectedError(self.refuse)
        text = script_path.read_text()
        self.scripts.append(text)
        name = next(line.split()[2].strip("'") for line in text.splitlines() if line.startswith("#SBATCH --job-name "))
        self.jobs[name] = 1000 + len(self.jobs)
        return self.jobs[name]

    async def cancel(self, job_ids: Iterable[int]) -> None:
        self.cancelled.extend(job_ids)


@pytest.fixture
async def instance(aiohttp_client: AiohttpClient, tmp_path: Path) -> tuple[Any, FakeSlurm, Path]:
    """An instance whose home is ``tmp_path``; project drives are ``tmp_path/projects/<group>``."""
    roots = {"project": str(tmp_path / "projects" / "{name}")}
    settings = SidecarSettings(user=getpass.getuser(), home=tmp_path, drive_roots=roots)
    app = init_app(settings)
    slurm = FakeSlurm()
    app[SUBMITTER].slurm = slurm
    return await aiohttp_client(app), slurm, tmp_path


def body(job_id: str = "4711", **overrides: Any) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "slurmJobName": f"ucloud-{job_id}-abc",
        "application": SLEEP_EXIT,
        "parameters": {"seconds": {"type": "integer", "value": 2}},
        "product": {"id": "cpu-1", "category": "cpu"},
        "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 100},
        "slurm": {"partition": "normal"},
        **overrides,
    }


def submissions(result: str) -> float:
    return REGISTRY.get_sample_value("ucim_submissions_total", {"result": result}) or 0.0


async def test_submit_writes_the_script_into_the_job_folder(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, home = instance
    response = await client.post("/jobs/submit", json=body())
    assert response.status == 200
    folder = home / "ucloud-jobs" / "4711"
    assert await response.json() == {
        "slurmJobId": 1000, "jobFolder": str(folder), "folderInDrive": "ucloud-jobs/4711", "alreadySubmitted": False,
        "interfaces": [],
    }  # fmt: skip
    assert (folder / "job.sbatch").read_text() == slurm.scripts[0]
    assert (folder.stat().st_mode & 0o777) == 0o770
    # The script, and beside it the template and its context, as the anchor writes them; no temporary file.
    written = sorted(p.name for p in folder.iterdir())
    assert written == [".slurm-job-id", "job.sbatch", "job_template.j2", "job_template_params.yml"]
    assert (folder / "job_template.j2").read_text() == "sleep {{ seconds }}\nexit {{ exitCode }}\n"
    assert (folder / ".slurm-job-id").read_text() == "slurm_job_id=1000\nslurm_job_name=ucloud-4711-abc\n"
    # No folder: never submitted from here, so sbatch runs without asking Slurm first.
    assert slurm.lookups == []


async def test_submit_twice_answers_with_the_first_job(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, _ = instance
    before = submissions("already_submitted")
    first = await (await client.post("/jobs/submit", json=body())).json()
    second = await (await client.post("/jobs/submit", json=body())).json()
    assert second == {**first, "alreadySubmitted": True}
    assert len(slurm.scripts) == 1
    assert submissions("already_submitted") == before + 1
    # The folder's record answered: Slurm was not asked.
    assert slurm.lookups == []


async def test_concurrent_submits_of_one_job_are_one_job(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, _ = instance
    answers = await asyncio.gather(*(client.post("/jobs/submit", json=body("31")) for _ in range(5)))
    results = [await answer.json() for answer in answers]
    assert {r["slurmJobId"] for r in results} == {1000}
    assert sorted(r["alreadySubmitted"] for r in results) == [False, True, True, True, True]
    assert (len(slurm.scripts), slurm.lookups) == (1, [])


async def test_a_folder_without_a_record_asks_slurm_and_finds_the_job(instance: tuple[Any, FakeSlurm, Path]) -> None:
    # The instance died between sbatch and the record: the folder and the Slurm job exist, the record does not.
    client, slurm, home = instance
    first = await (await client.post("/jobs/submit", json=body("21"))).json()
    folder = home / "ucloud-jobs" / "21"
    (folder / ".slurm-job-id").unlink()
    second = await (await client.post("/jobs/submit", json=body("21"))).json()
    assert second == {**first, "alreadySubmitted": True}
    assert slurm.lookups == ["ucloud-21-abc"]
    assert len(slurm.scripts) == 1
    # Found once, recorded again: the next retry is answered from the folder.
    assert (folder / ".slurm-job-id").exists()
    await client.post("/jobs/submit", json=body("21"))
    assert slurm.lookups == ["ucloud-21-abc"]


async def test_a_folder_without_a_record_and_no_job_in_slurm_is_submitted(
    instance: tuple[Any, FakeSlurm, Path],
) -> None:
    client, slurm, home = instance
    (home / "ucloud-jobs" / "22").mkdir(parents=True)
    (home / "ucloud-jobs" / "22" / "input.txt").write_text("mine")
    answer = await (await client.post("/jobs/submit", json=body("22"))).json()
    assert (answer["slurmJobId"], answer["alreadySubmitted"]) == (1000, False)
    assert slurm.lookups == ["ucloud-22-abc"]
    assert (home / "ucloud-jobs" / "22" / "input.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "record",
    [
        "slurm_job_id=77\nslurm_job_name=ucim-another-object\n",  # an earlier UCloudJob with the same job id
        "slurm_job_id=\n",  # cut short
        "garbage",
        "slurm_job_id=٣\nslurm_job_name=ucloud-23-abc\n",  # a digit, but not an ASCII one
    ],
)
async def test_a_record_of_another_job_or_a_garbled_one_is_not_trusted(
    instance: tuple[Any, FakeSlurm, Path], record: str
) -> None:
    client, slurm, home = instance
    folder = home / "ucloud-jobs" / "23"
    folder.mkdir(parents=True)
    (folder / ".slurm-job-id").write_text(record)
    answer = await (await client.post("/jobs/submit", json=body("23"))).json()
    assert (answer["slurmJobId"], answer["alreadySubmitted"]) == (1000, False)
    assert slurm.lookups == ["ucloud-23-abc"]
    assert jobs.read_record(folder) == jobs.Record(1000, "ucloud-23-abc")


async def test_a_record_that_cannot_be_written_does_not_fail_the_submission(
    instance: tuple[Any, FakeSlurm, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, slurm, home = instance
    write = jobs._write_atomically

    def no_record(path: Path, text: str) -> None:
        if path.name == jobs.RECORD_NAME:
            raise OSError(28, "No space left on device")
        write(path, text)

    monkeypatch.setattr(jobs, "_write_atomically", no_record)
    answer = await (await client.post("/jobs/submit", json=body("24"))).json()
    assert (answer["slurmJobId"], answer["alreadySubmitted"]) == (1000, False)
    assert not (home / "ucloud-jobs" / "24" / ".slurm-job-id").exists()
    # The retry cannot use the record, so it asks Slurm, which knows the job.
    again = await (await client.post("/jobs/submit", json=body("24"))).json()
    assert (again["slurmJobId"], again["alreadySubmitted"]) == (1000, True)
    assert slurm.lookups == ["ucloud-24-abc"]


async def test_a_rejected_job_leaves_no_folder(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, home = instance
    slurm.refuse = "The requested partition does not exist on this cluster"
    response = await client.post("/jobs/submit", json=body("9"))
    assert response.status == 400
    assert await response.json() == {
        "statusCode": 400,
        "why": "The requested partition does not exist on this cluster",
        "errorCode": "",
        "detailedCode": 0,
    }
    assert not (home / "ucloud-jobs" / "9").exists()
    # The folder is gone again, so the retry is a first submission: no lookup.
    slurm.refuse = None
    assert (await client.post("/jobs/submit", json=body("9"))).status == 200
    assert slurm.lookups == []
    slurm.refuse = "The requested partition does not exist on this cluster"
    # A folder the user had already prepared stays, without the script.
    (home / "ucloud-jobs" / "10").mkdir(parents=True)
    (home / "ucloud-jobs" / "10" / "input.txt").write_text("mine")
    assert (await client.post("/jobs/submit", json=body("10"))).status == 400
    assert [p.name for p in (home / "ucloud-jobs" / "10").iterdir()] == ["input.txt"]


async def test_slurm_away_is_503_and_keeps_the_folder_for_the_retry(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, home = instance
    slurm.away = True
    response = await client.post("/jobs/submit", json=body("11"))
    assert response.status == 503
    assert "not reachable" in (await response.json())["why"]
    assert (home / "ucloud-jobs" / "11" / "job.sbatch").exists()
    assert not (home / "ucloud-jobs" / "11" / ".slurm-job-id").exists()
    slurm.away = False
    # sbatch may have created the job before Slurm went quiet: the retry asks Slurm before submitting.
    assert (await client.post("/jobs/submit", json=body("11"))).status == 200
    assert slurm.lookups == ["ucloud-11-abc"]


async def test_a_project_jobs_folder_is_in_the_project_drive_and_the_projects_group(
    instance: tuple[Any, FakeSlurm, Path],
) -> None:
    client, slurm, home = instance
    project = home / "projects" / "p1"
    project.mkdir(parents=True)
    project.chmod(0o2770)  # as the bridge makes it: the group's, setgid
    response = await client.post("/jobs/submit", json=body("41", drive="project:p1"))
    assert response.status == 200
    folder = project / "ucloud-jobs" / "41"
    assert (await response.json())["jobFolder"] == str(folder)
    assert (folder / "job.sbatch").read_text() == slurm.scripts[0]
    # The group may read and write both, and what the job writes there stays the project group's.
    assert [stat.S_IMODE(f.stat().st_mode) for f in (folder.parent, folder)] == [0o2770, 0o2770]
    assert not (home / "ucloud-jobs").exists()
    again = await (await client.post("/jobs/submit", json=body("41", drive="project:p1"))).json()
    assert (again["jobFolder"], again["alreadySubmitted"], slurm.lookups) == (str(folder), True, [])


@pytest.mark.parametrize(
    ("drive", "why"),
    [
        ("home:someone-else", "is the home of another user"),
        ("project:../etc", "is not a local user or group name"),
        ("scratch:p1", "is not a drive of this provider"),
    ],
)
async def test_a_drive_that_is_not_the_users_is_a_400(
    instance: tuple[Any, FakeSlurm, Path], drive: str, why: str
) -> None:
    client, slurm, home = instance
    response = await client.post("/jobs/submit", json=body("42", drive=drive))
    assert response.status == 400, "a 4xx the operator takes for final: the job fails with the reason"
    assert why in (await response.json())["why"]
    assert (slurm.scripts, list(home.iterdir())) == ([], [])


async def test_a_project_drive_the_bridge_has_not_made_is_a_503(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, home = instance
    response = await client.post("/jobs/submit", json=body("43", drive="project:p2"))
    assert response.status == 503, "not now: the operator retries"
    why = (await response.json())["why"]
    assert why == f"Cannot make the job folder {home}/projects/p2/ucloud-jobs/43: No such file or directory"
    assert slurm.scripts == []


def test_project_drives_need_their_root() -> None:
    drives = DriveResolver({"home": "~"}, "alice", Path("/home/alice"))
    submitter = jobs.Submitter(site=SiteApplications(), slurm=FakeSlurm(), drives=drives,
                               jobs_folder="ucloud-jobs")  # fmt: skip
    assert submitter.job_folder("7") == Path("/home/alice/ucloud-jobs/7")
    assert submitter.job_folder("7", "home:alice") == Path("/home/alice/ucloud-jobs/7")
    with pytest.raises(PathRefusedError, match="project drives are not configured"):
        submitter.job_folder("7", "project:p1")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "The body is not JSON"),
        (b"{}", "Invalid request: jobId: Field required"),
        (b'{"jobId": 1}', "jobId: Input should be a valid string"),
    ],
)
async def test_malformed_requests_are_readable_400s(
    instance: tuple[Any, FakeSlurm, Path], payload: bytes, why: str
) -> None:
    client, _, _ = instance
    response = await client.post("/jobs/submit", data=payload)
    assert response.status == 400
    assert why in (await response.json())["why"]


async def test_invalid_jobs_are_refused_before_anything_is_written(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, home = instance
    before = submissions("invalid")
    bad = body("12", parameters={"seconds": {"type": "text", "value": "2"}})
    response = await client.post("/jobs/submit", json=bad)
    assert response.status == 400
    assert "'seconds' takes a value of type integer, not text" in (await response.json())["why"]
    assert not (home / "ucloud-jobs").exists()
    assert slurm.scripts == []
    assert submissions("invalid") == before + 1


async def test_cancel_passes_the_ids_to_scancel(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, slurm, _ = instance
    response = await client.post("/jobs/cancel", json={"slurmJobIds": [5, 7]})
    assert (response.status, await response.json()) == (200, {})
    assert slurm.cancelled == [5, 7]
    assert (await client.post("/jobs/cancel", json={"slurmJobIds": []})).status == 400


async def test_health_and_metrics_and_unknown_routes(instance: tuple[Any, FakeSlurm, Path]) -> None:
    client, _, _ = instance
    assert (await client.get("/healthz")).status == 200
    assert "ucim_submissions_total" in await (await client.get("/metrics")).text()
    missing = await client.get("/nothing")
    assert (missing.status, (await missing.json())["statusCode"]) == (404, 404)


def test_the_app_is_built_by_its_factory() -> None:
    app = init_app(SidecarSettings(user=getpass.getuser(), home=Path("/nonexistent")))
    assert isinstance(app, web.Application)
    assert app[SUBMITTER].job_folder("1") == Path("/nonexistent/ucloud-jobs/1")


async def test_dynamic_parameters_of_malformed_load_instructions_are_a_400(
    instance: tuple[Any, FakeSlurm, Path],
) -> None:
    client, _, _ = instance
    tool = {
        "owner": "",
        "description": {
            "info": {"name": "x", "version": "1"},
            "loadInstructions": {"type": "Native", "applications": [{"name": "x"}]},
        },
    }
    application = {
        "metadata": {"name": "x", "version": "1"},
        "invocation": {"tool": {"name": "x", "version": "1", "tool": tool}},
    }
    response = await client.post("/jobs/dynamic-parameters", json={"owner": {"createdBy": "alice"},
                                                                    "application": application})  # fmt: skip
    assert response.status == 400
    assert "load instructions are malformed" in (await response.json())["why"]

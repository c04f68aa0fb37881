"""Core's application becomes the UCloudJob's: checked at creation, file parameters located, what core2 sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ucim.common.core_client import CoreRejectedError
from ucim.common.products import DEFAULT_MACHINE_TYPES
from ucim.common.protocol import BulkRequest, Drive, Job
from ucim.gateway.errors import ProviderError
from ucim.gateway.file_parameters import DriveLocators, drive_id_of, file_drive_ids
from ucim.gateway.jobs import to_ucloud_job

FIXTURES = Path(__file__).parent / "fixtures"


def core2_job(name: str = "core2_job_hello_py.json") -> Job:
    """A job exactly as the real core2 sent it to ucim (recorded; see fixtures/README.md)."""
    return BulkRequest[Job].model_validate(json.loads((FIXTURES / name).read_text())).items[0]


def convert(job: Job, drives: dict[str, str] | None = None) -> Any:
    return to_ucloud_job(
        job,
        namespace="ucim",
        cluster="local",
        provider_id="ucim",
        machines=list(DEFAULT_MACHINE_TYPES),
        drives={"4": "home:alice"} if drives is None else drives,
    )


def test_core2s_job_keeps_its_application_and_locates_its_input() -> None:
    spec = convert(core2_job()).spec
    app = spec.application
    assert (app.name, app.version, app.type) == ("hello-py", "3.11", "BATCH")
    assert [part.type for part in app.invocation] == ["jinja"]
    assert app.invocation[0].template.startswith("{- applicationLoad -}")
    assert [(p.type, p.name, p.optional, p.default_value) for p in app.parameters] == [
        ("input_file", "input", False, None),
        ("integer", "count", True, 3),
        ("boolean", "verbose", True, None),
    ]
    assert app.parameters[2].true_value == "true"
    assert [(ref.name, ref.version) for ref in app.load or []] == [("python", "3.11")]
    assert app.environment is None and app.sbatch is None  # core2 sends {} for both
    assert spec.parameters["input"].drive == "home:alice"
    assert spec.parameters["input"].path == "/4/data/in.csv"
    assert spec.resources.time_limit_minutes == 90


def test_without_a_time_allocation_the_tools_default_applies() -> None:
    # core2 sends "timeAllocation": null when the user gives none: the tool's default (1 h) applies (§7).
    job = core2_job()
    job.specification.time_allocation = None
    assert convert(job).spec.resources.time_limit_minutes == 60


def test_the_values_core2_injects_are_kept_for_the_script() -> None:
    spec = convert(core2_job("core2_job_hello_py_injected.json")).spec
    assert {"ucMetricSampleRate", "_injected_slurmAccount"} <= set(spec.parameters)


def test_a_job_without_its_application_is_refused() -> None:
    job = core2_job()
    job.status.resolved_application = None
    with pytest.raises(ProviderError, match="resolvedApplication") as refused:
        convert(job)
    assert refused.value.status == 400


def test_a_container_application_is_refused() -> None:
    job = core2_job()
    assert job.status.resolved_application is not None
    tool = job.status.resolved_application.invocation.tool.tool
    assert tool is not None
    tool.description.backend = "DOCKER"
    with pytest.raises(ProviderError, match="DOCKER application"):
        convert(job)


def test_a_template_that_does_not_compile_is_refused_at_creation() -> None:
    job = core2_job()
    assert job.status.resolved_application is not None
    invocation = job.status.resolved_application.invocation.invocation or []
    invocation[0].template = "{{ srun() }} python3 {% if %}"
    with pytest.raises(ProviderError) as refused:
        convert(job)
    assert refused.value.status == 400


def test_a_missing_required_parameter_is_refused_at_creation() -> None:
    job = core2_job()
    assert job.specification.parameters is not None
    del job.specification.parameters["input"]
    with pytest.raises(ProviderError, match="input"):
        convert(job, {})


def test_a_file_whose_drive_was_not_located_is_refused() -> None:
    with pytest.raises(ProviderError, match="drive of parameter 'input'"):
        convert(core2_job(), {})


@pytest.mark.parametrize("path", ["data/in.csv", "/x/in.csv", "", "//in.csv"])
def test_a_file_path_that_is_not_a_ucloud_path_is_refused(path: str) -> None:
    with pytest.raises(ProviderError, match="not a UCloud path"):
        drive_id_of(path)


def test_the_drives_of_file_parameters_are_collected_once() -> None:
    assert file_drive_ids([core2_job(), core2_job()]) == {"4"}


class FakeCore:
    def __init__(self, drives: dict[str, str]) -> None:
        self.drives = drives
        self.asked: list[str] = []

    async def retrieve_drive(self, drive_id: str) -> Drive:
        self.asked.append(drive_id)
        if drive_id not in self.drives:
            # core2 answers 403 "Write permission is required" for an id it does not know.
            raise CoreRejectedError(403, "Write permission is required")
        return Drive(id=drive_id, provider_generated_id=self.drives[drive_id])


async def test_drive_locators_ask_core_once_per_drive() -> None:
    core = FakeCore({"4": "home:alice", "9": "project:p1"})
    locators = DriveLocators(core)  # type: ignore[arg-type]
    assert await locators.locators({"4", "9"}) == {"4": "home:alice", "9": "project:p1"}
    assert await locators.locators({"4"}) == {"4": "home:alice"}
    assert sorted(core.asked) == ["4", "9"]


async def test_an_unknown_drive_or_another_providers_is_a_400() -> None:
    locators = DriveLocators(FakeCore({"5": "/gpfs/elsewhere"}))  # type: ignore[arg-type]
    for drive_id, why in (("3", "unknown to UCloud/Core"), ("5", "not a drive of this provider")):
        with pytest.raises(ProviderError, match=why) as refused:
            await locators.locators({drive_id})
        assert refused.value.status == 400

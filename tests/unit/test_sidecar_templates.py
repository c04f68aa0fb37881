"""sbatch scripts from the catalogue: hostile parameters stay one shell word, directives are right."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import pytest

from ucim.common.instance_api import SubmitRequest
from ucim.user_sidecar.settings import DEFAULT_CATALOGUE
from ucim.user_sidecar.templates import (
    BASE_TEMPLATE,
    CatalogueError,
    InvalidJobError,
    ShellText,
    load_catalogue,
    parse_catalogue,
    render_script,
    shell_quote,
)

CATALOGUE = load_catalogue(DEFAULT_CATALOGUE)
FOLDER = Path("/home/alice/ucloud-jobs/4711")

HOSTILE = [
    '\'; touch /tmp/pwned; echo "$(id)" `id`',
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a; rm -rf ~",
    "a && b || c | d > /tmp/x < /etc/passwd &",
    "line one\nline two\n#SBATCH --uid=0\n",
    "\r\n$HOME ${HOME} $((1+1)) !! ~root *",
    "'\"'\"'",
    "\\'\\",
    "-x",
    "--help",
    "",
    "  spaced  ",
    "ümlaut ✓ 🎉",
]


def request(app: str = "run-command", version: str = "1", **overrides: Any) -> SubmitRequest:
    body: dict[str, Any] = {
        "jobId": "4711",
        "slurmJobName": "ucloud-4711-abcdef12",
        "application": {"name": app, "version": version},
        "parameters": {},
        "resources": {"nodes": 2, "cpusPerNode": 4, "memoryMegabytesPerNode": 8000, "timeLimitMinutes": 90},
        "slurm": {"partition": "normal"},
    }
    body.update(overrides)
    return SubmitRequest.model_validate(body)


def command(text: object, kind: str = "text") -> dict[str, Any]:
    return {"command": {"type": kind, "value": text}}


def body_of(script: str) -> str:
    """The application's part of a script: after the blank line that ends the preamble."""
    return script.split("\n\n", 1)[1]


def directives_of(script: str) -> list[str]:
    """The #SBATCH lines sbatch reads: it stops at the first line that is not a comment or blank."""
    found = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH "):
            found.append(line.removeprefix("#SBATCH "))
    return found


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_command_is_one_argument_of_bash(text: str) -> None:
    script = render_script(CATALOGUE, request(parameters=command(text)), FOLDER)
    # POSIX shell word splitting of the invocation gives back exactly the text, as one word.
    assert shlex.split(body_of(script)) == ["bash", "-c", "--", text]
    # And nothing of it leaked into the preamble or the directives.
    preamble = script.split("\n\n", 1)[0]
    assert "pwned" not in preamble
    assert all(not d.startswith("--uid") for d in directives_of(script))


def test_the_script_starts_with_directives_from_product_and_resources() -> None:
    placement = {"partition": "normal", "qos": "high", "account": "ucimproj"}
    resources = {"nodes": 2, "cpusPerNode": 4, "memoryMegabytesPerNode": 8000, "gpusPerNode": 1, "timeLimitMinutes": 90}
    script = render_script(CATALOGUE, request(parameters=command("true"), slurm=placement, resources=resources), FOLDER)
    assert script.startswith("#!/bin/bash --login\n#SBATCH ")
    assert directives_of(script) == [
        "--partition=normal",
        "--qos=high",
        "--account=ucimproj",
        "--nodes=2",
        "--cpus-per-task=4",
        "--mem=8000",
        "--gpus-per-node=1",
        "--time=0-01:30:00",
        "--job-name=ucloud-4711-abcdef12",
        '--comment="UCloud job"',
        "--chdir=/home/alice/ucloud-jobs/4711",
        "--output=stdout.txt",
        "--error=stderr.txt",
    ]
    for line in ("export UCLOUD_JOB_ID=4711", "export UCLOUD_JOB_FOLDER=/home/alice/ucloud-jobs/4711",
                 "export UCLOUD_GPUS_PER_NODE=1", "export UCLOUD_TIME_LIMIT_MINUTES=90"):  # fmt: skip
        assert line in script.splitlines()


def test_optional_directives_are_left_out() -> None:
    resources = {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 100, "gpusPerNode": 0}
    script = render_script(CATALOGUE, request(parameters=command("true"), slurm={}, resources=resources), FOLDER)
    names = [d.split("=")[0] for d in directives_of(script)]
    for absent in ("--partition", "--qos", "--account", "--gpus-per-node", "--time"):
        assert absent not in names
    assert "UCLOUD_TIME_LIMIT_MINUTES" not in script


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partition", "normal\n#SBATCH --uid=0"),
        ("partition", "a b"),
        ("qos", "$(id)"),
        ("account", 'x"y'),
        ("partition", "x;y"),
    ],
)
def test_placement_values_that_are_not_plain_names_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidJobError, match="cannot be used in a Slurm directive"):
        render_script(CATALOGUE, request(parameters=command("true"), slurm={field: value}), FOLDER)


@pytest.mark.parametrize("name", ["a b", "x\ny", "a,b", "$(id)", "-leading", "a|b"])
def test_job_names_that_are_not_plain_are_refused(name: str) -> None:
    with pytest.raises(InvalidJobError, match="Slurm job name"):
        render_script(CATALOGUE, request(parameters=command("true"), slurmJobName=name), FOLDER)


@pytest.mark.parametrize("job_id", ["../etc", "a/b", ".hidden", "x y", ""])
def test_job_ids_that_are_not_folder_names_are_refused(job_id: str) -> None:
    with pytest.raises((InvalidJobError, ValueError)):
        render_script(CATALOGUE, request(parameters=command("true"), jobId=job_id), FOLDER)


@pytest.mark.parametrize(
    ("parameters", "why"),
    [
        (command("a\x00b"), "NUL character"),
        (command("\ud800"), "not valid Unicode"),
        (command("x" * 65_537), "at most 65536"),
        (command(5, "integer"), "must be of type text"),
        (command(5), "must be text, not int"),
        (command(["a"]), "must be text, not list"),
        ({}, "parameter 'command' of run-command@1 is required"),
    ],
)
def test_bad_run_command_parameters_are_refused(parameters: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidJobError, match=why):
        render_script(CATALOGUE, request(parameters=parameters), FOLDER)


def test_parameters_the_application_does_not_declare_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Core adds ``ucMetricSampleRate`` to every job; like IM2, undeclared names are left out, not refused."""
    given = {**command("true"), "ucMetricSampleRate": {"type": "text", "value": "0ms"}, "x": {"type": "file"}}
    with caplog.at_level(logging.DEBUG, logger="ucim.user_sidecar.templates"):
        script = render_script(CATALOGUE, request(parameters=given), FOLDER)
    assert "ucMetricSampleRate" not in script and "0ms" not in script
    assert shlex.split(body_of(script))[-1] == "true"
    (record,) = [r for r in caplog.records if r.getMessage() == "undeclared parameters dropped"]
    assert record.__dict__["dropped"] == ["ucMetricSampleRate", "x"]


def test_injected_parameters_reach_the_template_checked_like_their_type() -> None:
    compiled = parse_catalogue(catalogue("echo {{ _injected_account }} {{ x }}"), BASE_TEMPLATE.read_text())
    given = {
        "x": {"type": "text", "value": "a"},
        "_injected_account": {"type": "text", "value": "$(id)"},
        "_injected_modules": {"type": "modules", "modules": ["gcc"]},
    }
    script = render_script(compiled, request("t", parameters=given), FOLDER)
    assert shlex.split(body_of(script)) == ["echo", "$(id)", "a"]
    given["_injected_account"] = {"type": "text", "value": "a\x00b"}
    with pytest.raises(InvalidJobError, match="'_injected_account' holds a NUL"):
        render_script(compiled, request("t", parameters=given), FOLDER)


def test_sleep_exit_takes_defaults_and_checks_numbers() -> None:
    script = render_script(CATALOGUE, request("sleep-exit"), FOLDER)
    assert body_of(script).split("\n")[:2] == ["sleep 1", "exit 0"]
    given = {"seconds": {"type": "integer", "value": 30}, "exitCode": {"type": "integer", "value": 3.0}}
    assert body_of(render_script(CATALOGUE, request("sleep-exit", parameters=given), FOLDER)).startswith(
        "sleep 30\nexit 3\n"
    )
    for value, why in [
        (True, "must be an integer, not bool"),
        ("5", "must be an integer, not str"),
        (1.5, "must be an integer, not float"),
        (-1, "at least 0"),
        (86_401, "at most 86400"),
        (10**30, "finite number below"),
    ]:
        with pytest.raises(InvalidJobError, match=why):
            render_script(
                CATALOGUE, request("sleep-exit", parameters={"seconds": {"type": "integer", "value": value}}), FOLDER
            )


def test_unknown_applications_are_refused_with_what_is_offered() -> None:
    with pytest.raises(InvalidJobError, match=r"unknown application nope@1 .*run-command@1, sleep-exit@1"):
        render_script(CATALOGUE, request("nope"), FOLDER)
    with pytest.raises(InvalidJobError, match="unknown application run-command@2"):
        render_script(CATALOGUE, request(version="2"), FOLDER)


def catalogue(template: str, parameters: str = "{x: {type: text}}") -> str:
    return f"applications:\n  - name: t\n    version: '1'\n    parameters: {parameters}\n    template: {template!r}\n"


@pytest.mark.parametrize(
    "template",
    [
        "echo {{ x }}",
        "echo {{ x | safe }}",
        "echo {{ x ~ '' }}",
        "echo {{ x | sh }}",
        "echo {{ x | sh | sh }}",
        "echo {{ x | upper | lower }}",
    ],
)
def test_every_expression_is_quoted_and_templates_cannot_opt_out(template: str) -> None:
    compiled = parse_catalogue(catalogue(template), BASE_TEMPLATE.read_text())
    text = "$(id); `id`"
    parameters = {"x": {"type": "text", "value": text}}
    script = render_script(compiled, request("t", parameters=parameters), FOLDER)
    assert shlex.split(body_of(script)) == ["echo", text.lower() if "lower" in template else text]


def test_the_template_sandbox_refuses_python_internals() -> None:
    compiled = parse_catalogue(catalogue("{{ x.__class__.__mro__ }}"), BASE_TEMPLATE.read_text())
    with pytest.raises(InvalidJobError, match="cannot be rendered"):
        render_script(compiled, request("t", parameters={"x": {"type": "text", "value": "a"}}), FOLDER)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (catalogue("x", "{'bad-name': {type: text}}"), "must be an identifier"),
        (catalogue("x", "{job_id: {type: text}}"), "must be an identifier"),
        (catalogue("x", "{x: {type: file}}"), "type"),
        (catalogue("{% if %}"), "template of t@1"),
        (catalogue("x") + catalogue("x").removeprefix("applications:\n"), "listed twice"),
        ("applications: [{name: t, version: '1', template: x, unknown: 1}]", "unknown"),
    ],
)
def test_a_broken_catalogue_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(CatalogueError, match=why):
        parse_catalogue(text, BASE_TEMPLATE.read_text())


def test_shell_quote() -> None:
    assert shell_quote("plain") == "plain"
    assert shell_quote("it's") == "'it'\"'\"'s'"
    assert shell_quote(True) == "true"
    assert shell_quote(2.5) == "2.5"
    assert shell_quote(ShellText("$(kept)")) == "$(kept)"
    with pytest.raises(InvalidJobError):
        shell_quote(None)
    with pytest.raises(InvalidJobError):
        shell_quote("a\x00")

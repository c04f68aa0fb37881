"""Core's applications run as Core sends them: v2 YAML in the Core stand-in, rendered in the user's instance.

Each application is one of the stand-in's library (ucim/testing/apps), converted to Core's ``Application``
as core2 does and sent with the job in ``status.resolvedApplication``; the site's load instructions and
Lmod module tree are the local platform's (hack/local_platform.py). alice and bob are real users.
"""

from __future__ import annotations

import uuid

import pytest

from ucim.common.protocol import AppParameterValue, JobState
from ucim.common.resources import UCloudJob
from ucim.testing.core_standin import ProviderCallError
from ucim.testing.stack import Stack

pytestmark = pytest.mark.e2e


def job_id() -> str:
    return str(uuid.uuid4().int % 10**9)


async def home_drive(stack: Stack, user: str) -> str:
    """The id of the user's home drive at Core (init registers it)."""
    (await stack.core.call_provider("POST", "integration/init", {"username": user})).raise_for_status()
    return stack.core.home_of(user).id


def stdout(stack: Stack, user: str, job: str) -> str:
    return stack.read_file(f"/home/{user}/ucloud-jobs/{job}/stdout.txt")


async def run(stack: Stack, job: str, user: str, app: tuple[str, str], parameters: dict[str, object]) -> str:
    """Start the job, wait for it to succeed, and return what it printed."""
    spec = stack.core.make_job(job, user, app, parameters)  # type: ignore[arg-type]
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=90)
    return stdout(stack, user, job)


async def test_a_python_application_reads_its_input_file_and_writes_its_output_folder(stack: Stack) -> None:
    home = await home_drive(stack, "alice")
    tag = uuid.uuid4().hex[:8]
    stack.run_as("alice", "sh", "-c", f"mkdir -p ~/wc-{tag}/out && printf 'b a b c b a\\n' > ~/wc-{tag}/in.txt")
    job = job_id()
    parameters = {
        "input": AppParameterValue.file(f"/{home}/wc-{tag}/in.txt"),
        "output": AppParameterValue.file(f"/{home}/wc-{tag}/out"),
        "top": 2,
    }
    printed = await run(stack, job, "alice", ("word-count", "1"), parameters)
    assert printed.strip().endswith("6 words, 3 distinct")
    assert stack.read_file(f"/home/alice/wc-{tag}/out/word-count.txt") == "3 b\n2 a\n"
    # Core's outputFolder is the job folder as a UCloud path in the home drive, which Core browses.
    folders = {update.output_folder for update in stack.core.updates_for(job)}
    assert folders == {f"/{home}/ucloud-jobs/{job}"}
    first = stack.core.updates_for(job)[0]
    assert first.status is not None and first.status.startswith("Your job has been submitted to the queue")
    # The anchor's files beside the script: the template after preprocessing and its context.
    folder = f"/home/alice/ucloud-jobs/{job}"
    script = stack.read_file(f"{folder}/job.sbatch")
    assert script.startswith("#!/usr/bin/env -S bash --login\n")
    assert "Using python" in stack.read_file(f"{folder}/stderr.txt"), "the load instructions ran"
    assert "applicationLoad" not in stack.read_file(f"{folder}/job_template.j2")
    assert "word-count" in stack.read_file(f"{folder}/job_template_params.yml")
    assert ucloud_job(stack, job).status.output_folder == f"/{home}/ucloud-jobs/{job}"


def ucloud_job(stack: Stack, job: str) -> UCloudJob:
    return UCloudJob.from_obj(stack.get(f"ucj/{UCloudJob.name_for(job)}"))


@pytest.mark.parametrize(
    ("policy", "version"),
    [("loose", "2.0.0"), ("loose-forward", "2.0.0"), ("loose-backward", "1.2.3"), ("strict", "1.2.3")],
)
async def test_a_module_is_loaded_by_version_under_each_resolver_policy(
    stack: Stack, policy: str, version: str
) -> None:
    job = job_id()
    printed = await run(stack, job, "alice", (f"module-probe-{policy}", "1"), {})
    assert printed.splitlines()[-1] == f"ucim-probe {version}"


async def test_a_version_the_site_does_not_have_fails_the_job_with_the_reason(stack: Stack) -> None:
    job = job_id()
    await stack.core.create_jobs([stack.core.make_job(job, "alice", ("module-probe-missing", "1"), {})])
    await stack.core.wait_for_update(job, JobState.FAILURE, timeout=90)
    assert "ucim-probe" in stdout(stack, "alice", job)


async def test_a_two_node_job_runs_on_both_nodes(stack: Stack) -> None:
    job = job_id()
    spec = stack.core.make_job(job, "alice", ("srun-hostname", "1"), {}, replicas=2)
    await stack.core.create_jobs([spec])
    await stack.core.wait_for_update(job, JobState.SUCCESS, timeout=90)
    assert len(stdout(stack, "alice", job).split()) == 2
    assert ucloud_job(stack, job).status.node_list in {"localhost,localhost2", "localhost[,2]", "localhost2,localhost"}


async def test_every_value_type_reaches_the_program(stack: Stack) -> None:
    job = job_id()
    parameters = {"mode": "thorough", "verbose": True, "iterations": 7, "tolerance": 0.5, "label": "a b"}
    lines = (await run(stack, job, "alice", ("parameter-mix", "1"), parameters)).splitlines()
    assert lines == [
        "mode=thorough",
        "verbose=yes",
        "flag=--verbose",
        "iterations=7",
        "tolerance=0.5",
        "label=--label=a b",
        "notes=no notes",
        "greeting=hello from parameter-mix",
    ]


@pytest.mark.parametrize("app", ["sbatch-map", "sbatch-call"])
async def test_an_application_sets_an_sbatch_option(stack: Stack, app: str) -> None:
    job = job_id()
    printed = await run(stack, job, "alice", (app, "1"), {})
    assert "ntasks=2" in printed


async def test_an_application_may_not_choose_the_account(stack: Stack) -> None:
    job = job_id()
    with pytest.raises(ProviderCallError) as refused:
        await stack.core.create_jobs([stack.core.make_job(job, "alice", ("sbatch-account", "1"), {})])
    assert refused.value.status == 400
    assert "account" in str(refused.value.body["why"])


HOSTILE = [
    "a\n#SBATCH --account=root\nb",
    "'; touch /tmp/ucim-pwned; '",
    "$(id) `id` ${HOME} \\ \" '",
    "{{ 7*7 }} {% for x in range(3) %}x{% endfor %}",
    "{{ ''.__class__.__mro__ }} {{ cycler.__init__.__globals__ }}",
    "\n\n#!/bin/sh\nexit 0\n",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
async def test_a_hostile_value_arrives_verbatim_and_nothing_runs(stack: Stack, hostile: str) -> None:
    job = job_id()
    printed = await run(stack, job, "alice", ("echo-text", "1"), {"text": hostile})
    assert printed == hostile + "\n"
    script = stack.read_file(f"/home/alice/ucloud-jobs/{job}/job.sbatch")
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert not any("root" in line for line in directives)
    assert not stack.exists("/tmp/ucim-pwned")


async def word_count_refused(stack: Stack, input_path: str, output_path: str) -> str:
    """alice starts word-count on these UCloud paths; Core's call must be refused with 400: the reason."""
    spec = stack.core.make_job(
        job_id(), "alice", ("word-count", "1"),
        {"input": AppParameterValue.file(input_path), "output": AppParameterValue.file(output_path)},
    )  # fmt: skip
    with pytest.raises(ProviderCallError) as refused:
        await stack.core.create_jobs([spec])
    assert refused.value.status == 400
    return str(refused.value.body["why"])


async def test_alice_cannot_give_a_job_bobs_file(stack: Stack) -> None:
    bobs = await home_drive(stack, "bob")
    stack.run_as("bob", "sh", "-c", "printf 'secret\\n' > ~/secret.txt")
    assert "home of another user" in await word_count_refused(stack, f"/{bobs}/secret.txt", f"/{bobs}")


async def test_a_missing_input_file_is_refused_with_its_name(stack: Stack) -> None:
    home = await home_drive(stack, "alice")
    name = f"no-such-{uuid.uuid4().hex[:8]}.txt"
    assert f"{name} does not exist" in await word_count_refused(stack, f"/{home}/{name}", f"/{home}")


async def test_dynamic_parameters_offer_readmes_and_the_module_picker(stack: Stack) -> None:
    await home_drive(stack, "alice")
    configured = await stack.core.request_dynamic_parameters("alice", "module-probe-strict", "1")
    assert [p.name for p in configured] == ["__readme__"]
    missing = await stack.core.request_dynamic_parameters("alice", "run-command", "1")
    assert [p.name for p in missing] == ["_injected_modules"]
    # Lmod's software page names each version: the user picks one, {- systemLoad -} loads it.
    picker = {module["name"] for module in missing[0].supported_modules or []}
    assert {"ucim-probe/1.0.0", "ucim-probe/1.2.3", "ucim-probe/2.0.0"} <= picker


async def test_an_input_is_opened_as_the_user_not_as_root(stack: Stack) -> None:
    """The instance runs as alice: a file of hers she may not read is refused, as the OS says (root could)."""
    home = await home_drive(stack, "alice")
    name = f"locked-{uuid.uuid4().hex[:8]}.txt"
    stack.run_as("alice", "sh", "-c", f"printf 'x\\n' > ~/{name} && chmod 000 ~/{name}")
    assert f"permission denied: /{home}/{name}" in await word_count_refused(stack, f"/{home}/{name}", f"/{home}")

"""The site's applications configuration: documents, version resolution with the four policies, Lmod modules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ucim.user_sidecar.load_instructions import (
    MAX_FILE_BYTES,
    ApplicationsSettings,
    LoadInstructionsError,
    Module,
    SiteApplications,
    SrunConfig,
    choose_version,
    compare_versions,
    load_documents,
    load_modules,
    load_site_applications,
    parse_documents,
    parse_modules,
    short_description,
)

FIXTURES = Path(__file__).parent / "fixtures" / "lmod"

PYTHON = """\
name: python
configurations:
  - versions: ["3.11.4", "3.12.1"]
    load: |
      module load Python/{{ appVersion }}
    unload: module unload Python
    readme: Python, from the module system.
    srun: {command: srun, flags: ["--mpi=pmix"]}
  - versions: ["2.7.18"]
    load: module load Python2/{{ appVersion }}
"""


def site(*documents: str) -> SiteApplications:
    parsed = [d for text in documents for d in parse_documents(text, source="test.yml")]
    return SiteApplications(applications={d.name: d.configurations for d in parsed})


# --- documents ----------------------------------------------------------------------------------------------


def test_a_document_is_parsed() -> None:
    [document] = parse_documents(PYTHON, source="python.yml")
    assert document.name == "python"
    first = document.configurations[0]
    assert first.versions == ("3.11.4", "3.12.1")
    assert first.load == "module load Python/{{ appVersion }}\n"
    assert first.srun == SrunConfig(command="srun", flags=("--mpi=pmix",))
    assert document.configurations[1].readme is None


def test_one_file_may_hold_several_documents() -> None:
    text = PYTHON + "---\nname: gcc\nconfigurations: [{versions: ['12'], load: module load GCC}]\n---\n"
    assert [d.name for d in parse_documents(text, source="all.yml")] == ["python", "gcc"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nconfigurations: [{versions: ['1'], lod: y}]", r"bad.yml: configurations.0.lod: Extra inputs"),
        ("name: x\nconfigurations: []", "configurations: Tuple should have at least 1 item"),
        ("name: x\nconfigurations: [{versions: []}]", "versions: Tuple should have at least 1 item"),
        ("name: x\nconfigurations: [{versions: ['1\"; x']}]", "may not hold quotes"),
        ("name: x\nconfigurations: [{versions: ['{{ 1 }}']}]", "may not hold quotes"),
        ("configurations: [{versions: ['1']}]", "name: Field required"),
        ("name: [x", "bad.yml: not YAML"),
        ("name: x\nconfigurations: [{versions: ['1']}]\n---\nname: y", "bad.yml, document 2: configurations"),
    ],
)
def test_a_wrong_document_names_the_file(text: str, message: str) -> None:
    with pytest.raises(LoadInstructionsError, match=message):
        parse_documents(text, source="bad.yml")


def test_a_folder_is_read_in_name_order_and_big_files_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "b.yaml").write_text("name: gcc\nconfigurations: [{versions: ['12']}]\n")
    (tmp_path / "a.yml").write_text(PYTHON)
    (tmp_path / "notes.txt").write_text("name: ignored\n")
    with (tmp_path / "c.yml").open("wb") as big:
        big.truncate(MAX_FILE_BYTES + 1)
    with caplog.at_level(logging.WARNING):
        assert [d.name for d in load_documents(tmp_path)] == ["python", "gcc"]
    assert "over 16 MiB" in caplog.text


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LoadInstructionsError, match="does not exist"):
        load_documents(tmp_path / "nowhere")


def test_the_site_is_loaded_from_its_settings(tmp_path: Path) -> None:
    (tmp_path / "python.yml").write_text(PYTHON)
    (tmp_path / "more.yml").write_text("name: python\nconfigurations: [{versions: ['3.13.0']}]\n")
    settings = ApplicationsSettings(
        folder=tmp_path,
        system_load="module load site",
        system_unload="module purge",
        srun=SrunConfig(command="/opt/slurm/bin/srun"),
        modules_file=FIXTURES / "jsonSoftwarePage.json",
    )
    loaded = load_site_applications(settings)
    assert [c.versions for c in loaded.applications["python"]] == [("3.13.0",), ("3.11.4", "3.12.1"), ("2.7.18",)]
    assert (loaded.system_load, loaded.system_unload) == ("module load site", "module purge")
    assert loaded.srun.command == "/opt/slurm/bin/srun"
    assert len(loaded.modules) == 3
    assert load_site_applications(ApplicationsSettings()) == SiteApplications()


# --- versions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("3.11.4", "3.12.1", -1),
        ("3.12.1", "3.11.4", 1),
        ("3.10", "3.9", 1),  # numbers, not text
        ("v3.10", "3.10", 0),
        ("version 2", "2", 0),
        ("Version2.1", "2.1", 0),
        ("3.11", "3.11.0", 0),
        ("3.11", "3.11.4", -1),
        ("2023a", "2023b", -1),  # text
        ("1.2-rc1", "1.2", 0),  # a -suffix is ignored (the anchor cuts one character too many)
        ("12-x", "12", 0),
    ],
)
def test_versions_compare_as_the_anchor_does(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order


def test_a_prefix_matches() -> None:
    assert compare_versions("3.11", "3.11.4", prefix_is_equal=True) == 0
    assert compare_versions("3", "3.12.1", prefix_is_equal=True) == 0
    assert compare_versions("3.1", "3.11.4", prefix_is_equal=True) != 0


VERSIONS = ["3.12.1", "3.11.4", "2.7.18"]  # newest first


@pytest.mark.parametrize(
    ("policy", "requested", "chosen"),
    [
        ("loose", "3.11", "3.11.4"),
        ("loose", "3", "3.12.1"),
        ("loose", "4.0", "3.12.1"),  # no match: the newest
        ("loose", "1.0", "3.12.1"),
        ("loose-forward", "3.11", "3.11.4"),
        ("loose-forward", "3.0", "3.12.1"),  # the newest is not older
        ("loose-forward", "4.0", None),  # the newest would be older
        ("loose-backward", "3.11", "3.11.4"),
        ("loose-backward", "3.11.9", "3.11.4"),  # the newest not newer than asked
        ("loose-backward", "3.0", "2.7.18"),
        ("loose-backward", "2.0", None),
        ("strict", "3.11", "3.11.4"),
        ("strict", "3.13", None),
        ("3.11.4", "3.11.4", "3.11.4"),  # any other policy: exactly the requested version
        ("exact", "3.11", None),
    ],
)
def test_the_four_policies_and_exact(policy: str, requested: str, chosen: str | None) -> None:
    assert choose_version(requested, VERSIONS, policy) == chosen


def test_resolve_finds_the_configuration_of_the_version() -> None:
    python = site(PYTHON)
    resolved = python.resolve("python", "3.12")
    assert resolved is not None
    assert (resolved.name, resolved.requested, resolved.version) == ("python", "3.12", "3.12.1")
    assert resolved.configuration.readme == "Python, from the module system."
    old = python.resolve("python", "2", "strict")
    assert old is not None and old.version == "2.7.18" and old.configuration.load.startswith("module load Python2")
    assert python.resolve("python", "4", "strict") is None
    assert python.resolve("ruby", "3") is None


def test_the_readme_of_an_application() -> None:
    python = site(PYTHON)
    assert python.readme("python", "3.11") == "Python, from the module system."
    assert python.readme("python", "2.7") is None
    assert python.readme("ruby", "1") is None


# --- modules ------------------------------------------------------------------------------------------------


def test_modules_from_the_software_page_as_im2_reads_them() -> None:
    modules = load_modules(FIXTURES / "jsonSoftwarePage.json")
    by_name = {module.name: module for module in modules}
    assert list(by_name) == ["OpenMPI/4.1.5", "GCC/12.2.0", "Clang/16"]
    openmpi = by_name["OpenMPI/4.1.5"]
    # The same module under two compilers: one module, either parent will do.
    assert openmpi.depends_on == (("Clang/16",), ("GCC/12.2.0",))
    assert openmpi.description == "Open MPI: a message passing library."
    assert by_name["GCC/12.2.0"].short_description == "The GNU Compiler Collection"
    assert by_name["GCC/12.2.0"].documentation_url == "https://gcc.gnu.org"
    assert by_name["GCC/12.2.0"].model_dump(by_alias=True) == {
        "name": "GCC/12.2.0",
        "description": "",
        "shortDescription": "The GNU Compiler Collection",
        "dependsOn": (),
        "documentationUrl": "https://gcc.gnu.org",
    }


def test_modules_from_spider_json() -> None:
    modules = {m.name: m for m in load_modules(FIXTURES / "spider-json.json")}
    assert set(modules) == {"OpenMPI/4.1.5", "GCC/12.2.0", "Clang/16"}
    assert sorted(modules["OpenMPI/4.1.5"].depends_on) == [("Clang/16",), ("GCC/12.2.0",)]
    assert modules["GCC/12.2.0"].documentation_url == "https://gcc.gnu.org"


def test_hidden_spider_modules_are_left_out() -> None:
    data = {"X": {"/m/X/1.lua": {"fullName": "X/1", "hidden": True, "pV": "1"}}}
    assert parse_modules(data) == ()
    assert parse_modules([]) == ()


def test_an_unusable_modules_file_gives_no_modules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps("text"))
    (tmp_path / "shape.json").write_text(json.dumps([{"versions": [{"help": "no full name"}]}]))
    with caplog.at_level(logging.WARNING):
        for name in ("bad.json", "odd.json", "shape.json", "missing.json"):
            assert load_modules(tmp_path / name) == ()
    assert caplog.text.count("modules file not loaded") == 4


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("  One sentence. Another.", "One sentence"),
        ("No full stop", "No full stop"),
        ("line\nbreak", "line break"),
        ("word " * 40, ("word " * 24).strip() + "..."),
    ],
)
def test_short_descriptions(text: str, short: str) -> None:
    assert short_description(text) == short


def test_a_module_is_immutable() -> None:
    module = Module(name="x")
    with pytest.raises(ValueError, match="frozen"):
        module.name = "y"  # type: ignore[misc]

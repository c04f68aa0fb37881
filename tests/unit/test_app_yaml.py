"""v2 application YAML becomes the ``Application`` core2 sends providers (PROTOCOL-APPS §2), refusals in its words."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import pytest

from ucim.common.protocol import Application, dump
from ucim.testing.app_yaml import ApplicationRefusedError, application_from_yaml
from ucim.testing.core_apps import LIBRARY, ApplicationStore, library

FIXTURES = Path(__file__).with_name("fixtures")


def wire(text: str, **options: Any) -> dict[str, Any]:
    """The document converted, as JSON goes on the wire."""
    return dump(application_from_yaml(textwrap.dedent(text), **options))


def app(body: str = "", *, parameters: str = "") -> str:
    """A minimal valid document with ``body`` (top-level keys) and ``parameters`` (their entries) added."""
    document = textwrap.dedent(
        """\
        application: v2
        name: probe
        version: "1"
        software: {type: Native, load: []}
        invocation: echo hi
        """
    )
    if parameters:
        document += "parameters:\n" + textwrap.indent(textwrap.dedent(parameters), "  ")
    return document + textwrap.dedent(body)


def parameter(text: str) -> dict[str, Any]:
    (only,) = wire(app(parameters=text))["invocation"]["parameters"]
    return dict(only)


def refusal(text: str) -> tuple[int, str]:
    with pytest.raises(ApplicationRefusedError) as refused:
        application_from_yaml(text)
    return refused.value.status, refused.value.why


# --- the real Core's answer -----------------------------------------------------


def test_the_conversion_is_what_the_real_core_answers() -> None:
    """fixtures/core2_app_sleep_exit.json: ``GET /api/hpc/apps/byNameAndVersion`` of core2 (63551f4ea7) after
    uploading this document and making it public; byte for byte, key order included."""
    real = (FIXTURES / "core2_app_sleep_exit.json").read_text()
    document = """\
        application: v2
        name: sleep-exit
        version: "1"
        title: "Sleep, then exit"
        description: "Sleeps for a while, then exits with a chosen status."
        software:
          type: Native
          load: []
        parameters:
          seconds:
            type: Integer
            title: "Seconds"
            description: "How long to sleep"
            optional: true
            defaultValue: 1
          exitCode:
            type: Integer
            title: "Exit code"
            description: "The exit status"
            optional: true
            defaultValue: 0
        invocation: |
          sleep {{ seconds }}
          exit {{ exitCode }}
        """
    created_at = json.loads(real)["metadata"]["createdAt"]
    converted = wire(document, created_at=created_at, public=True)
    assert json.dumps(converted, indent=2) + "\n" == real


# --- each row of PROTOCOL-APPS §2 -------------------------------------------------


def test_metadata_defaults_the_title_to_the_name_and_documentation_is_the_website() -> None:
    metadata = wire(app(), created_at=7)["metadata"]
    assert metadata == {
        "name": "probe",
        "version": "1",
        "authors": ["UCloud"],
        "title": "probe",
        "description": "",
        "website": "",
        "public": False,
        "flavorName": None,
        "group": {
            "metadata": {"id": -1},
            "specification": {
                "title": "",
                "description": "",
                "defaultFlavor": "",
                "categories": None,
                "colorReplacement": {"light": None, "dark": None},
                "logoHasText": False,
            },
            "status": {"applications": None},
        },
        "createdAt": 7,
    }
    body = "title: '  A probe '\ndescription: |\n  Two\n  lines\ndocumentation: https://docs.example/probe\n"
    titled = wire(app(body))["metadata"]
    assert (titled["title"], titled["description"], titled["website"]) == (
        "A probe",  # trimmed, as every string core2 validates
        "Two\nlines",
        "https://docs.example/probe",
    )


def test_native_software_becomes_the_tools_load_instructions() -> None:
    document = app().replace("load: []", 'load: [{name: python, version: "3.11"}, {name: gcc, version: 13.2}]')
    tool = wire(document, created_at=9)["invocation"]["tool"]
    assert tool == {
        "name": "probe",
        "version": "1",
        "tool": {
            "owner": "_ucloud",
            "createdAt": 9,
            "modifiedAt": 9,
            "description": {
                "info": {"name": "probe", "version": "1"},
                "defaultNumberOfNodes": 1,
                "defaultTimeAllocation": {"hours": 1, "minutes": 0, "seconds": 0},
                "requiredModules": None,
                "authors": ["UCloud"],
                "title": "probe",
                "description": "",
                "backend": "NATIVE",
                "license": "",
                "image": "",
                "container": "",
                "supportedProviders": None,
                "loadInstructions": {
                    "type": "Native",
                    "applications": [{"name": "python", "version": "3.11"}, {"name": "gcc", "version": "13.2"}],
                },
            },
        },
    }


def test_an_empty_load_list_is_written_as_null() -> None:
    description = wire(app())["invocation"]["tool"]["tool"]["description"]
    assert description["loadInstructions"] == {"type": "Native", "applications": None}


@pytest.mark.parametrize(
    ("software", "backend"),
    [("Container", "DOCKER"), ("VirtualMachine", "VIRTUAL_MACHINE"), ("UCX", "UCX")],
)
def test_other_software_types_name_their_image(software: str, backend: str) -> None:
    document = app().replace("{type: Native, load: []}", f"{{type: {software}, image: ubuntu:24.04}}")
    description = wire(document)["invocation"]["tool"]["tool"]["description"]
    assert (description["backend"], description["image"], description["container"]) == (
        backend,
        "ubuntu:24.04",
        "ubuntu:24.04",
    )
    assert description["loadInstructions"] is None


def test_the_invocation_is_one_jinja_parameter_with_the_text_as_written() -> None:
    document = app().replace("invocation: echo hi", "invocation: |\n  {- applicationLoad -}\n  echo {{ x }}\n")
    (only,) = wire(document)["invocation"]["invocation"]
    assert only == {
        "type": "jinja",
        "variable": "",
        "word": "",
        "variableNames": None,
        "prefixGlobal": "",
        "suffixGlobal": "",
        "prefixVariable": "",
        "suffixVariable": "",
        "isPrefixVariablePartOfArg": False,
        "isSuffixVariablePartOfArg": False,
        "variableName": "",
        "flag": "",
        "template": "{- applicationLoad -}\necho {{ x }}\n",
    }


def test_a_document_without_invocation_is_taken_with_an_empty_template() -> None:
    """core2's Normalize never looks at ``invocation``."""
    (only,) = wire(app().replace("invocation: echo hi\n", ""))["invocation"]["invocation"]
    assert only["template"] == ""


@pytest.mark.parametrize(
    ("yaml_type", "wire_type"),
    [
        ("File", "input_file"),
        ("Directory", "input_directory"),
        ("Integer", "integer"),
        ("FloatingPoint", "floating_point"),
        ("Boolean", "boolean"),
        ("Text", "text"),
        ("TextArea", "textarea"),
        ("Enumeration", "enumeration"),
        ("License", "license_server"),
        ("Job", "peer"),
        ("PublicIP", "network_ip"),
        ("Workflow", "workflow"),
    ],
)
def test_each_parameter_type_and_optional_false_by_default(yaml_type: str, wire_type: str) -> None:
    mapped = parameter(f"p: {{type: {yaml_type}, title: P}}\n")
    assert (mapped["type"], mapped["name"], mapped["optional"], mapped["defaultValue"]) == (wire_type, "p", False, None)
    assert (mapped["min"], mapped["max"], mapped["step"], mapped["options"]) == (None, None, None, None)
    is_boolean = yaml_type == "Boolean"
    assert (mapped["trueValue"], mapped["falseValue"]) == (("true", "false") if is_boolean else ("", ""))


def test_parameters_keep_the_documents_order() -> None:
    names = "zeta: {type: Text, title: Z}\nalpha: {type: Text, title: A}\nmid: {type: Text, title: M}\n"
    assert [p["name"] for p in wire(app(parameters=names))["invocation"]["parameters"]] == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize(
    ("declaration", "default"),
    [
        ("{type: Integer, title: N, defaultValue: 3}", 3),
        ("{type: Integer, title: N, defaultValue: 3.9}", 3),  # yaml.v3 truncates a float into an int64
        ("{type: FloatingPoint, title: F, defaultValue: 0.25}", 0.25),
        ("{type: FloatingPoint, title: F, defaultValue: 2.0}", 2),  # Go's JSON writes 2
        ("{type: Boolean, title: B, defaultValue: true}", True),
        ("{type: Boolean, title: B, defaultValue: yes}", True),  # a typed bool takes YAML 1.1's words
        ("{type: Text, title: T, defaultValue: 1.10}", "1.10"),  # a string field takes the text as written
        ("{type: TextArea, title: T, defaultValue: 'two words'}", "two words"),
        ("{type: Enumeration, title: E, defaultValue: b, options: [{title: A, value: a}, {title: B, value: b}]}", "b"),
        ("{type: File, title: F, defaultValue: /1/x}", None),  # files take none
    ],
)
def test_default_values_are_bare_json_values(declaration: str, default: Any) -> None:
    mapped = parameter(f"p: {declaration}\n")
    assert mapped["defaultValue"] == default
    assert type(mapped["defaultValue"]) is type(default)


def test_numeric_bounds_are_checked_but_not_sent() -> None:
    mapped = parameter("n: {type: Integer, title: N, optional: true, defaultValue: 2, min: 1, max: 9, step: 2}\n")
    assert (mapped["optional"], mapped["min"], mapped["max"], mapped["step"]) == (True, None, None, None)


def test_enumeration_options_become_name_and_value() -> None:
    options = "[{title: Fast, value: fast}, {title: ' Slow ', value: slow}]"
    mapped = parameter(f"mode: {{type: Enumeration, title: Mode, options: {options}}}\n")
    assert mapped["options"] == [{"name": "Fast", "value": "fast"}, {"name": "Slow", "value": "slow"}]


def test_environment_and_sbatch_become_sorted_words() -> None:
    body = "environment: {ZED: ' z ', ALPHA: '{{ count }}'}\nsbatch: {ntasks: 2, constraint: gpu}\n"
    invocation = wire(app(body))["invocation"]
    assert {k: (v["type"], v["word"]) for k, v in invocation["environment"].items()} == {
        "ALPHA": ("word", "{{ count }}"),  # exported literally by the provider (PROTOCOL-APPS §12)
        "ZED": ("word", "z"),
    }
    assert list(invocation["environment"]) == ["ALPHA", "ZED"]
    assert {k: v["word"] for k, v in invocation["sbatch"].items()} == {"constraint": "gpu", "ntasks": "2"}
    assert list(invocation["sbatch"]) == ["constraint", "ntasks"]


def test_the_fixed_fields_of_a_batch_application() -> None:
    invocation = wire(app())["invocation"]
    assert {key: invocation[key] for key in ("applicationType", "outputFileGlobs", "container", "environment")} == {
        "applicationType": "BATCH",
        "outputFileGlobs": ["*"],
        "container": {"changeWorkingDirectory": True, "runAsRoot": True, "runAsRealUser": False},
        "environment": {},
    }
    assert (invocation["sbatch"], invocation["parameters"], invocation["allowMultiNode"]) == ({}, [], False)
    for key in ("vnc", "web", "ssh", "inference", "ucx", "modules", "fileExtensions", "licenseServers"):
        assert invocation[key] is None, key
    for key in ("allowAdditionalMounts", "allowAdditionalPeers", "allowPublicIp", "allowPublicLink"):
        assert invocation[key] is None, key
    assert invocation["jobAuditLogIsEnabled"] is None
    assert (wire(app())["favorite"], wire(app())["versions"]) == (False, None)


@pytest.mark.parametrize(
    ("body", "application_type", "web", "vnc"),
    [
        ("web: {enabled: true}\n", "WEB", {"port": 80}, None),
        ("web: {enabled: true, port: 8888}\n", "WEB", {"port": 8888}, None),
        ("web: {enabled: false}\n", "WEB", None, None),  # the key alone makes it WEB
        ("vnc: {enabled: true, password: pw, port: 5901}\n", "VNC", None, {"password": "pw", "port": 5901}),
        ("vnc: {enabled: true}\n", "VNC", None, {"password": "", "port": 0}),
        ("vnc: {enabled: false, port: 5901}\n", "BATCH", None, None),
    ],
)
def test_web_and_vnc(body: str, application_type: str, web: Any, vnc: Any) -> None:
    invocation = wire(app(body))["invocation"]
    assert (invocation["applicationType"], invocation["web"], invocation["vnc"]) == (application_type, web, vnc)


def test_features_ssh_modules_and_extensions() -> None:
    body = """\
        features:
          {multiNode: true, links: true, ipAddresses: false, folders: true, jobLinking: false, jobAuditLog: true}
        ssh: {mode: Optional}
        inference: {mode: None}
        modules: {mountPath: /opt/modules, optional: [a, b]}
        extensions: [.py, .ipynb]
        """
    invocation = wire(app(body))["invocation"]
    assert {
        key: invocation[key]
        for key in (
            "allowMultiNode",
            "allowPublicLink",
            "allowPublicIp",
            "allowAdditionalMounts",
            "allowAdditionalPeers",
            "jobAuditLogIsEnabled",
            "ssh",
            "inference",
            "modules",
            "fileExtensions",
        )
    } == {
        "allowMultiNode": True,
        "allowPublicLink": True,
        "allowPublicIp": False,
        "allowAdditionalMounts": True,
        "allowAdditionalPeers": False,
        "jobAuditLogIsEnabled": True,
        "ssh": {"mode": "OPTIONAL"},
        "inference": {"mode": "NONE"},
        "modules": {"mountPath": "/opt/modules", "optional": ["a", "b"]},
        "fileExtensions": [".py", ".ipynb"],
    }


# --- PROTOCOL-APPS §11 and the library ----------------------------------------------


def test_the_protocol_example_is_what_core_sends_in_a_job() -> None:
    """fixtures/core2_job_hello_py.json: the job core2 sent for the library's hello-py; byte for byte."""
    job = json.loads((FIXTURES / "core2_job_hello_py.json").read_text())["items"][0]
    real = job["status"]["resolvedApplication"]
    converted = wire((LIBRARY / "hello-py.yaml").read_text(), created_at=real["metadata"]["createdAt"])
    assert json.dumps(converted) == json.dumps(real)


def test_the_protocol_example_converts() -> None:
    converted = dump(next(a for a in library() if a.metadata.name == "hello-py"))
    invocation = converted["invocation"]
    assert (converted["metadata"]["name"], converted["metadata"]["version"]) == ("hello-py", "3.11")
    assert invocation["tool"]["tool"]["description"]["loadInstructions"] == {
        "type": "Native",
        "applications": [{"name": "python", "version": "3.11"}],
    }
    assert [(p["name"], p["type"], p["optional"], p["defaultValue"], p["title"]) for p in invocation["parameters"]] == [
        ("input", "input_file", False, None, "Input file"),
        ("count", "integer", True, 3, "Count"),
        ("verbose", "boolean", True, None, "Verbose"),
    ]
    assert invocation["invocation"][0]["template"] == (
        "{- applicationLoad -}\n"
        '{{ srun() }} python3 run.py --input {{ input }} --count {{ count }} {{ verbose | flag("--verbose") }}\n'
    )


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_library_application_converts_under_its_file_name(path: Path) -> None:
    converted = application_from_yaml(path.read_text())
    assert converted.metadata.name == path.stem
    assert converted.invocation.invocation and converted.invocation.invocation[0].template.strip()
    assert converted.invocation.tool.tool is not None
    assert converted.invocation.tool.tool.description.backend == "NATIVE"


@pytest.mark.parametrize("application", library(), ids=lambda application: application.metadata.name)
def test_every_library_template_is_jinja_once_preprocessed(application: Application) -> None:
    """The ``{- name(...) -}`` calls (PROTOCOL-APPS §5) are expanded before rendering; what remains must parse."""
    assert application.invocation.invocation is not None
    template = application.invocation.invocation[0].template
    jinja2.Environment(autoescape=True).parse(re.sub(r'\{- \w+(\("[^"]*"(, ?"[^"]*")*\))? -\}', "", template))


def test_the_library_holds_the_test_set() -> None:
    held = set(ApplicationStore.with_library().applications)
    assert {
        ("run-command", "1"),
        ("sleep-exit", "1"),
        ("echo-text", "1"),
        ("hello-py", "3.11"),
        ("word-count", "1"),
        ("module-probe-loose", "1"),
        ("module-probe-loose-forward", "1"),
        ("module-probe-loose-backward", "1"),
        ("module-probe-strict", "1"),
        ("srun-hostname", "1"),
        ("parameter-mix", "1"),
        ("sbatch-map", "1"),
        ("sbatch-call", "1"),
        ("sbatch-account", "1"),
        ("web-echo", "1"),
        ("desktop-vnc", "1"),
    } <= held
    assert len(held) == len(library())  # no two files hold the same name and version


# --- refusals, in core2's words ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("name: x\n", "Invalid application version specified, must be either v1 or v2"),
        ("application: v3\nname: x\n", "Invalid application version specified, must be either v1 or v2"),
        ("", "Invalid application version specified, must be either v1 or v2"),
        (app().replace('name: probe', 'name: ""'), "Name must not be empty"),
        (app().replace('version: "1"\n', ""), "Version must not be empty"),
        (app().replace("name: probe", "name: '  '"), "Name must not be empty"),
        (app().replace("{type: Native, load: []}", "{type: Nativ}"),
         'Invalid yaml supplied: unknown software type: "Nativ"'),
        (app().replace("software: {type: Native, load: []}\n", ""), "Invalid enumeration specified in 'software.type'"),
        (app(parameters="p: {type: Strng, title: P}\n"), 'Invalid yaml supplied: unknown parameter type: "Strng"'),
        (app(parameters="p: {type: Text}\n"), "P must not be empty"),
        (app(parameters="count: {type: Integer, title: C, defaultValue: 0, min: 1}\n"),
         "Count default value must not be lower than the minimum value"),
        (app(parameters="f: {type: FloatingPoint, title: F, min: 2.5, max: 1e6}\n").replace("1e6", "0.5"),
         "F min value must not exceed max value (2.5 > 0.5)"),
        (app(parameters="n: {type: Integer, title: N, step: 0}\n"), "N step value must be > 0"),
        (app(parameters="e: {type: Enumeration, title: E, defaultValue: c, options: [{title: A, value: a}]}\n"),
         "E.defaultValue must be present in options"),
        (app("web: {enabled: true, port: 70000}\n"), "Web.port must be < 65536"),
        (app("vnc: {enabled: true, port: 0}\n"), "Vnc.port must not be <= 0"),
        (app("ssh: {mode: Always}\n"), "Invalid enumeration specified in 'ssh.mode'"),
        (app("environment: {A: ''}\n"), "Environment.A (value) must not be empty"),
        (app("sbatch: {ntasks: \"1\\n2\"}\n"), "Sbatch.ntasks (value) must not contain new-lines"),
        (app().replace("load: []", "load: [{name: python}]"), "Software.load[0].version must not be empty"),
        (app(parameters="n: {type: Integer, title: N, defaultValue: many}\n"),
         "Invalid yaml supplied: yaml: unmarshal errors:\n  line 7: cannot unmarshal !!str `many` into int64"),
        (app("name: again\n"),
         'Invalid yaml supplied: yaml: unmarshal errors:\n  line 6: mapping key "name" already defined at line 2'),
    ],
)  # fmt: skip
def test_refusals_are_cores(text: str, why: str) -> None:
    assert refusal(text) == (400, why)


def test_a_document_that_does_not_parse_is_invalid_yaml() -> None:
    """The words after the prefix are PyYAML's, not yaml.v3's."""
    status, why = refusal("application: v2\nname: [unclosed\n")
    assert status == 400
    assert why.startswith("Invalid yaml supplied: yaml: line 3: ")


def test_the_first_failure_is_the_answer() -> None:
    """core2 keeps its first validation error: the name is checked before the parameters."""
    text = app(parameters="p: {type: Text}\n").replace("name: probe", 'name: ""')
    assert refusal(text) == (400, "Name must not be empty")


def test_v1_documents_are_not_converted_here() -> None:
    status, why = refusal("application: v1\ntitle: old\n")
    assert status == 400
    assert "v2" in why

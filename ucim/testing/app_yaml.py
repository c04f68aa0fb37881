"""An ``application: v2`` YAML document → the ``Application`` a provider receives, as core2 makes it.

For the Core stand-in. core2 gets there in three steps (paths in SDU-eScience/UCloud):

1. ``AppStudioUploadApp`` (core2/pkg/orchestrator/app_catalog.go) reads the ``application`` key: ``v2`` is decoded
   into Go structs (yaml.v3, see ``yaml_nodes``), a decode error is 400 "Invalid yaml supplied: ...", anything but
   v1/v2 is 400 "Invalid application version specified, must be either v1 or v2". The stand-in takes only v2.
2. ``A2Yaml.Normalize`` (core2/pkg/orchestrator/app_yaml.go) validates and maps it (PROTOCOL-APPS §2). Its
   validation keeps the *first* failure, trims every string it checks, and never looks at ``invocation``: a
   document without one is stored with an empty template. It decodes ``min``/``max``/``step`` and checks them, but
   does not copy them: a v2 parameter always has ``min``, ``max`` and ``step`` null (seen on the real Core too).
3. ``AppRetrieve`` (app_catalog.go) is what a job's ``status.resolvedApplication`` carries: the tool re-attached
   with owner ``_ucloud`` and the application's ``createdAt``, ``group`` with id -1, ``favorite`` false,
   ``versions`` null. Go writes maps sorted by key, so ``environment`` and ``sbatch`` are too.

The facts are core2's; the code is ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import yaml

from ucim.common.protocol import (
    Application,
    ApplicationInvocation,
    ApplicationMetadata,
    ApplicationParameter,
    ContainerDescription,
    EnumOption,
    InvocationParameter,
    ModulesDescription,
    NameAndVersion,
    SimpleDuration,
    Tool,
    ToolDescription,
    ToolReference,
    VncDescription,
    WebDescription,
    now_ms,
)
from ucim.testing import yaml_nodes as y

# YAML parameter type → ApplicationParameter type (Normalize).
PARAMETER_TYPES: Final = {
    "File": "input_file",
    "Directory": "input_directory",
    "License": "license_server",
    "Job": "peer",
    "PublicIP": "network_ip",
    "Integer": "integer",
    "FloatingPoint": "floating_point",
    "Boolean": "boolean",
    "Text": "text",
    "TextArea": "textarea",
    "Enumeration": "enumeration",
    "Workflow": "workflow",
}
BACKENDS: Final = {"Native": "NATIVE", "Container": "DOCKER", "VirtualMachine": "VIRTUAL_MACHINE", "UCX": "UCX"}
SSH_MODES: Final = {"Disabled": "DISABLED", "Optional": "OPTIONAL", "Mandatory": "MANDATORY"}
INFERENCE_MODES: Final = {"None": "NONE", "Optional": "OPTIONAL", "Mandatory": "MANDATORY"}
MAX_PORT: Final = 65535
# What AppRetrieve writes for an application in no group.
NO_GROUP: Final[Mapping[str, Any]] = {
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
}
# Go's unicode.IsSpace, what strings.TrimSpace trims (Python's str.strip would also trim \x1c-\x1f).
_GO_SPACE: Final = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
_SHORT_STRING_BYTES: Final = 1024
_LONG_STRING_BYTES: Final = 1024 * 1024


class ApplicationRefusedError(ValueError):
    """Core refuses the document: ``status`` and ``why`` as core2 answers ``PUT /api/hpc/apps/upload``."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def application_from_yaml(text: str, *, created_at: int | None = None, public: bool = False) -> Application:
    """The application as a job's ``resolvedApplication`` carries it, or ``ApplicationRefusedError``.

    ``public`` is what an admin's ``updatePublicFlag`` made of it (an upload leaves it false).
    """
    root = _compose(text)
    version = _document_version(root)
    if version == "v1":
        raise ApplicationRefusedError(400, "The Core stand-in converts application: v2 documents only, not v1")
    if version != "v2" or root is None:
        raise ApplicationRefusedError(400, "Invalid application version specified, must be either v1 or v2")
    try:
        document = _DOCUMENT(root)
    except y.YamlDecodeError as error:
        raise ApplicationRefusedError(400, f"Invalid yaml supplied: {error}") from None
    return _Normalizer(document).application(now_ms() if created_at is None else created_at, public)


def _compose(text: str) -> yaml.Node | None:
    try:
        return y.compose(text)
    except y.YamlDecodeError as error:
        raise ApplicationRefusedError(400, f"Invalid yaml supplied: {error}") from None


def _document_version(root: yaml.Node | None) -> str:
    """The ``application`` key (the last one, as yaml.v3 keeps); core2 ignores the errors of this first read."""
    version = ""
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "application" and isinstance(value, yaml.ScalarNode):
                version = y.string(value)
    return version


# --- the Go types the document is decoded into (core2 app_yaml.go) ---------------------------------------------


def _go_quote(text: str) -> str:
    """Go's ``%q`` for the texts it quotes here (type names)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


_BASE: Final[dict[str, y.Decoder]] = {"title": y.string, "description": y.string, "optional": y.boolean}


def _numeric(read: y.Decoder) -> dict[str, y.Decoder]:
    return {**_BASE, **{key: y.option(read) for key in ("defaultValue", "min", "max", "step")}}


def _parameter(node: yaml.Node) -> dict[str, Any]:
    """``A2Parameter.UnmarshalYAML``: the ``type`` first, then the fields of that type; null is no parameter at all."""
    if y.is_null(node):
        return {}
    kind = y.struct({"type": y.string}, 'struct { Type string "yaml:\\"type\\"" }')(node).get("type", "")
    fields = _PARAMETER_FIELDS.get(kind)
    if fields is None:
        raise y.YamlDecodeError(f"unknown parameter type: {_go_quote(kind)}")
    return {**y.struct(fields, f"orchestrator.A2Param{kind}")(node), "kind": kind}


_ENUM_OPTION: Final = y.struct({"title": y.string, "value": y.string}, "orchestrator.A2EnumOption")
_TEXT: Final[dict[str, y.Decoder]] = {**_BASE, "defaultValue": y.option(y.string)}
_PARAMETER_FIELDS: Final[dict[str, dict[str, y.Decoder]]] = {
    "File": _BASE,
    "Directory": _BASE,
    "License": _BASE,
    "Job": _BASE,
    "PublicIP": _BASE,
    "Integer": _numeric(y.int64),
    "FloatingPoint": _numeric(y.float64),
    "Boolean": {**_BASE, "defaultValue": y.option(y.boolean)},
    "Text": _TEXT,
    "TextArea": _TEXT,
    "Enumeration": {**_TEXT, "options": y.sequence(_ENUM_OPTION, "[]orchestrator.A2EnumOption")},
    "Workflow": {
        **_BASE,
        "init": y.option(y.string),
        "job": y.option(y.string),
        "readme": y.option(y.string),
        "parameters": y.mapping(_parameter, "map[string]orchestrator.A2Parameter"),
    },
}

_LOAD: Final = y.struct({"name": y.string, "version": y.string}, "orchestrator.A2ApplicationToLoad")
_SOFTWARE_FIELDS: Final[dict[str, dict[str, y.Decoder]]] = {
    "Native": {"load": y.sequence(_LOAD, "[]orchestrator.A2ApplicationToLoad")},
    "Container": {"image": y.string},
    "VirtualMachine": {"image": y.string},
    "UCX": {"image": y.string},
}


def _software(node: yaml.Node) -> dict[str, Any]:
    """``A2Software.UnmarshalYAML``: an unknown ``type`` fails the decoding; null (or no key) is type ``""``."""
    if y.is_null(node):
        return {}
    kind = y.struct({"type": y.string}, 'struct { Type string "yaml:\\"type\\"" }')(node).get("type", "")
    fields = _SOFTWARE_FIELDS.get(kind)
    if fields is None:
        raise y.YamlDecodeError(f"unknown software type: {_go_quote(kind)}")
    return {**y.struct(fields, f"orchestrator.A2{kind}Software")(node), "kind": kind}


_OPTIONAL_BOOL: Final = y.option(y.boolean)
_MODE: Final = y.struct({"mode": y.string}, "orchestrator.A2Ssh")
_DOCUMENT: Final = y.struct(
    {
        "name": y.string,
        "version": y.string,
        "software": _software,
        "title": y.option(y.string),
        "description": y.option(y.string),
        "license": y.option(y.string),  # decoded, never used
        "documentation": y.option(y.string),
        "features": y.option(
            y.struct(
                {
                    "multiNode": y.boolean,
                    "links": _OPTIONAL_BOOL,
                    "ipAddresses": _OPTIONAL_BOOL,
                    "folders": _OPTIONAL_BOOL,
                    "jobLinking": _OPTIONAL_BOOL,
                    "jobAuditLog": _OPTIONAL_BOOL,
                },
                "orchestrator.A2Features",
            )
        ),
        "modules": y.option(
            y.struct({"mountPath": y.string, "optional": y.sequence(y.string, "[]string")}, "orchestrator.A2Module")
        ),
        "parameters": y.mapping(_parameter, "map[string]orchestrator.A2Parameter"),
        "sbatch": y.mapping(y.string, "map[string]string"),
        "invocation": y.string,
        "ucx": y.option(
            y.struct(
                {
                    "executable": y.option(
                        y.struct(
                            {"manifestUrl": y.string, "publicKey": y.string, "binaryName": y.string},
                            "orchestrators.UcxExecutableDescription",
                        )
                    )
                },
                "orchestrators.UcxDescription",
            )
        ),
        "environment": y.mapping(y.string, "map[string]string"),
        "web": y.option(y.struct({"enabled": y.boolean, "port": y.option(y.int64)}, "orchestrator.A2Web")),
        "vnc": y.option(
            y.struct(
                {"enabled": y.boolean, "port": y.option(y.int64), "password": y.option(y.string)}, "orchestrator.A2Vnc"
            )
        ),
        "ssh": y.option(_MODE),
        "inference": y.option(_MODE),
        "extensions": y.sequence(y.string, "[]string"),
    },
    "orchestrator.A2Yaml",
)


# --- Normalize ---------------------------------------------------------------------------------------------------


def _capitalised(why: str) -> str:
    """``util.HttpErr`` upper-cases the first letter of every message."""
    return why[:1].upper() + why[1:]


def go_number(number: float) -> str:
    """Go's ``%v`` of an int64 or a float64 (shortest digits; exponent form from 1e+06 and below 1e-04)."""
    if isinstance(number, int):
        return str(number)
    if not math.isfinite(number) or number == 0:
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf", "0.0": "0", "-0.0": "-0"}[repr(number)]
    sign, digit_tuple, exponent = Decimal(repr(number)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # where the decimal point falls in digits
    prefix = "-" if sign else ""
    if point - 1 < -4 or point - 1 >= 6:
        mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if point - 1 < 0 else '+'}{abs(point - 1):02d}"
    padded = "0" * max(0, 1 - point) + digits + "0" * max(0, point - len(digits))
    point = max(point, 1)
    return prefix + padded[:point] + (f".{padded[point:]}" if padded[point:] else "")


def _json_number(number: float) -> float:
    """A float64 as Go's encoding/json writes it, read back: an integral value below 1e21 has no fraction."""
    if math.isfinite(number) and number.is_integer() and abs(number) < 1e21:
        return int(number)
    return number


class _Normalizer:
    """``A2Yaml.Normalize``: the checks in core2's order (the first failure is the answer) and the mapping."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.why: str | None = None

    def fail(self, why: str) -> None:
        if self.why is None:
            self.why = _capitalised(why)

    def text(self, value: str, field: str, *, multiline: bool = False, long: bool = False, empty: bool = False) -> str:
        """``util.ValidateString``: trimmed; at most 1 KiB (1 MiB long), not empty, one line, unless allowed."""
        trimmed = value.strip(_GO_SPACE)
        size = len(trimmed.encode())
        if size > (_LONG_STRING_BYTES if long else _SHORT_STRING_BYTES):
            self.fail(f"{field} is too long")
        elif not empty and not trimmed:
            self.fail(f"{field} must not be empty")
        elif not multiline and "\n" in trimmed:
            self.fail(f"{field} must not contain new-lines")
        return trimmed

    def application(self, created_at: int, public: bool) -> Application:
        doc = self.document
        name = self.text(doc.get("name", ""), "name")
        version = self.text(doc.get("version", ""), "version")
        title = self._optional_text("title")
        description = self._optional_text("description", multiline=True, long=True)
        documentation = self._optional_text("documentation")
        extensions = doc.get("extensions")
        if extensions is not None:
            extensions = [self.text(item, f"extensions[{i}]") for i, item in enumerate(extensions)]
        tool = self._tool(name, version, title, description)
        parameters = [self._parameter(key, value) for key, value in doc.get("parameters", {}).items()]
        environment = self._words("environment")
        sbatch = self._words("sbatch")
        modules = doc.get("modules")
        vnc, web, application_type = self._interactive()
        ssh = self._mode("ssh", SSH_MODES)
        inference = self._mode("inference", INFERENCE_MODES)
        ucx = self._ucx()
        if self.why is not None:
            raise ApplicationRefusedError(400, self.why)
        features = doc.get("features") or {}
        return Application(
            metadata=ApplicationMetadata(
                name=name,
                version=version,
                authors=["UCloud"],
                title=name if title is None else title,
                description=description or "",
                website=documentation or "",
                public=public,
                flavor_name=None,
                group=dict(NO_GROUP),
                created_at=created_at,
            ),
            invocation=ApplicationInvocation(
                tool=ToolReference(
                    name=name,
                    version=version,
                    tool=Tool(owner="_ucloud", created_at=created_at, modified_at=created_at, description=tool),
                ),
                invocation=[InvocationParameter(type="jinja", template=doc.get("invocation", ""))],
                ucx=ucx,
                parameters=parameters,
                output_file_globs=["*"],
                application_type=application_type,
                vnc=vnc,
                web=web,
                ssh=ssh,
                inference=inference,
                container=ContainerDescription(change_working_directory=True, run_as_root=True, run_as_real_user=False),
                environment=environment,
                allow_additional_mounts=features.get("folders"),
                allow_additional_peers=features.get("jobLinking"),
                allow_multi_node=features.get("multiNode", False),
                allow_public_ip=features.get("ipAddresses"),
                allow_public_link=features.get("links"),
                job_audit_log_is_enabled=features.get("jobAuditLog"),
                file_extensions=extensions,
                license_servers=None,
                modules=None
                if modules is None
                else ModulesDescription(mount_path=modules.get("mountPath", ""), optional=modules.get("optional")),
                sbatch=sbatch,
            ),
            favorite=False,
            versions=None,
        )

    def _optional_text(self, key: str, **flags: bool) -> str | None:
        value = self.document.get(key)
        return None if value is None else self.text(value, key, **flags)

    def _tool(self, name: str, version: str, title: str | None, description: str | None) -> ToolDescription:
        software = self.document.get("software") or {}
        kind = software.get("kind", "")
        tool = ToolDescription(
            info=NameAndVersion(name=name, version=version),
            default_number_of_nodes=1,
            default_time_allocation=SimpleDuration(hours=1),
            required_modules=None,
            authors=["UCloud"],
            title=name if title is None else title,
            description=description or "",
            backend=BACKENDS.get(kind, ""),
        )
        if kind not in BACKENDS:
            self.fail("invalid enumeration specified in 'software.type'")
        elif kind == "Native":
            load = software.get("load") or []
            applications = [
                {
                    "name": self.text(item.get("name", ""), f"software.load[{i}].name"),
                    "version": self.text(item.get("version", ""), f"software.load[{i}].version"),
                }
                for i, item in enumerate(load)
            ]
            # A nil Go slice: an empty `load` is written as null (seen on the real Core).
            tool.load_instructions = {"type": "Native", "applications": applications or None}
        else:
            tool.image = tool.container = self.text(software.get("image", ""), "software.image")
        return tool

    def _parameter(self, name: str, parameter: dict[str, Any]) -> ApplicationParameter:
        kind = parameter.get("kind", "")
        mapped = ApplicationParameter(type=PARAMETER_TYPES.get(kind, ""), name=name)
        name = self.text(name, f"parameters.{name}")  # only the messages see it trimmed
        default = parameter.get("defaultValue")
        if kind in ("Integer", "FloatingPoint"):
            self._check_numbers(name, parameter)
            if default is not None:
                mapped.default_value = default if kind == "Integer" else _json_number(default)
        elif kind == "Boolean":
            mapped.true_value, mapped.false_value = "true", "false"
            mapped.default_value = default
        elif kind in ("Text", "TextArea"):
            mapped.default_value = default
        elif kind == "Enumeration":
            mapped.default_value = default
            options = parameter.get("options")
            if default is not None and not any(option.get("value", "") == default for option in options or []):
                self.fail(f"{name}.defaultValue must be present in options")
            if options is not None:
                mapped.options = [
                    EnumOption(
                        name=self.text(option.get("title", ""), f"{name}.options[{i}].title"),
                        value=self.text(option.get("value", ""), f"{name}.options[{i}].value"),
                    )
                    for i, option in enumerate(options)
                ]
        mapped.title = self.text(parameter.get("title", ""), name)
        mapped.description = self.text(
            parameter.get("description", ""), f"{name}.description", multiline=True, empty=True
        )
        mapped.optional = parameter.get("optional", False)
        return mapped

    def _check_numbers(self, name: str, parameter: dict[str, Any]) -> None:
        default, low, high, step = (parameter.get(key) for key in ("defaultValue", "min", "max", "step"))
        if default is not None and low is not None and default < low:
            self.fail(f"{name} default value must not be lower than the minimum value")
        if low is not None and high is not None and low > high:
            self.fail(f"{name} min value must not exceed max value ({go_number(low)} > {go_number(high)})")
        if step is not None and step <= 0:
            self.fail(f"{name} step value must be > 0")

    def _words(self, key: str) -> dict[str, InvocationParameter]:
        """``environment``/``sbatch``: each value one ``word``, key and value checked and trimmed."""
        words = {}
        for name, value in self.document.get(key, {}).items():
            trimmed = self.text(name, f"{key}.{name} (key)")
            words[trimmed] = InvocationParameter(type="word", word=self.text(value, f"{key}.{trimmed} (value)"))
        return dict(sorted(words.items()))

    def _interactive(self) -> tuple[VncDescription | None, WebDescription | None, str]:
        """VNC when ``vnc.enabled``; WEB whenever ``web`` is there (the web description only when enabled)."""
        vnc, web = self.document.get("vnc"), self.document.get("web")
        application_type = "BATCH"
        vnc_description = web_description = None
        if vnc is not None and vnc.get("enabled", False):
            application_type = "VNC"
            self._check_port("vnc.port", vnc.get("port"))
            vnc_description = VncDescription(password=vnc.get("password") or "", port=vnc.get("port") or 0)
        if web is not None:
            application_type = "WEB"
            self._check_port("web.port", web.get("port"))
            if web.get("enabled", False):
                port = web.get("port")
                web_description = WebDescription(port=80 if port is None else port)
        return vnc_description, web_description, application_type

    def _check_port(self, field: str, port: int | None) -> None:
        if port is not None and port <= 0:
            self.fail(f"{field} must not be <= 0")
        elif port is not None and port > MAX_PORT:
            self.fail(f"{field} must be < 65536")

    def _mode(self, key: str, modes: Mapping[str, str]) -> dict[str, Any] | None:
        section = self.document.get(key)
        if section is None:
            return None
        mode = section.get("mode", "")
        if mode not in modes:
            self.fail(f"invalid enumeration specified in '{key}.mode'")
        return {"mode": modes.get(mode, "")}

    def _ucx(self) -> dict[str, Any] | None:
        """``validateUcxExecutableMetadataSection``: a manifest that is built in, or HTTPS with an ed25519 key."""
        ucx = self.document.get("ucx")
        if ucx is None:
            return None
        executable = ucx.get("executable")
        if executable is None:
            return {"executable": None}
        full = {key: executable.get(key, "") for key in ("manifestUrl", "publicKey", "binaryName")}
        field, url = "ucx.executable", full["manifestUrl"]
        if not url.strip(_GO_SPACE):
            self.fail(f"{field}.manifestUrl is required")
        elif url.startswith("builtin://"):
            builtin = url.removeprefix("builtin://")
            if builtin in ("", ".", "..") or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in builtin):
                self.fail(f"{field}.manifestUrl must contain a valid built-in executable name")
        elif not url.startswith("https://"):
            self.fail(f"{field}.manifestUrl must be an HTTPS URL")
        elif not full["publicKey"].strip(_GO_SPACE):
            self.fail(f"{field}.publicKey is required")
        elif not full["publicKey"].startswith("ed25519:"):
            self.fail(f"{field}.publicKey must use the ed25519: prefix")
        elif not full["binaryName"].strip(_GO_SPACE):
            self.fail(f"{field}.binaryName is required")
        return {"executable": full}

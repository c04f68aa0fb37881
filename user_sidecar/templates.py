"""sbatch scripts from the application catalogue, with every value quoted for the shell.

An application (``catalogue.yaml``) declares its parameters and a Jinja2 template of its
invocation; ``sbatch.j2`` wraps the rendered invocation with the ``#SBATCH`` directives
and the ``UCLOUD_*`` variables. Rules that keep a parameter from ever becoming code:

* **Every expression is one quoted shell word.** The Jinja environment's ``finalize``
  hook passes everything a template prints through :func:`shell_quote` (``shlex.quote``),
  the shell's counterpart of HTML autoescaping. Only :class:`ShellText` is printed as
  is, and templates cannot make one (the environment is sandboxed; Jinja's ``|safe``
  gives ``Markup``, which is quoted like any other string). ``{{ x | sh }}`` is the same
  quoting, for templates that want to say so.
* **Only declared parameters, of the declared type.** :func:`bind_parameters` refuses
  values of another type, numbers out of range, text with a NUL character (no program
  argument can hold one), text that is not valid Unicode, and text over the declared
  length; each with a readable message. Values of names the application does not
  declare are dropped, as IM2 does (Core adds its own, e.g. ``ucMetricSampleRate``);
  only ``_injected_*`` ones (IM2's convention for provider-made parameters) reach the
  template, checked like a parameter of their own type.
* **Directives are built here, not by templates**, from validated values: a partition
  or job name with a space, quote, ``$`` or newline is refused rather than quoted.

Templates, the catalogue and the Jinja environment are loaded and compiled once, in
the bridge's fork server, before any instance is forked: an instance cannot read the
installation's files (they may live in a directory only root can enter).
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

# Moved to ucim.common.app_templates; re-exported here until app.py, views.py and jobs.py are rewired.
from ucim.common.app_templates import InvalidJobError as InvalidJobError  # noqa: PLC0414
from ucim.common.instance_api import SubmitRequest
from ucim.common.resources import ParameterValue
from ucim.common.slurm_parsing import minutes_to_slurm_time

BASE_TEMPLATE = Path(__file__).with_name("sbatch.j2")

log = logging.getLogger(__name__)

# Text parameters above this many bytes are refused unless the application allows more;
# Linux limits one program argument to 128 KiB.
DEFAULT_MAX_TEXT_BYTES: Final = 65_536
MAX_ARGUMENT_BYTES: Final = 131_072

# Values that appear in #SBATCH lines and paths: no whitespace, quotes, $, \ or controls.
_DIRECTIVE_VALUE: Final = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")
# A UCloud job id becomes a folder name; a Slurm job name is looked up with squeue -n.
JOB_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
JOB_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_NUMBER_LIMIT: Final = 2**63
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the base template uses; parameters may not shadow them.
_RESERVED: Final = frozenset(
    {"directives", "job_id", "job_folder", "slurm_job_name", "application", "version", "nodes", "cpus_per_node",
     "memory_mb_per_node", "gpus_per_node", "time_limit_minutes", "body"}
)  # fmt: skip

# Undeclared parameters with this prefix are kept (IM2 job_parameters.go keeps them too).
INJECTED_PREFIX: Final = "_injected_"

ParameterKind = Literal["text", "integer", "floating_point", "boolean"]
Scalar = str | int | float | bool

_SCALAR_KINDS: Final = frozenset(get_args(ParameterKind))
_TYPE_WORDS: Final[Mapping[str, str]] = {
    "text": "text",
    "integer": "an integer",
    "floating_point": "a number",
    "boolean": "true or false",
}


class CatalogueError(ValueError):
    """The catalogue file is wrong; the message says where."""


class ShellText(str):
    """Text that is already safe to print into a script as it is (quoted or validated)."""

    __slots__ = ()


def shell_quote(value: object) -> ShellText:
    """One shell word holding exactly ``value``; the ``finalize`` hook of every template."""
    if isinstance(value, ShellText):
        return value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | str):
        text = str(value)
    else:
        raise InvalidJobError(f"a template printed a {type(value).__name__}, which has no shell form")
    if "\x00" in text:
        raise InvalidJobError("a value holds a NUL character, which no shell word can")
    return ShellText(shlex.quote(text))


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=False,
        finalize=shell_quote,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = shell_quote
    return env


# --- the catalogue ---------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ParameterSpec(_Spec):
    type: ParameterKind
    description: str = ""
    optional: bool = False
    default: Scalar | None = None
    min: float | None = None
    max: float | None = None
    max_length: int = Field(default=DEFAULT_MAX_TEXT_BYTES, ge=1, le=MAX_ARGUMENT_BYTES)

    @property
    def required(self) -> bool:
        return not self.optional and self.default is None


class ApplicationSpec(_Spec):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    title: str = ""
    description: str = ""
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    template: str = Field(min_length=1)

    @field_validator("parameters")
    @classmethod
    def _names_are_identifiers(cls, parameters: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in parameters:
            if not _IDENTIFIER.match(name) or name in _RESERVED:
                raise ValueError(f"parameter name {name!r} must be an identifier and not one of {sorted(_RESERVED)}")
        return parameters


class CatalogueFile(_Spec):
    applications: list[ApplicationSpec]


@dataclass(frozen=True, slots=True)
class Application:
    spec: ApplicationSpec
    template: Template

    @property
    def key(self) -> str:
        return f"{self.spec.name}@{self.spec.version}"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The applications an instance can run, compiled; built once per fork server."""

    applications: Mapping[tuple[str, str], Application]
    base: Template

    def find(self, name: str, version: str) -> Application:
        app = self.applications.get((name, version))
        if app is None:
            known = ", ".join(f"{n}@{v}" for n, v in sorted(self.applications)) or "none"
            raise InvalidJobError(f"unknown application {name}@{version} (this provider offers: {known})")
        return app


def parse_catalogue(text: str, base_template: str, *, source: str = "catalogue") -> Catalogue:
    """A compiled catalogue from YAML text; CatalogueError says what is wrong."""
    try:
        data = CatalogueFile.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as error:
        raise CatalogueError(f"{source}: {error}") from error
    env = _environment()
    applications: dict[tuple[str, str], Application] = {}
    for spec in data.applications:
        key = (spec.name, spec.version)
        if key in applications:
            raise CatalogueError(f"{source}: {spec.name}@{spec.version} is listed twice")
        try:
            applications[key] = Application(spec=spec, template=env.from_string(spec.template))
        except TemplateError as error:
            raise CatalogueError(f"{source}: template of {spec.name}@{spec.version}: {error}") from error
    return Catalogue(applications=applications, base=env.from_string(base_template))


def load_catalogue(path: Path, base_template: Path = BASE_TEMPLATE) -> Catalogue:
    return parse_catalogue(path.read_text(), base_template.read_text(), source=str(path))


# --- parameters ------------------------------------------------------------------


def _check_value(name: str, spec: ParameterSpec, value: object) -> Scalar:
    """``value`` as the declared type, or InvalidJobError."""
    wrong = InvalidJobError(f"parameter {name!r} must be {_TYPE_WORDS[spec.type]}, not {type(value).__name__}")
    if spec.type == "text":
        if not isinstance(value, str):
            raise wrong
        return _check_text(name, spec, value)
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong
    if spec.type == "integer" and not isinstance(value, int):
        if not value.is_integer():
            raise wrong
        value = int(value)
    return _check_number(name, spec, value)


def _check_text(name: str, spec: ParameterSpec, value: str) -> str:
    if "\x00" in value:
        raise InvalidJobError(f"parameter {name!r} holds a NUL character, which no program argument can")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidJobError(f"parameter {name!r} is not valid Unicode text") from error
    if size > spec.max_length:
        raise InvalidJobError(f"parameter {name!r} is {size} bytes long; at most {spec.max_length} are allowed")
    return value


def _check_number(name: str, spec: ParameterSpec, value: float) -> float:
    if not math.isfinite(value) or abs(value) >= _NUMBER_LIMIT:
        raise InvalidJobError(f"parameter {name!r} must be a finite number below {_NUMBER_LIMIT:.3g} in size")
    if spec.min is not None and value < spec.min:
        raise InvalidJobError(f"parameter {name!r} must be at least {spec.min:g}, not {value}")
    if spec.max is not None and value > spec.max:
        raise InvalidJobError(f"parameter {name!r} must be at most {spec.max:g}, not {value}")
    return value


def bind_parameters(app: ApplicationSpec, given: Mapping[str, ParameterValue]) -> dict[str, Scalar | None]:
    """The template's variables: each declared parameter, checked, or its default; then the ``_injected_*`` values."""
    bound: dict[str, Scalar | None] = {}
    for name, spec in app.parameters.items():
        parameter = given.get(name)
        if parameter is None or parameter.value is None:
            if spec.required:
                raise InvalidJobError(f"parameter {name!r} of {app.name}@{app.version} is required")
            bound[name] = None if spec.default is None else _check_value(name, spec, spec.default)
            continue
        if parameter.type != spec.type:
            raise InvalidJobError(f"parameter {name!r} must be of type {spec.type}, not {parameter.type}")
        bound[name] = _check_value(name, spec, parameter.value)
    undeclared = {name: value for name, value in given.items() if name not in app.parameters}
    bound.update(_injected(undeclared))
    dropped = sorted(set(undeclared) - set(bound))
    if dropped:
        # Core adds parameters of its own to every job (ucMetricSampleRate); IM2 drops them too.
        application = f"{app.name}@{app.version}"
        log.debug("undeclared parameters dropped", extra={"application": application, "dropped": dropped})
    return bound


def _injected(undeclared: Mapping[str, ParameterValue]) -> dict[str, Scalar]:
    """The ``_injected_*`` values of a scalar type, checked as an optional parameter of that type."""
    kept: dict[str, Scalar] = {}
    for name, parameter in undeclared.items():
        if name.startswith(INJECTED_PREFIX) and parameter.type in _SCALAR_KINDS and parameter.value is not None:
            spec = ParameterSpec(type=cast(ParameterKind, parameter.type), optional=True)
            kept[name] = _check_value(name, spec, parameter.value)
    return kept


# --- the script ------------------------------------------------------------------


def directive_value(what: str, value: str) -> str:
    if not _DIRECTIVE_VALUE.match(value):
        raise InvalidJobError(f"{what} {value!r} cannot be used in a Slurm directive")
    return value


def check_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.match(job_id):
        raise InvalidJobError(f"job id {job_id!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    return job_id


def check_job_name(name: str) -> str:
    if not JOB_NAME_PATTERN.match(name):
        raise InvalidJobError(f"Slurm job name {name!r} must be letters, digits, '.', '_', ':' or '-'")
    return name


def directives(request: SubmitRequest, job_folder: Path) -> list[ShellText]:
    """The #SBATCH options of a job, from its product placement and resources."""
    resources, slurm = request.resources, request.slurm
    options = []
    if slurm.partition:
        options.append(f"--partition={directive_value('partition', slurm.partition)}")
    if slurm.qos:
        options.append(f"--qos={directive_value('QOS', slurm.qos)}")
    if slurm.account:
        options.append(f"--account={directive_value('account', slurm.account)}")
    options += [
        f"--nodes={resources.nodes}",
        f"--cpus-per-task={resources.cpus_per_node}",
        f"--mem={resources.memory_megabytes_per_node}",
    ]
    if resources.gpus_per_node:
        options.append(f"--gpus-per-node={resources.gpus_per_node}")
    if resources.time_limit_minutes is not None:
        options.append(f"--time={minutes_to_slurm_time(resources.time_limit_minutes)}")
    options += [
        f"--job-name={check_job_name(request.slurm_job_name)}",
        '--comment="UCloud job"',
        f"--chdir={directive_value('job folder', str(job_folder))}",
        "--output=stdout.txt",
        "--error=stderr.txt",
    ]
    return [ShellText(option) for option in options]


def render_script(catalogue: Catalogue, request: SubmitRequest, job_folder: Path) -> str:
    """The complete sbatch script of a request; InvalidJobError for anything the user got wrong."""
    app = catalogue.find(request.application.name, request.application.version)
    variables = bind_parameters(app.spec, request.parameters)
    context: dict[str, Any] = {
        "directives": directives(request, job_folder),
        "job_id": check_job_id(request.job_id),
        "job_folder": str(job_folder),
        "slurm_job_name": request.slurm_job_name,
        "application": app.spec.name,
        "version": app.spec.version,
        "nodes": request.resources.nodes,
        "cpus_per_node": request.resources.cpus_per_node,
        "memory_mb_per_node": request.resources.memory_megabytes_per_node,
        "gpus_per_node": request.resources.gpus_per_node or 0,
        "time_limit_minutes": request.resources.time_limit_minutes,
    }
    try:
        body = app.template.render(variables)
        return catalogue.base.render(context, body=ShellText(body))
    except InvalidJobError:
        raise
    except TemplateError as error:
        raise InvalidJobError(f"application {app.key} cannot be rendered: {error}") from error

"""A job's ``job.sbatch`` from Core's application, rendered in the user's instance (PROTOCOL-APPS §5-§8).

:func:`render_job` is pure: the instance resolves the job folder and the input files (as the user) first,
and writes what it returns. Jinja-mode applications (one ``jinja`` invocation part, what v2 YAML makes)
are preprocessed (``{- applicationLoad -}`` and friends, from the site's load instructions) and rendered
with bash autoescape (``ucim.common.app_templates``); legacy ones are built word by word, each word quoted.

The script, in this order: the shebang; the ``#SBATCH`` directives; for WEB/VNC applications the port
lines; the ``export`` lines (``UCLOUD_*``, then the application's ``environment``); ``module purge``/
``module load`` for a legacy tool's required modules; the rendered command.

Where ucim differs from the anchor (``SL/sbatch.go``), on purpose:

* directives are written in a fixed order (the table's, options the application adds sorted by name,
  then account, partition, parsable and comment), exports too (the anchor's are Go-map random);
* ``--job-name`` is the UCloudJob's Slurm job name (``ucim-<uid>``), not ``'<jobId>'``: submission is
  idempotent on it and the monitor finds jobs by it, so applications cannot change it either;
* ``sbatch(k, v)`` and the ``sbatch:`` map take only the options of an allow list
  (``app_templates.SBATCH_OPTIONS``); anything else is a readable error, not a silently ignored or
  (by an option prefix such as ``--acc``) honoured directive, and every value is quoted for sbatch;
* a value with a line break prints as ``$'…'`` (one line), so no value can start a script line;
* a render error is an InvalidJobError (HTTP 400), never ``# Failure during generation …`` submitted;
* ``env`` parts expand the variable (``"${VAR}"``); the anchor quotes it into the literal text ``$VAR``;
* a ``jinja`` argument or environment part is rendered unescaped and quoted once, as a whole (the anchor
  escapes the values inside and then quotes the whole again, so ``'x'`` arrived with its quotes);
* ``#SBATCH --parsable`` has no trailing space; ``UCLOUD_MACHINE_*_MODEL`` are empty (ucim's products have
  no models); ``script()`` is not offered (the anchor's cannot work, PROTOCOL-APPS §12.2).
"""

from __future__ import annotations

import re
import secrets
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from ucim.common.app_templates import (
    PREPROCESSOR_FUNCTIONS,
    BoundValue,
    InvalidJobError,
    ShellText,
    argument_template,
    bind,
    check_directive_value,
    check_environment_name,
    check_sbatch_option,
    compile_template,
    is_jinja_invocation,
    jinja_source,
    preprocess,
    render,
)
from ucim.common.instance_api import SubmitRequest
from ucim.common.resources import (
    MAX_DYNAMIC_TARGETS,
    MAX_TARGET_CHARS,
    ApplicationRef,
    InvocationPart,
    JobInterface,
    ParameterValue,
)
from ucim.common.shell_words import argument_text, bash_word, sbatch_word, template_text
from ucim.user_sidecar.load_instructions import DEFAULT_POLICY, Resolved, SiteApplications, SrunConfig

# libyaml's dumper when PyYAML has it: a tenth of the pure-Python one's time.
_YAML_DUMPER: Final = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
SCRIPT_SHEBANG: Final = "#!/usr/bin/env -S bash --login"
ALLOCATED_PORT_FILE: Final = "allocated-port.txt"
MODULES_PARAMETER: Final = "_injected_modules"
# The WEB/VNC port: 10000 + rand(40000), as the anchor.
PORT_RANGE: Final = range(10_000, 50_000)

# A UCloud job id becomes a folder name; a Slurm job name is looked up with squeue -n.
JOB_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
JOB_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
# Partition, QoS, account: no whitespace, quotes, $, \ or controls.
_PLACEMENT_VALUE: Final = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")
# The order of the directives the anchor's table lists before the ones an application adds ...
_LEADING: Final = ("chdir", "cpus-per-task", "mem", "gpus-per-task", "time", "nodes", "job-name", "output", "error",
                   "qos")  # fmt: skip
# ... and of the ones nobody else sets, last.
_TRAILING: Final = ("account", "partition", "parsable", "comment")
UCLOUD_COMMENT: Final = "UCloud job"


@dataclass(frozen=True, slots=True)
class JobScript:
    script: str  # job.sbatch
    template: str | None  # job_template.j2: the template after preprocessing (Jinja mode)
    parameters_yaml: str | None  # job_template_params.yml: the context without functions (Jinja mode)
    dynamic_targets: tuple[JobInterface, ...] = ()  # its dynamicInterface(rank, type, target, port) calls
    port: int | None = None  # the WEB/VNC port the script allocates (also in allocated-port.txt)
    app_type: str = "BATCH"

    @property
    def interfaces(self) -> tuple[JobInterface, ...]:
        """The web and VNC servers the script starts: the application's own on ``port``, then the dynamic ones."""
        own = () if self.port is None else (JobInterface(type=typing.cast(Any, self.app_type), port=self.port),)
        return own + self.dynamic_targets


def check_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.match(job_id):
        raise InvalidJobError(f"job id {job_id!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    return job_id


def check_job_name(name: str) -> str:
    if not JOB_NAME_PATTERN.match(name):
        raise InvalidJobError(f"Slurm job name {name!r} must be letters, digits, '.', '_', ':' or '-'")
    return name


def _placement(what: str, value: str) -> str:
    if not _PLACEMENT_VALUE.match(value):
        raise InvalidJobError(f"{what} {value!r} cannot be used in a Slurm directive")
    return sbatch_word(value)


def render_job(
    request: SubmitRequest,
    job_folder: Path,
    site: SiteApplications,
    local_paths: Mapping[str, Path],
    *,
    port: int | None = None,
) -> JobScript:
    """The job script of ``request``; InvalidJobError says what is wrong (HTTP 400).

    ``local_paths``: the local path of every ``input_file``/``input_directory`` parameter with a value,
    resolved and checked as the user. ``port``: the WEB/VNC port (random in 10000-49999 when None).
    """
    check_job_id(request.job_id)
    app = request.application
    bound = bind(app, request.parameters, local_path=_local_path(local_paths))
    if app.type in ("WEB", "VNC") and port is None:
        port = PORT_RANGE.start + secrets.randbelow(len(PORT_RANGE))
    elif app.type == "BATCH":
        port = None
    job = _JobRender(request, job_folder, site, bound, port)
    return job.script()


def _local_path(local_paths: Mapping[str, Path]) -> Callable[[str, ParameterValue], str]:
    def local_path(name: str, value: ParameterValue) -> str:
        path = local_paths.get(name)
        if path is None:
            raise InvalidJobError(f"parameter {name!r}: its file {value.path!r} was not resolved")
        return str(path)

    return local_path


class _JobRender:
    """One render: the directives and dynamic targets the template's calls add up to."""

    def __init__(
        self,
        request: SubmitRequest,
        folder: Path,
        site: SiteApplications,
        bound: dict[str, BoundValue],
        port: int | None,
    ) -> None:
        self.request, self.folder, self.site, self.bound, self.port = request, folder, site, bound, port
        self.targets: list[JobInterface] = []
        self.directives = _default_directives(request, folder)
        self.ucloud = _ucloud_context(request, port)
        self.srun = site.srun
        self.context: dict[str, Any] = {
            **{name: value.context for name, value in bound.items() if value.context is not None},
            "ucloud": self.ucloud,
            "srun": self._srun_function,
            "sbatch": self._sbatch_function,
            "dynamicInterface": self._dynamic_interface,
        }

    def script(self) -> JobScript:
        app = self.request.application
        # The application's sbatch: map first; the template's sbatch() calls may override it.
        for key, part in (app.sbatch or {}).items():
            self._set_directive(key, " ".join(self._texts(part, f"sbatch option --{key}")).strip())
        template = parameters_yaml = None
        if is_jinja_invocation(app):
            session = _LoadSession(self.site, list(app.load or []), self._modules())
            template = preprocess(jinja_source(app), session.expand)
            self.srun = session.srun or self.site.srun
            values = {k: v for k, v in self.context.items() if not callable(v)}
            parameters_yaml = yaml.dump(values, Dumper=_YAML_DUMPER, sort_keys=True, allow_unicode=True)
            command = render(compile_template(template, where="the invocation"), self.context, where="the invocation")
        else:
            command = " ".join(self._invocation_words())
        exports = self._exports()
        return JobScript(
            script=self._layout(exports, command),
            template=template,
            parameters_yaml=parameters_yaml,
            dynamic_targets=tuple(self.targets),
            port=self.port,
            app_type=self.request.application.type,
        )

    # --- the template's functions ---

    def _srun_function(self) -> ShellText:
        return ShellText(self.srun.command + "".join(f" {bash_word(flag)}" for flag in self.srun.flags) + " ")

    def _sbatch_function(self, key: Any, value: Any = None) -> ShellText:
        key = template_text(key)
        if key == "gpus-per-task" and _is_number(value) and value <= 0:
            return ShellText("")  # the anchor ignores a request for no GPUs
        self._set_directive(key, value)
        return ShellText("")

    def _dynamic_interface(self, rank: Any, kind: Any, target: Any, port: Any) -> ShellText:
        if not _is_whole(rank) or rank < 0:
            raise InvalidJobError("dynamicInterface(): the rank must be a whole number, 0 or more")
        if kind not in ("WEB", "VNC"):
            raise InvalidJobError("dynamicInterface(): the type must be WEB or VNC")
        if not _is_whole(port) or not 1 <= port <= 65_535:
            raise InvalidJobError("dynamicInterface(): the port must be a whole number from 1 to 65535")
        name = template_text(target)
        if not 1 <= len(name) <= MAX_TARGET_CHARS:
            raise InvalidJobError(
                f"dynamicInterface(): the target must be a name of 1 to {MAX_TARGET_CHARS} characters"
            )
        if len(self.targets) >= MAX_DYNAMIC_TARGETS:
            raise InvalidJobError(f"dynamicInterface(): at most {MAX_DYNAMIC_TARGETS} targets in a job")
        self.targets.append(JobInterface(rank=rank, type=kind, target=name, port=port))
        return ShellText("")

    def _set_directive(self, key: str, value: Any) -> None:
        kind = check_sbatch_option(key)
        if kind == "value" and _is_number(value):
            self.directives[key] = f" {argument_text(value)}"  # a number prints bare, as the anchor's
        else:
            self.directives[key] = check_directive_value(key, kind, argument_text(value))

    # --- parameters as words ---

    def _modules(self) -> list[str]:
        modules = self.bound.get(MODULES_PARAMETER)
        return list(modules.context) if modules is not None and isinstance(modules.context, list) else []

    def _texts(self, part: InvocationPart, where: str) -> list[str]:
        """The argument texts of one invocation part (unquoted), by the anchor's argument rules."""
        if part.type == "word":
            return [part.word or ""]
        if part.type == "env":
            return [f"${check_environment_name(part.variable or '')}"]
        if part.type == "jinja":
            return [render(argument_template(part, where), self.context, where=where)]
        if part.type == "bool_flag":
            value = self.bound.get(part.variable_name or "")
            return [(part.flag or "").strip()] if value is not None and value.context is True else []
        return _variable_texts(part, self.bound)

    def _invocation_words(self) -> Iterator[str]:
        for index, part in enumerate(self.request.application.invocation):
            if part.type == "env":
                yield _expansion(part.variable or "")
            else:
                yield from map(bash_word, self._texts(part, f"invocation part {index + 1}"))

    def _exports(self) -> dict[str, str]:
        exports: dict[str, str] = {
            name: bash_word(argument_text(value)) for name, value in _variables("UCLOUD", self.ucloud)
        }
        for name, part in (self.request.application.environment or {}).items():
            if check_environment_name(name) in exports:
                continue  # the provider's UCLOUD_* win, as in the anchor
            where = f"environment variable {name}"
            exports[name] = (
                _expansion(part.variable or "") if part.type == "env" else bash_word(" ".join(self._texts(part, where)))
            )
        return exports

    # --- the script ---

    def _layout(self, exports: Mapping[str, str], command: str) -> str:
        lines = [SCRIPT_SHEBANG, *(f"#SBATCH --{key}{value}" for key, value in _ordered(self.directives)), ""]
        if self.port is not None:
            port_file = bash_word(str(self.folder / ALLOCATED_PORT_FILE))
            lines += [f"export UCLOUD_PORT={self.port}", f"echo {self.port} > {port_file}", ""]
        lines += [f"export {name}={value}" for name, value in exports.items()]
        lines.append("")
        modules = self.request.application.required_modules or []
        if modules:
            lines += ["module purge", *(f"module load {bash_word(module)}" for module in modules), ""]
        lines.append(command)
        return "\n".join(lines) + "\n"


def _default_directives(request: SubmitRequest, folder: Path) -> dict[str, str]:
    """The anchor's directive table (§7), each value as it follows ``--key``."""
    resources, slurm = request.resources, request.slurm
    directives = {
        "chdir": " " + sbatch_word(str(folder)),
        "cpus-per-task": f" {max(1, resources.cpus_per_node)}",
        "mem": f" {resources.memory_megabytes_per_node}",
    }
    if resources.gpus_per_node:
        directives["gpus-per-task"] = f" {resources.gpus_per_node}"
    if resources.time_limit_minutes is not None:
        hours, minutes = divmod(resources.time_limit_minutes, 60)
        directives["time"] = f" {hours:02d}:{minutes:02d}:00"
    directives |= {
        "nodes": f" {resources.nodes}",
        "job-name": " " + sbatch_word(check_job_name(request.slurm_job_name)),
        "output": " 'stdout.txt'",
        "error": " 'stderr.txt'",
    }
    if slurm.qos:
        directives["qos"] = " " + _placement("QOS", slurm.qos)
    if slurm.account:
        directives["account"] = " " + _placement("account", slurm.account)
    if slurm.partition:
        directives["partition"] = " " + _placement("partition", slurm.partition)
    return directives | {"parsable": "", "comment": " " + sbatch_word(UCLOUD_COMMENT)}


def _ordered(directives: Mapping[str, str]) -> list[tuple[str, str]]:
    fixed = set(_LEADING) | set(_TRAILING)
    keys = [k for k in _LEADING if k in directives]
    keys += sorted(k for k in directives if k not in fixed)
    keys += [k for k in _TRAILING if k in directives]
    return [(key, directives[key]) for key in keys]


def _ucloud_context(request: SubmitRequest, port: int | None) -> dict[str, Any]:
    """The ``ucloud`` variable (§5): the job, its machine, nodes, placement, application and port."""
    resources = request.resources
    context: dict[str, Any] = {
        "jobId": request.job_id,
        "machine": {
            "name": request.product.id,
            "category": request.product.category,
            "cpu": resources.cpus_per_node,
            "cpuModel": "",
            "memoryInGigs": resources.memory_megabytes_per_node // 1000,
            "memoryModel": "",
            "gpu": resources.gpus_per_node or 0,
            "gpuModel": "",
        },
        "nodes": resources.nodes,
        "partition": request.slurm.partition or "",
    }
    if request.slurm.qos:
        context["qos"] = request.slurm.qos
    context["application"] = {"name": request.application.name, "version": request.application.version}
    if port is not None:
        context |= {"webPort": port, "vncPort": port}
    return context


def _variables(prefix: str, context: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every leaf of ``context`` named by its path: ``machine.memoryInGigs`` -> ``UCLOUD_MACHINE_MEMORY_IN_GIGS``."""
    for key, value in context.items():
        name = f"{prefix}_{_upper_snake(key)}"
        if isinstance(value, Mapping):
            yield from _variables(name, value)
        else:
            yield name, value


def _upper_snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).upper()


def _expansion(variable: str) -> str:
    """An ``env`` part: the variable's value, expanded by bash as one word."""
    return f'"${{{check_environment_name(variable)}}}"'


def _variable_texts(part: InvocationPart, bound: Mapping[str, BoundValue]) -> list[str]:
    """A ``var`` part (IM2 ``JobBuildParameter``): each present variable with its prefix and suffix, in global ones."""
    present = [name for name in part.variable_names or [] if name in bound]
    if not present:
        return []  # nothing at all, not even prefixGlobal, when no variable has a value
    prefix_global, suffix_global, prefix, suffix = (
        (text or "").strip(" ")
        for text in (part.prefix_global, part.suffix_global, part.prefix_variable, part.suffix_variable)
    )
    middle: list[str] = []
    for name in present:
        main = ""
        if prefix:
            if part.is_prefix_variable_part_of_arg:
                main += prefix
            else:
                middle.append(prefix)
        main += bound[name].argument
        if part.is_suffix_variable_part_of_arg:
            middle.append(main + suffix)
        else:
            middle.append(main)
            if suffix:
                middle.append(suffix)
    if not prefix_global and not suffix_global:
        return middle
    words = ([prefix_global] if prefix_global else []) + middle + ([suffix_global] if suffix_global else [])
    return [word.strip() for word in words]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A name or version in a message printed into the script: nothing that Jinja or bash would read.
_MESSAGE_UNSAFE: Final = re.compile(r"[^A-Za-z0-9 ._:+@/,=-]")


def _message(text: str) -> str:
    return _MESSAGE_UNSAFE.sub("?", text)


# How many arguments each preprocessor function takes.
_ARGUMENT_COUNTS: Final[Mapping[str, tuple[int, ...]]] = {
    "versionResolver": (1, 2),
    "loadApplication": (2,),
    "unloadApplication": (2,),
} | dict.fromkeys(["applicationLoad", "applicationUnload", "systemLoad", "systemUnload"], (0,))


@dataclass
class _LoadSession:
    """The preprocessing of one template: load instructions resolved against the site's (§5)."""

    site: SiteApplications
    required: list[ApplicationRef]
    modules: list[str]
    policy: str = DEFAULT_POLICY
    target: str | None = None
    loaded: dict[tuple[str, str], Resolved | None] = field(default_factory=dict)
    srun: SrunConfig | None = None
    failed: bool = False

    def expand(self, name: str, args: list[str]) -> str:
        """What ``{- name(args) -}`` stands for; a comment line for a call it cannot make sense of (as IM2)."""
        if name not in PREPROCESSOR_FUNCTIONS:
            return f"\n# unknown function {_message(name)}\n"
        if len(args) not in _ARGUMENT_COUNTS[name]:
            return f"\n# invalid use of {name}: wrong number of arguments\n"
        if name == "versionResolver":
            self.target, self.policy = (None, args[0]) if len(args) == 1 else (args[0], args[1])
            return ""
        if name == "systemLoad":
            return self.site.system_load + "\n" + "".join(f"module load {bash_word(m)}\n" for m in self.modules)
        if name == "systemUnload":
            return self.site.system_unload
        return self._applications(name, args)

    def _applications(self, name: str, args: list[str]) -> str:
        unload = name in ("applicationUnload", "unloadApplication")
        if name in ("loadApplication", "unloadApplication"):
            return self._load(args[0], args[1], unload=unload)
        return "".join(self._load(app.name, app.version, unload=unload) + "\n" for app in self.required)

    def _load(self, name: str, version: str, *, unload: bool) -> str:
        if self.failed:
            return ""  # the script already exits at the first failed load
        resolved = self._resolve(name, version)
        if resolved is None:
            self.failed = True
            message = f"failed to load application {_message(name)}@{_message(version)}"
            return f"\n# {message}\n" if unload else f"\necho {bash_word(message)}\nexit 1\n"
        snippet = resolved.configuration.unload if unload else resolved.configuration.load
        # The version is plain (load_instructions checks it), so it can stand in a Jinja string literal.
        return (
            "{% set __appVersionOld = appVersion %}\n"
            f'{{% set appVersion = "{resolved.version}" %}}\n'
            f"{snippet}\n"
            "{% set appVersion = __appVersionOld %}\n"
        )

    def _resolve(self, name: str, version: str) -> Resolved | None:
        key = (name, version)
        if key not in self.loaded:
            policy = self.policy if self.target in (None, name) else DEFAULT_POLICY
            resolved = self.site.resolve(name, version, policy)
            self.loaded[key] = resolved
            if resolved is not None and resolved.configuration.srun is not None and self.srun is None:
                self.srun = resolved.configuration.srun
        return self.loaded[key]

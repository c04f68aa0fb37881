"""The site's applications configuration: what Core's load instructions mean on this cluster (PROTOCOL-APPS §1, §5).

Core names the software a job needs (``tool.loadInstructions``: ``python 3.11``); the site says how to
get it: a folder of ``*.yml``/``*.yaml`` documents, each

.. code-block:: yaml

    name: python                         # matched against the load instruction's name
    configurations:
      - versions: ["3.11.4", "3.12.1"]   # the versions this entry serves
        load: |                          # Jinja, rendered in the job script ({{ appVersion }} = the version)
          module load Python/{{ appVersion }}
        unload: "module unload Python"   # optional
        readme: "…"                      # optional, shown to the user as a README parameter
        srun: {command: srun, flags: []} # optional srun for jobs that load this application

A file over 16 MiB is skipped with a warning; one file may hold several documents split on ``\\n---\\n``
(IM2 ``config/slurm.go``). Besides the folder: ``system_load``/``system_unload`` (``{- systemLoad -}``),
and the default ``srun``, ``modules_file`` (Lmod's spider output: the module picker).

The bridge loads this once, as root, before it forks any instance (an instance cannot read files only
root may read); :class:`SiteApplications` is immutable and shared by every instance.

Version resolution is the anchor's (``SL/sbatch.go`` ``compareVersions``/``FindApplication``): versions
sorted newest first (``v``/``version`` prefixes stripped, dot-separated parts compared as numbers when
both are, as text otherwise, a ``-suffix`` ignored), "matching" = equal parts as far as the shorter goes.
Policies: ``loose`` (a match, else the newest), ``loose-forward`` (a match, else the newest if it is not
older), ``loose-backward`` (a match, else the newest that is not newer), ``strict`` (a match only); any
other text means the requested version exactly. (The anchor cuts a ``-suffix`` one character short.)
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

log = logging.getLogger(__name__)

MAX_FILE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_POLICY: Final = "loose"
POLICIES: Final = frozenset({"loose", "loose-forward", "loose-backward", "strict"})
# A version is printed into a Jinja string literal ({% set appVersion = "…" %}) and into scripts.
_VERSION: Final = re.compile(r'^[^"\\{}%\x00-\x1f\x7f]+$')
_DOCUMENT_SEPARATOR: Final = "\n---\n"


class LoadInstructionsError(ValueError):
    """The applications configuration is wrong; the message names the file."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class SrunConfig(_Config):
    command: str = Field(default="srun", min_length=1)
    flags: tuple[str, ...] = ()


class AppConfiguration(_Config):
    versions: tuple[str, ...] = Field(min_length=1)
    load: str = ""
    unload: str = ""
    readme: str | None = None
    srun: SrunConfig | None = None

    @field_validator("versions")
    @classmethod
    def _plain_versions(cls, versions: tuple[str, ...]) -> tuple[str, ...]:
        for version in versions:
            if not _VERSION.match(version):
                raise ValueError(f"version {version!r} may not hold quotes, backslashes, braces, % or controls")
        return versions


class AppDocument(_Config):
    name: str = Field(min_length=1)
    configurations: tuple[AppConfiguration, ...] = Field(min_length=1)


class ApplicationsSettings(BaseModel):
    """Where the site's applications configuration is; part of the instances' settings."""

    # The folder of *.yml/*.yaml documents; None: no load instructions (every application load fails).
    folder: Path | None = None
    system_load: str = ""
    system_unload: str = ""
    srun: SrunConfig = Field(default_factory=SrunConfig)
    # Lmod's spider output (``spider -o jsonSoftwarePage <MODULEPATH>``, what IM2 reads, or ``-o spider-json``).
    modules_file: Path | None = None


class Module(_Config):
    """One module of the module picker (Core's ``supportedModules`` item; dump with ``by_alias=True``)."""

    name: str
    description: str = ""
    short_description: str = ""
    depends_on: tuple[tuple[str, ...], ...] = ()
    documentation_url: str = ""


@dataclass(frozen=True, slots=True)
class Resolved:
    """An application load instruction resolved to a configured version."""

    name: str
    requested: str
    version: str
    configuration: AppConfiguration


@dataclass(frozen=True, slots=True)
class SiteApplications:
    """The site's applications configuration, loaded; immutable, shared by every instance."""

    applications: Mapping[str, tuple[AppConfiguration, ...]] = field(default_factory=dict)
    system_load: str = ""
    system_unload: str = ""
    srun: SrunConfig = field(default_factory=SrunConfig)
    modules: tuple[Module, ...] = ()

    def resolve(self, name: str, version: str, policy: str = DEFAULT_POLICY) -> Resolved | None:
        """The configured version that serves ``name`` ``version`` under ``policy``, or None."""
        configurations = self.applications.get(name)
        if not configurations:
            return None
        chosen = choose_version(version, _sorted_versions(configurations), policy)
        if chosen is None:
            return None
        configuration = next(c for c in configurations if chosen in c.versions)
        return Resolved(name=name, requested=version, version=chosen, configuration=configuration)

    def readme(self, name: str, version: str, policy: str = DEFAULT_POLICY) -> str | None:
        """The README of the configuration that serves ``name`` ``version``, if it has one."""
        resolved = self.resolve(name, version, policy)
        return None if resolved is None else resolved.configuration.readme


# --- versions -----------------------------------------------------------------------------------------


def _tokens(version: str) -> list[str]:
    text = version.replace("version", "").replace("Version", "")
    if len(text) >= 2 and text[0] == "v" and text[1].isdigit():
        text = text[1:]
    return [token.split("-", 1)[0] for token in text.strip().split(".")]


def compare_versions(a: str, b: str, *, prefix_is_equal: bool = False) -> int:
    """-1, 0 or 1 as ``a`` is older, the same or newer than ``b``.

    ``prefix_is_equal``: compare as many parts as the shorter has (``3.11`` matches ``3.11.4``).
    """
    left, right = _tokens(a), _tokens(b)
    for index in range(max(len(left), len(right))):
        if prefix_is_equal and (index >= len(left) or index >= len(right)):
            break
        x = left[index] if index < len(left) else "0"
        y = right[index] if index < len(right) else "0"
        order = _compare_token(x, y)
        if order:
            return order
    return 0


def _compare_token(x: str, y: str) -> int:
    numbers = _as_int(x), _as_int(y)
    if numbers[0] is not None and numbers[1] is not None:
        return (numbers[0] > numbers[1]) - (numbers[0] < numbers[1])
    return (x > y) - (x < y)


def _as_int(token: str) -> int | None:
    # Go's strconv.Atoi: an optional sign and decimal digits.
    return int(token) if re.fullmatch(r"[+-]?[0-9]+", token) else None


def _sorted_versions(configurations: tuple[AppConfiguration, ...]) -> list[str]:
    versions = [version for configuration in configurations for version in configuration.versions]
    return sorted(versions, key=functools.cmp_to_key(_newest_first))


def _newest_first(a: str, b: str) -> int:
    return compare_versions(b, a)


def choose_version(requested: str, newest_first: list[str], policy: str) -> str | None:
    """The version ``policy`` picks for ``requested`` among ``newest_first`` (§5), or None."""
    if not newest_first:
        return None
    if policy not in POLICIES:
        return requested if requested in newest_first else None
    match = next((v for v in newest_first if compare_versions(requested, v, prefix_is_equal=True) == 0), None)
    if match is not None or policy == "strict":
        return match
    newest = newest_first[0]
    if policy == "loose":
        return newest
    if policy == "loose-forward":
        return None if compare_versions(newest, requested, prefix_is_equal=True) < 0 else newest
    return next((v for v in newest_first if compare_versions(v, requested) <= 0), None)


# --- loading ------------------------------------------------------------------------------------------


def load_site_applications(settings: ApplicationsSettings) -> SiteApplications:
    """The site's configuration from ``settings``; LoadInstructionsError names the file that is wrong."""
    applications: dict[str, tuple[AppConfiguration, ...]] = {}
    if settings.folder is not None:
        for document in load_documents(settings.folder):
            # Two documents of one name add up, as the anchor's map of lists does.
            applications[document.name] = applications.get(document.name, ()) + document.configurations
    return SiteApplications(
        applications=applications,
        system_load=settings.system_load,
        system_unload=settings.system_unload,
        srun=settings.srun,
        modules=() if settings.modules_file is None else load_modules(settings.modules_file),
    )


def load_documents(folder: Path) -> list[AppDocument]:
    """Every document of ``folder``'s ``*.yml``/``*.yaml`` files, in file name order."""
    if not folder.is_dir():
        raise LoadInstructionsError(f"{folder}: the applications folder does not exist")
    documents: list[AppDocument] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file()):
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            log.warning("applications file skipped: over 16 MiB", extra={"file": str(path), "bytes": size})
            continue
        documents += parse_documents(path.read_text(encoding="utf-8"), source=str(path))
    return documents


def parse_documents(text: str, *, source: str) -> list[AppDocument]:
    """The documents of one file's text; LoadInstructionsError says which document and what is wrong."""
    documents = []
    for index, chunk in enumerate(text.split(_DOCUMENT_SEPARATOR), start=1):
        where = source if _DOCUMENT_SEPARATOR not in text else f"{source}, document {index}"
        try:
            data = yaml.safe_load(chunk)
        except yaml.YAMLError as error:
            raise LoadInstructionsError(f"{where}: not YAML: {error}") from error
        if data is None:
            continue  # an empty document (a trailing separator)
        try:
            documents.append(AppDocument.model_validate(data))
        except ValidationError as error:
            raise LoadInstructionsError(f"{where}: {_readable(error)}") from error
    return documents


def _readable(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in error.errors()[:5])


# --- modules ------------------------------------------------------------------------------------------


def load_modules(path: Path) -> tuple[Module, ...]:
    """The modules of an Lmod spider file; unreadable or not understood: none, with a warning (as IM2)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        modules = parse_modules(data)
    except (OSError, ValueError, TypeError, KeyError) as error:
        log.warning("modules file not loaded", extra={"file": str(path), "error": str(error)})
        return ()
    log.info("modules loaded", extra={"file": str(path), "modules": len(modules)})
    return modules


def parse_modules(data: Any) -> tuple[Module, ...]:
    """Modules from ``spider -o jsonSoftwarePage`` (a list of packages, IM2's) or ``-o spider-json`` (a dict)."""
    if isinstance(data, list):
        return _from_software_page(data)
    if isinstance(data, dict):
        return _from_spider_json(data)
    raise TypeError("a spider file is a JSON list (jsonSoftwarePage) or object (spider-json)")


def _from_software_page(packages: list[dict[str, Any]]) -> tuple[Module, ...]:
    """IM2 ``slurm_modules.go``: one module per full name; the same name again (another parent) adds its parents."""
    modules: list[Module] = []
    for package in packages:
        url = package.get("url") or ""
        short = short_description(package.get("description") or "")
        for version in package.get("versions") or []:
            parents = tuple(tuple(choice) for choice in version.get("parent") or [])
            if modules and modules[-1].name == version["full"]:
                modules[-1] = modules[-1].model_copy(update={"depends_on": modules[-1].depends_on + parents})
                continue
            modules.append(
                Module(
                    name=version["full"],
                    description=(version.get("help") or "").strip(),
                    short_description=short,
                    depends_on=parents,
                    documentation_url=url,
                )
            )
    return tuple(modules)


def _from_spider_json(packages: dict[str, dict[str, dict[str, Any]]]) -> tuple[Module, ...]:
    """``spider-json``: package -> module file -> its fields; as the software page's, hidden modules left out."""
    modules: dict[str, Module] = {}
    for files in packages.values():
        for entry in sorted(files.values(), key=lambda e: str(e.get("pV", ""))):
            if entry.get("hidden"):
                continue
            name = entry["fullName"]
            parents = tuple(tuple(choice) for choice in entry.get("parentAA") or [])
            if name in modules:
                modules[name] = modules[name].model_copy(update={"depends_on": modules[name].depends_on + parents})
                continue
            modules[name] = Module(
                name=name,
                description=(entry.get("help") or "").strip(),
                short_description=short_description(entry.get("Description") or ""),
                depends_on=parents,
                documentation_url=entry.get("URL") or "",
            )
    return tuple(modules.values())


def short_description(text: str) -> str:
    """IM2's ``ensureModuleDescriptionShort``: the first sentence, at most about 120 characters."""
    normalized = text.strip().replace("\n", " ")
    if "." in normalized:
        return short_description(normalized[: normalized.index(".")])
    if len(normalized) < 120:
        return normalized
    words: list[str] = []
    for word in normalized.split(" "):
        if len(" ".join([*words, word])) > 120:
            break
        words.append(word)
    return " ".join(words).strip() + "..."

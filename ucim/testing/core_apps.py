"""Applications as UCloud/Core keeps them, and the checks Core makes of a job's parameters (for the Core stand-in).

In UCloud the catalogue lives in Core: an admin uploads an application as YAML (``PUT /api/hpc/apps/upload``,
core2 app_catalog.go ``AppStudioUploadApp``), a job names one by name and version, Core refuses a job whose
application it does not hold (400 "Unknown application requested") or whose parameters do not fit it
(job.go ``jobsValidateForSubmission``), and sends the rest with the application as ``status.resolvedApplication``.

The stand-in starts with the library in ``ucim/testing/apps`` (v2 YAML, one application per file). Not modelled:
roles (Core takes uploads from admins only), publishing and ACLs (any user may run any application here; ``public``
stays false, as an upload leaves it), groups, flavours, stars, and a provider's dynamic parameters (Core asks the
provider for them when a job names a parameter the application does not declare).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

# ApplicationParameter type → the only AppParameterValue type Core accepts for it (jobsValidateForSubmission),
# the same table as IM2's JobVerifyParameterType.
from ucim.common.app_parameters import VALUE_TYPES
from ucim.common.protocol import Application, AppParameterValue, NameAndVersion, SimpleDuration
from ucim.testing.app_yaml import ApplicationRefusedError, application_from_yaml

LIBRARY: Final = Path(__file__).with_name("apps")


@cache
def library() -> tuple[Application, ...]:
    """The applications of ``ucim/testing/apps``, converted once (the stores hand out copies)."""
    return tuple(application_from_yaml(path.read_text()) for path in sorted(LIBRARY.glob("*.yaml")))


@dataclass
class ApplicationStore:
    """Core's application catalogue, by (name, version)."""

    applications: dict[tuple[str, str], Application] = field(default_factory=dict)

    @classmethod
    def with_library(cls) -> ApplicationStore:
        return cls({(app.metadata.name, app.metadata.version): app for app in library()})

    def upload(self, text: str) -> Application:
        """Store a v2 YAML document as Core does, or ``ApplicationRefusedError`` with Core's status and words."""
        application = application_from_yaml(text)
        key = (application.metadata.name, application.metadata.version)
        if key in self.applications:
            # core2 stores the application's tool first, under the same name and version, and that fails first.
            raise ApplicationRefusedError(409, "A tool with this version already exist")
        self.applications[key] = application
        return application

    def resolve(self, application: NameAndVersion) -> Application:
        """A copy of the application a job names; ValueError for one Core does not hold (it would refuse the job)."""
        found = self.applications.get((application.name, application.version))
        if found is None:
            held = ", ".join(f"{name}@{version}" for name, version in sorted(self.applications))
            raise ValueError(
                f"Unknown application requested: {application.name}@{application.version} (Core refuses the job "
                f"with 400; upload it first, or add it to ucim/testing/apps). Core holds: {held}"
            )
        return found.model_copy(deep=True)


def parameter_refusal(application: Application, values: Mapping[str, AppParameterValue]) -> str | None:
    """Why Core would refuse a job with these parameter values for ``application``, or None (jobsValidateForSubmission).

    A name the application does not declare (``_injected_*`` excepted), a value of another type, or no value for
    a mandatory parameter without a default.
    """
    declared = {parameter.name: parameter for parameter in application.invocation.parameters or []}
    for name, value in values.items():
        if name.startswith("_injected_"):
            continue
        parameter = declared.get(name)
        if parameter is None:
            return f"Unknown parameter supplied: '{name}'"
        if parameter.type == "readme" or VALUE_TYPES.get(parameter.type, value.type) != value.type:
            return f"Incorrect parameter type for '{name}'"
    for name, parameter in declared.items():
        if not parameter.optional and parameter.default_value is None and name not in values:
            return f"Missing value for '{name}'"
    return None


def requested_time(application: Application) -> SimpleDuration:
    """The time the web client asks for when the user changes nothing: the tool's default hours, at least one.

    Core itself takes the job's ``timeAllocation`` as sent (null stays null); the web client's form starts at
    ``max(1, defaultTimeAllocation.hours)`` hours and sends ``{hours, minutes: 0, seconds: 0}``
    (frontend-web/webclient/app/Applications/Jobs/Widgets/Reservation.tsx).
    """
    tool = application.invocation.tool.tool
    hours = tool.description.default_time_allocation.hours if tool is not None else 1
    return SimpleDuration(hours=max(1, hours))

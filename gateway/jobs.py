"""Checking UCloud's Job and translating it into a UCloudJob resource (pure functions, no I/O).

Everything a job asks for is checked before anything is written, each refusal a 400 that says the
limit: the apiserver's own refusal (a 422) would come too late to say it well.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ucim.common.app_templates import InvalidJobError, check_application
from ucim.common.products import MachineType, find_machine
from ucim.common.protocol import (
    Application,
    ApplicationParameter,
    AppParameterValue,
    InvocationParameter,
    Job,
    SimpleDuration,
)
from ucim.common.resources import (
    MAX_NODES,
    MAX_TIME_LIMIT_MINUTES,
    ApplicationRef,
    AppParameter,
    AppParameterOption,
    InvocationPart,
    JobApplication,
    ObjectMeta,
    ParameterType,
    ParameterValue,
    ProductRef,
    UCloudJob,
    UCloudJobSpec,
    cluster_labels,
)
from ucim.gateway.auth import check_username
from ucim.gateway.errors import ProviderError
from ucim.gateway.file_parameters import drive_id_of
from ucim.gateway.interactive_jobs import interactive_labels

SUPPORTED_PARAMETER_TYPES = frozenset(typing.get_args(ParameterType))


def validate_jobs(jobs: Iterable[Job], acting_user: str | None) -> None:
    """ProviderError(400) for the first job this provider must not start as asked (``validate_job``)."""
    for job in jobs:
        validate_job(job, acting_user)


def validate_job(job: Job, acting_user: str | None) -> None:
    """ProviderError(400) unless the job can run as its owner, for the acting user, within the limits.

    A job runs as ``owner.createdBy``. Core creates a job with its actor as ``createdBy`` and calls the
    provider as that same actor (core2 ``orchestrator/job.go`` ``jobCreateThroughProvider``,
    ``resources.go`` ``ResourceCreate``), and IM2 runs it in the instance of the ``UCloud-Username``
    user: the two are one person, and a request where they differ is refused rather than run as either.
    """
    owner = job.owner.created_by
    if not owner:
        raise ProviderError(400, f"job {job.id} has no owner (owner.createdBy is empty)")
    check_username(owner, f"owner.createdBy of job {job.id}")
    if acting_user is not None and acting_user != owner:
        raise ProviderError(
            400, f"job {job.id} belongs to {owner!r} but the request acts for {acting_user!r}; a job runs as its "
            "owner, so only its owner can start it"
        )  # fmt: skip
    replicas = job.specification.replicas
    if not 1 <= replicas <= MAX_NODES:
        raise ProviderError(400, f"job {job.id} asks for {replicas} nodes; from 1 to {MAX_NODES} are allowed")
    time_limit_minutes(job)


def time_limit_minutes(job: Job) -> int | None:
    """The job's Slurm time limit in whole minutes, never less than asked; None: the partition's default.

    A job without a time allocation gets its tool's default, as the anchor's ``--time`` does (PROTOCOL-APPS §7).
    """
    allocation = job.specification.time_allocation or _default_time(job.status.resolved_application)
    if allocation is None:
        return None
    millis = allocation.to_millis()
    if millis <= 0:
        # Core refuses these itself ("time allocated for job is too short", core2 jobsValidateForSubmission).
        raise ProviderError(
            400, f"job {job.id} asks for a time allocation of {_duration(allocation)}; it must be positive"
        )
    minutes = -(-millis // 60_000)  # rounded up in integers: a float would overflow on absurd allocations
    if minutes > MAX_TIME_LIMIT_MINUTES:
        raise ProviderError(
            400, f"job {job.id} asks for {minutes} minutes; at most {MAX_TIME_LIMIT_MINUTES} (about 68 years, the "
            "longest time limit Slurm takes) are allowed"
        )  # fmt: skip
    return minutes


def _default_time(app: Application | None) -> SimpleDuration | None:
    tool = app.invocation.tool.tool if app is not None else None
    default = tool.description.default_time_allocation if tool is not None else None
    return default if default is not None and default.to_millis() > 0 else None


def _duration(allocation: SimpleDuration) -> str:
    return f"{allocation.hours} h {allocation.minutes} min {allocation.seconds} s"


def to_ucloud_job(
    job: Job,
    *,
    namespace: str,
    cluster: str,
    provider_id: str,
    machines: list[MachineType],
    drives: Mapping[str, str] | None = None,
) -> UCloudJob:
    """The UCloudJob for a job Core asked us to start; ProviderError(400) for what we cannot run.

    ``drives`` maps the drive ids of the job's file parameters to their locators (``file_parameters``).
    """
    spec = job.specification
    if not job.id:
        raise ProviderError(400, "the job has no id")
    if not job.owner.created_by:
        raise ProviderError(400, f"job {job.id} has no owner (owner.createdBy is empty)")
    if spec.product.provider and spec.product.provider != provider_id:
        raise ProviderError(400, f"job {job.id} is for provider {spec.product.provider!r}, not {provider_id!r}")
    machine = find_machine(machines, spec.product)
    if machine is None:
        offered = ", ".join(f"{m.name} ({m.category})" for m in machines)
        raise ProviderError(400, f"unknown product {spec.product.id!r} in category {spec.product.category!r}; "
                            f"this provider offers {offered}")  # fmt: skip
    if spec.replicas < 1:
        raise ProviderError(400, f"job {job.id} asks for {spec.replicas} nodes; at least one is needed")
    try:
        resource = _resource(
            job, namespace=namespace, cluster=cluster, provider_id=provider_id, machine=machine, drives=drives or {}
        )
    except ValidationError as error:
        # What no check above knew about; the same limits as the CRD (tests/unit/test_resources.py).
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise ProviderError(400, f"job {job.id} cannot be stored: {error.title} {problems}") from error
    try:
        # A template that cannot compile or a parameter that does not fit is refused now, never sent to Slurm.
        check_application(resource.spec.application, resource.spec.parameters or {})
    except InvalidJobError as error:
        raise ProviderError(400, f"job {job.id}: {error}") from error
    return resource


def _resource(
    job: Job, *, namespace: str, cluster: str, provider_id: str, machine: MachineType, drives: Mapping[str, str]
) -> UCloudJob:
    spec = job.specification
    application = job_application(job)
    return UCloudJob(
        metadata=ObjectMeta(
            name=UCloudJob.name_for(job.id),
            namespace=namespace,
            labels=cluster_labels(cluster) | interactive_labels(application),
        ),
        spec=UCloudJobSpec(
            job_id=job.id,
            owner=job.owner.created_by,
            project=job.owner.project,
            cluster=cluster,
            application=application,
            product=ProductRef(id=machine.name, category=machine.category, provider=provider_id),
            slurm=machine.placement(),
            resources=machine.resources(nodes=spec.replicas, time_limit_minutes=time_limit_minutes(job)),
            parameters={
                name: _parameter(job.id, name, value, drives) for name, value in (spec.parameters or {}).items()
            },
        ),
    )


def _parameter(job_id: str, name: str, value: AppParameterValue, drives: Mapping[str, str]) -> ParameterValue:
    if value.type not in SUPPORTED_PARAMETER_TYPES:
        raise ProviderError(400, f"job {job_id}: parameter {name!r} has unsupported type {value.type!r}")
    drive = None
    if value.type == "file":
        drive = drives.get(drive_id_of(value.path))
        if drive is None:
            raise ProviderError(400, f"job {job_id}: the drive of parameter {name!r} ({value.path[:200]!r}) is unknown")
    return ParameterValue(
        type=typing.cast(ParameterType, value.type),
        value=value.value,
        path=value.path or None,
        read_only=value.read_only if value.type == "file" else None,
        mount_path=value.mount_path or None,
        hostname=value.hostname or None,
        job_id=value.job_id or None,
        id=value.id or None,
        modules=value.modules,
        drive=drive,
    )


# --- the application ------------------------------------------------------------------


def job_application(job: Job) -> JobApplication:
    """What the job's script is made of, from the application Core resolved for it.

    The catalogue lives in Core, which sends the whole application with every job; this provider runs
    native (Slurm) applications, whose tool's load instructions name what the site loads for them.
    """
    app = job.status.resolved_application
    if app is None:
        raise ProviderError(400, f"job {job.id} came without its application (status.resolvedApplication)")
    invocation = app.invocation
    tool = invocation.tool.tool.description if invocation.tool.tool is not None else None
    name = f"{app.metadata.name}@{app.metadata.version}"
    loads = tool.native_loads() if tool is not None else []
    if tool is not None and tool.backend != "NATIVE":
        raise ProviderError(
            400, f"{name} is a {tool.backend} application; this provider runs native (Slurm) applications only"
        )
    return JobApplication(
        name=app.metadata.name,
        version=app.metadata.version,
        type=typing.cast(Any, invocation.application_type),
        invocation=[_part(part) for part in invocation.invocation or []],
        parameters=[_app_parameter(parameter) for parameter in invocation.parameters or []],
        environment={key: _part(part) for key, part in invocation.environment.items()}
        if invocation.environment
        else None,
        sbatch={key: _part(part) for key, part in invocation.sbatch.items()} if invocation.sbatch else None,
        load=[ApplicationRef(name=a.name, version=a.version) for a in loads] or None,
        required_modules=(tool.required_modules or None) if tool is not None else None,
    )


# The keys of InvocationParameter each type uses (Go writes them all, mostly empty).
_PART_KEYS: dict[str, tuple[str, ...]] = {
    "word": ("word",),
    "env": ("variable",),
    "var": ("variable_names", "prefix_global", "suffix_global", "prefix_variable", "suffix_variable",
            "is_prefix_variable_part_of_arg", "is_suffix_variable_part_of_arg"),
    "bool_flag": ("variable_name", "flag"),
    "jinja": ("template",),
}  # fmt: skip


def _part(part: InvocationParameter) -> InvocationPart:
    keys = _PART_KEYS.get(part.type, ())
    return InvocationPart.model_validate({"type": part.type, **{key: getattr(part, key) for key in keys}})


def _app_parameter(parameter: ApplicationParameter) -> AppParameter:
    return AppParameter(
        type=parameter.type,
        name=parameter.name,
        optional=parameter.optional,
        default_value=parameter.default_value,
        title=parameter.title or None,
        min=_number(parameter.min),
        max=_number(parameter.max),
        true_value=parameter.true_value or None,
        false_value=parameter.false_value or None,
        options=[AppParameterOption(name=o.name, value=o.value) for o in parameter.options]
        if parameter.options
        else None,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

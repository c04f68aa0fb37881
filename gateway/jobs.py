"""Checking UCloud's Job and translating it into a UCloudJob resource (pure functions, no I/O).

Everything a job asks for is checked before anything is written, each refusal a 400 that says the
limit: the apiserver's own refusal (a 422) would come too late to say it well.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable

from pydantic import ValidationError

from ucim.common.products import MachineType, find_machine
from ucim.common.protocol import AppParameterValue, Job, SimpleDuration
from ucim.common.resources import (
    MAX_NODES,
    MAX_TIME_LIMIT_MINUTES,
    ApplicationRef,
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
    """The job's Slurm time limit in whole minutes, never less than asked; None: the partition's default."""
    allocation = job.specification.time_allocation
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


def _duration(allocation: SimpleDuration) -> str:
    return f"{allocation.hours} h {allocation.minutes} min {allocation.seconds} s"


def to_ucloud_job(
    job: Job, *, namespace: str, cluster: str, provider_id: str, machines: list[MachineType]
) -> UCloudJob:
    """The UCloudJob for a job Core asked us to start; ProviderError(400) for what we cannot run."""
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
        return _resource(job, namespace, cluster, provider_id, machine)
    except ValidationError as error:
        # What no check above knew about; the same limits as the CRD (tests/unit/test_resources.py).
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise ProviderError(400, f"job {job.id} cannot be stored: {error.title} {problems}") from error


def _resource(job: Job, namespace: str, cluster: str, provider_id: str, machine: MachineType) -> UCloudJob:
    spec = job.specification
    return UCloudJob(
        metadata=ObjectMeta(name=UCloudJob.name_for(job.id), namespace=namespace, labels=cluster_labels(cluster)),
        spec=UCloudJobSpec(
            job_id=job.id,
            owner=job.owner.created_by,
            project=job.owner.project,
            cluster=cluster,
            application=ApplicationRef(name=spec.application.name, version=spec.application.version),
            product=ProductRef(id=machine.name, category=machine.category, provider=provider_id),
            slurm=machine.placement(),
            resources=machine.resources(nodes=spec.replicas, time_limit_minutes=time_limit_minutes(job)),
            parameters={name: _parameter(job.id, name, value) for name, value in (spec.parameters or {}).items()},
        ),
    )


def _parameter(job_id: str, name: str, value: AppParameterValue) -> ParameterValue:
    if value.type not in SUPPORTED_PARAMETER_TYPES:
        raise ProviderError(400, f"job {job_id}: parameter {name!r} has unsupported type {value.type!r}")
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
    )

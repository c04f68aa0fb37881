"""Translating UCloud's Job into a UCloudJob resource (pure functions, no I/O)."""

from __future__ import annotations

import math
import typing

from ucim.common.products import MachineType, find_machine
from ucim.common.protocol import AppParameterValue, Job
from ucim.common.resources import (
    ApplicationRef,
    ObjectMeta,
    ParameterType,
    ParameterValue,
    ProductRef,
    UCloudJob,
    UCloudJobSpec,
)
from ucim.gateway.errors import ProviderError

SUPPORTED_PARAMETER_TYPES = frozenset(typing.get_args(ParameterType))


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
    time_limit = None
    if spec.time_allocation is not None and spec.time_allocation.to_millis() > 0:
        # Slurm counts whole minutes; never give a job less than it asked for.
        time_limit = math.ceil(spec.time_allocation.to_millis() / 60_000)
    return UCloudJob(
        metadata=ObjectMeta(name=UCloudJob.name_for(job.id), namespace=namespace, labels={"ucim.io/cluster": cluster}),
        spec=UCloudJobSpec(
            job_id=job.id,
            owner=job.owner.created_by,
            project=job.owner.project,
            cluster=cluster,
            application=ApplicationRef(name=spec.application.name, version=spec.application.version),
            product=ProductRef(id=machine.name, category=machine.category, provider=provider_id),
            slurm=machine.placement(),
            resources=machine.resources(nodes=spec.replicas, time_limit_minutes=time_limit),
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

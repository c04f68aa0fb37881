"""The API of a user's instance (user_sidecar), as the operator and gateway call it.

Callers reach an instance only through the slurm_bridge's ingress:
``<UserInstance.status.endpoint><path>`` with ``Authorization: Bearer <ingress token>``;
the bridge forwards to the instance's unix socket. Paths and bodies are defined
here once; errors use the UCloud error envelope (``{"why": ..., "statusCode": ...}``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ucim.common.resources import ApplicationRef, JobResources, ParameterValue, SlurmPlacement

SUBMIT_PATH = "/jobs/submit"
CANCEL_PATH = "/jobs/cancel"
HEALTH_PATH = "/healthz"
# Bodies are UCloud's own (``FilesProviderBrowseRequest``, ``FilesProviderRetrieveRequest`` in protocol.py).
FILES_BROWSE_PATH = "/files/browse"
FILES_RETRIEVE_PATH = "/files/retrieve"


class _Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SubmitRequest(_Message):
    """Submit one UCloud job as the instance's user; idempotent on ``slurm_job_name``."""

    job_id: str = Field(min_length=1)
    # The Slurm job name: the resource's identity, so a retry finds the job instead of submitting it again.
    slurm_job_name: str = Field(min_length=1, max_length=200)
    application: ApplicationRef
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    resources: JobResources
    slurm: SlurmPlacement = Field(default_factory=SlurmPlacement)


class SubmitResponse(_Message):
    slurm_job_id: int
    job_folder: str
    # True when a job with this name already existed and no new one was submitted.
    already_submitted: bool = False


class CancelRequest(_Message):
    slurm_job_ids: list[int] = Field(min_length=1, max_length=10_000)

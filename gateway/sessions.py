"""What every interactive session starts with: the acting user's running job, and a question to the user's instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ucim.common.protocol import why_of
from ucim.common.resources import UCloudJob
from ucim.gateway.errors import ProviderError
from ucim.gateway.instance_proxy import InstanceNotReadyError, InstanceUnreachableError
from ucim.gateway.keys import KUBE, PROXY, SETTINGS

MAX_ANSWER_BYTES: Final = 64 * 1024
M = TypeVar("M", bound=BaseModel)


async def ask_instance(request: web.Request, username: str, path: str, body: BaseModel, answer: type[M]) -> M:
    """POST ``body`` to the user's instance and read its ``answer``; its refusal as it is (449 when not running)."""
    data = body.model_dump_json(by_alias=True).encode()
    try:
        upstream = await request.config_dict[PROXY].send(
            username, "POST", path, headers={"Content-Type": "application/json"}, body=data, tunnel=True
        )
    except InstanceNotReadyError as error:
        raise ProviderError(449, f"{error}; call integration/init") from error
    except InstanceUnreachableError as error:
        raise ProviderError(502, str(error)) from error
    async with upstream:
        text = await upstream.content.read(MAX_ANSWER_BYTES)
        status = upstream.status
    if status >= 300:
        raise ProviderError(status, why_of(text) or f"the instance refused ({status})")
    try:
        return answer.model_validate_json(text)
    except ValidationError as error:
        raise ProviderError(502, f"the instance answered {path} with something else than {answer.__name__}") from error


@dataclass(frozen=True)
class RunningJob:
    job: UCloudJob
    slurm_job_id: int
    node_list: str


async def running_job(request: web.Request, username: str, job_id: str) -> RunningJob:
    """The acting user's running job, or a 4xx that says why not."""
    settings = request.config_dict[SETTINGS]
    job = await request.config_dict[KUBE].get(UCloudJob, settings.namespace, UCloudJob.name_for(job_id))
    if job is None:
        raise ProviderError(404, f"job {job_id} is not known to this provider")
    if job.spec.owner != username:
        raise ProviderError(403, f"job {job_id} is not {username}'s: its sessions are the job owner's")
    status = job.status
    if status.state != "RUNNING" or status.slurm_job_id is None or not status.node_list:
        raise ProviderError(400, f"job {job_id} is not running ({status.state or 'not started'}): no session yet")
    return RunningJob(job, status.slurm_job_id, status.node_list)

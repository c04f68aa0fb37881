"""Calls from the operator to a user's instance, through the slurm_bridge ingress.

The operator never talks to an instance directly: it posts to
``<UserInstance.status.endpoint><path>`` with the ingress bearer token, and the
bridge forwards the call to the instance's unix socket, where it runs as the user.

Two outcomes besides success matter to the handlers, and they are told apart
here once: ``InstanceRejectedError`` is the instance's final answer (sbatch refused
the job: retrying cannot help), ``InstanceUnreachableError`` is "not now" (bridge or
instance down, restarting, slow).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import aiohttp
from pydantic import SecretStr, ValidationError

from ucim.common.http_client import SessionClient
from ucim.common.instance_api import CANCEL_PATH, SUBMIT_PATH, CancelRequest, SubmitRequest, SubmitResponse
from ucim.common.request_ids import HEADER as REQUEST_ID_HEADER
from ucim.common.request_ids import new_request_id

log = logging.getLogger(__name__)

# 4xx answers that mean "not now" rather than "no": the ingress does not know the
# instance (yet), refuses our token (a configuration being rolled out), or asks us to wait.
_TRANSIENT_CLIENT_STATUSES: Final = frozenset({401, 403, 404, 408, 425, 429, 449})


class InstanceError(Exception):
    """A call to a user's instance did not succeed."""


class InstanceUnreachableError(InstanceError):
    """The bridge or the instance could not be reached, or answered that it cannot serve now."""


class InstanceRejectedError(InstanceError):
    """The instance refused the request (e.g. sbatch rejected the job); ``why`` says why, in words."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _why(status: int, body: Any, text: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("why"), str) and body["why"]:
        return str(body["why"])
    return text.strip()[:500] or f"HTTP {status}"


class InstanceClient(SessionClient):
    """Submit and cancel Slurm jobs through a user's instance."""

    def __init__(
        self, ingress_token: SecretStr, *, timeout: float, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(timeout=aiohttp.ClientTimeout(total=timeout), session=session)
        self._token = ingress_token

    async def submit(self, endpoint: str, request: SubmitRequest) -> SubmitResponse:
        """Submit a job; idempotent on ``request.slurm_job_name`` (an earlier submission is found, not repeated)."""
        answer = await self._post(endpoint, SUBMIT_PATH, request.model_dump(mode="json", by_alias=True))
        try:
            return SubmitResponse.model_validate(answer)
        except ValidationError as error:
            raise InstanceUnreachableError(f"the instance at {endpoint} answered a submit with {answer!r}") from error

    async def cancel(self, endpoint: str, slurm_job_ids: list[int]) -> None:
        """Cancel jobs (``scancel`` as the user); cancelling a job that has ended is not an error."""
        await self._post(endpoint, CANCEL_PATH, CancelRequest(slurm_job_ids=slurm_job_ids).model_dump(by_alias=True))

    async def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> Any:
        url = endpoint.rstrip("/") + path
        # The instance audits the call under this id; our log line joins it to the job.
        request_id = new_request_id()
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}", REQUEST_ID_HEADER: request_id}
        try:
            async with self._http().post(url, json=body, headers=headers) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise InstanceUnreachableError(f"{url} is unreachable: {error!r}") from error
        log.info(
            "instance call",
            extra={"request_id": request_id, "url": url, "status": status, "job_id": body.get("jobId")},
        )
        try:
            answer: Any = json.loads(text) if text else None
        except ValueError:
            answer = None
        if status < 300:
            return answer
        why = _why(status, answer, text)
        if status >= 500 or status in _TRANSIENT_CLIENT_STATUSES:
            raise InstanceUnreachableError(f"{url} answered {status}: {why}")
        raise InstanceRejectedError(status, why)

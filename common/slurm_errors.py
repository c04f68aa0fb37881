"""What a failed Slurm command means: the exception types, and Slurm's error text read for people.

Every failure is a :class:`SlurmError` whose ``message`` is for people and ``detail`` is
Slurm's own text. sbatch's refusals become a readable :class:`SlurmRejectedError`
(:func:`sbatch_error`); text that means "Slurm is not reachable right now" becomes a
:class:`SlurmUnavailableError`, worth retrying (:func:`is_transient`); scancel's lines for
jobs that are already gone are no error (:func:`scancel_errors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final


class SlurmError(Exception):
    """A Slurm command failed. ``message`` is for people; ``detail`` is Slurm's own text."""

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        command: Sequence[str] = (),
        returncode: int | None = None,
    ) -> None:
        self.message = message
        self.detail = detail
        self.command = tuple(command)
        self.returncode = returncode
        text = message if not detail or detail == message else f"{message} (Slurm: {detail})"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (errors cross process boundaries).
        return (_rebuild_error, (type(self), self.message, self.detail, self.command, self.returncode))


def _rebuild_error(
    cls: type[SlurmError], message: str, detail: str, command: Sequence[str], returncode: int | None
) -> SlurmError:
    return cls(message, detail=detail, command=command, returncode=returncode)


class SlurmRejectedError(SlurmError):
    """sbatch refused the job (bad partition, limits, ...): resubmitting will not help."""


class SlurmUnavailableError(SlurmError):
    """Slurm could not be reached or did not answer in time: worth retrying later.

    After a timed-out ``sbatch`` the job may exist anyway: look it up with
    :meth:`ucim.common.slurm.SlurmClient.find_jobs_by_name` before submitting again.
    """


_TOOL_PREFIX_RE: Final = re.compile(r"^(?:s\w+): (?:error|fatal): ", re.IGNORECASE)
_SUBMIT_FAILED: Final = "Batch job submission failed: "

# Well-known sbatch rejections → what a UCloud user should read. First match wins, so the
# specific memory message comes before the generic "node configuration" one it comes with.
_FRIENDLY_SBATCH: Final[tuple[tuple[str, str], ...]] = (
    ("invalid partition", "The requested partition does not exist on this cluster"),
    ("accounting/qos policy", "The job violates an accounting or QOS limit (is the allocation used up?)"),
    ("requested time limit", "The requested time limit is invalid or exceeds the partition's limit"),
    ("invalid --time", "The requested time limit is invalid or exceeds the partition's limit"),
    ("node count", "The requested number of nodes is not available in this partition"),
    ("more processors", "More processors (CPUs) were requested than the partition or account allows"),
    ("memory specification", "The requested memory cannot be provided by any node of this partition"),
    ("mem-per-cpu", "The requested memory cannot be provided by any node of this partition"),
    (
        "requested node configuration is not available",
        "No node of this partition has the requested resources (CPUs, memory, GPUs or features)",
    ),
    ("generic resource", "The requested GPUs or other generic resources are not available here"),
    ("invalid account", "The Slurm account is not valid for this user or partition"),
    ("invalid qos", "The requested QOS is not valid for this user or partition"),
    ("unable to open file", "Slurm could not read the job script"),
)
# Text meaning "Slurm is not reachable right now" rather than "this job is wrong".
_TRANSIENT_MARKERS: Final = (
    "unable to contact slurm controller",
    "socket timed out",
    "temporarily unable to accept job",
    "communication connection failure",
    "zero bytes were transmitted",
    "connection refused",
    "slurm_persist_conn_open",
    "problem talking to the database",
    "unable to establish a connection",
    "connection reset by peer",
    "authentication error",
    "munge encode failed",
    # slurmctld went away while sbatch was talking to it (killed, restarting).
    "unexpected missing socket error",
    "slurm_msg_sendto",
)


def clean_slurm_error(stderr: str) -> str:
    """Slurm's error lines without the ``sbatch: error:`` noise, joined with ``; ``.

    ``sbatch: error: invalid partition specified: nope`` → ``invalid partition specified:
    nope``. Warnings and duplicate lines are dropped; the remaining lines keep their order.
    """
    lines: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line or re.match(r"^\w+: warning: ", line, re.IGNORECASE):
            continue
        line = _TOOL_PREFIX_RE.sub("", line)
        line = line.removeprefix(_SUBMIT_FAILED)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines)


def is_transient(detail: str) -> bool:
    lowered = detail.lower()
    return any(marker in lowered for marker in _TRANSIENT_MARKERS)


def sbatch_error(stderr: str, *, command: Sequence[str] = (), returncode: int | None = None) -> SlurmError:
    """The exception for a failed sbatch: friendly message, Slurm's own text as detail."""
    detail = clean_slurm_error(stderr) or f"sbatch exited with status {returncode}"
    if is_transient(detail):
        return SlurmUnavailableError(
            "Slurm is not reachable right now", detail=detail, command=command, returncode=returncode
        )
    lowered = detail.lower()
    message = next((friendly for key, friendly in _FRIENDLY_SBATCH if key in lowered), detail)
    return SlurmRejectedError(message, detail=detail, command=command, returncode=returncode)


# scancel lines that mean "nothing left to cancel": cancelling stays idempotent.
_SCANCEL_BENIGN: Final = ("already completing or completed", "invalid job id specified")


def scancel_errors(stderr: str) -> list[str]:
    """scancel's error lines that matter: not those for jobs that are already gone."""
    return [
        line
        for line in clean_slurm_error(stderr).split("; ")
        if line and not any(b in line.lower() for b in _SCANCEL_BENIGN)
    ]

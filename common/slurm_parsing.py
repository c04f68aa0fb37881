"""Slurm's output formats: the arguments that ask for them and the pure functions that read them.

Slurm 22.05's ``--json`` output is unusable here (``squeue --json`` ignores ``-j``, is
10-20x slower and gives raw wait statuses; ``sacct --json`` reports wrong exit codes), so
we parse the text formats, each with a pure ``parse_*`` function that the unit tests feed
with lines captured from the real Slurm:

* ``sbatch --parsable``: ``<id>`` or ``<id>;<cluster>`` (:func:`parse_sbatch_output`);
  its stderr becomes a readable ``SlurmRejectedError`` (:func:`ucim.common.slurm_errors.sbatch_error`).
* ``squeue -h -O <field>:<sep>,...``: the poll (:func:`parse_squeue`).
* ``sacct -X -P -n -o ...``: the accounting fallback (:func:`parse_sacct`).
* ``squeue -h -a -P -t PENDING -O <field>:<sep>,...``: the pending queue, for queue positions
  (:func:`parse_pending`).
* ``squeue -h -o %A``/``sacct -P -o JobID``: job-id lists (:func:`parse_job_ids`).

All three state queries run with ``SLURM_TIME_FORMAT=%s``, so every timestamp is printed
as epoch seconds and no time zone has to be guessed (:func:`parse_slurm_time` still reads
Slurm's default ISO form, interpreted in the local zone, should a site override it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from ucim.common.protocol import JobState
from ucim.common.slurm_errors import SlurmError
from ucim.common.slurm_states import FINISHED_STATES, RUNNING_STATES, normalize_state, to_ucloud_state

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlurmJobInfo:
    """What one poll knows about one Slurm job.

    ``state`` is Slurm's base state (``CANCELLED``, never ``CANCELLED by 1101``).
    ``exit_code`` is the program's exit status and ``signal`` the signal that ended it, as
    Slurm's ``ExitCode=<status>:<signal>``; both None while the job has not finished.
    Estimated times are dropped: ``start_time`` is None until the job started and
    ``end_time`` None until it ended. ``time_limit`` is None for UNLIMITED.
    """

    job_id: int
    state: str
    reason: str | None = None
    node_list: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    time_limit: timedelta | None = None
    name: str = ""
    user: str = ""

    @property
    def is_finished(self) -> bool:
        return normalize_state(self.state) in FINISHED_STATES

    def ucloud_state(self) -> tuple[JobState, str]:
        return to_ucloud_state(self.state, self.exit_code, signal=self.signal, reason=self.reason)


_NONE_VALUES: Final = frozenset({"", "N/A", "NONE", "UNKNOWN", "(NULL)", "0"})
_TIME_LIMIT_RE: Final = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)??(?:(?P<m>\d+):)?(?P<s>\d+)$")


def minutes_to_slurm_time(minutes: int) -> str:
    """A time limit in whole minutes as Slurm's ``D-HH:MM:SS``: 90 → ``"0-01:30:00"``."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise ValueError(f"a Slurm time limit is a positive number of minutes, not {minutes!r}")
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00"


def parse_slurm_time(text: str, tz: tzinfo | None = None) -> datetime | None:
    """A Slurm timestamp as an aware datetime; None for ``Unknown``, ``N/A``, ``None``, 0.

    Epoch seconds (``SLURM_TIME_FORMAT=%s``, what this module asks for) are exact. Slurm's
    default ``2026-11-25T03:50:00`` is in the controller's local zone: pass it as ``tz``
    (default: this process's local zone).
    """
    value = text.strip()
    if value.upper() in _NONE_VALUES:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        return parsed
    return parsed.replace(tzinfo=tz) if tz is not None else parsed.astimezone()


def parse_time_limit(text: str) -> timedelta | None:
    """Slurm's ``[D-][H:]M:S`` (``1:00`` is one minute); None for UNLIMITED and the like."""
    match = _TIME_LIMIT_RE.match(text.strip())
    if match is None:
        return None
    parts = {k: int(v) if v else 0 for k, v in match.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's ``<exit status>:<signal>`` (``3:0``, ``0:15``) → (3, 0); (None, None) if absent."""
    status, sep, sig = text.strip().partition(":")
    if not sep or not status.isdigit() or not sig.isdigit():
        return None, None
    return int(status), int(sig)


def _clean(value: str) -> str | None:
    value = value.strip()
    return None if value.upper() in {"", "N/A", "NONE", "(NULL)"} else value


def decode_wait_status(text: str) -> tuple[int | None, int | None]:
    """A raw wait(2) status, as squeue's ``exit_code`` prints it (768, 9) → (3, 0), (0, 9)."""
    value = text.strip()
    if not value.isdigit():
        return None, None
    raw = int(value)
    if raw & 0x7F:  # WIFSIGNALED
        return 0, raw & 0x7F
    return (raw >> 8) & 0xFF, 0


def _job_info(
    *,
    job_id: int,
    state: str,
    reason: str,
    node_list: str,
    exit_status: tuple[int | None, int | None],
    submit: str,
    start: str,
    end: str,
    time_limit: str,
    name: str,
    user: str,
    tz: tzinfo | None,
) -> SlurmJobInfo:
    base = normalize_state(state)
    nodes = _clean(node_list)
    finished = base in FINISHED_STATES
    # A job cancelled while pending gets StartTime = EndTime = the cancel time, but no nodes.
    started = (finished or base in RUNNING_STATES or base == "SUSPENDED") and nodes is not None
    # Exit statuses only mean something for jobs that ran: a job that sbatch itself
    # rejected (BadConstraints) is recorded as FAILED with a bare 1 in the wait-status field.
    status, sig = exit_status if started and finished else (None, None)
    return SlurmJobInfo(
        job_id=job_id,
        state=base,
        reason=_clean(reason),
        node_list=nodes,
        exit_code=status,
        signal=sig,
        submit_time=parse_slurm_time(submit, tz),
        # Pending jobs carry an estimated start, running ones their expected end: drop both.
        start_time=parse_slurm_time(start, tz) if started else None,
        end_time=parse_slurm_time(end, tz) if finished else None,
        time_limit=parse_time_limit(time_limit),
        name=name,
        user=user,
    )


# The squeue fields of a poll, in order. Name is last: it is the only free text, so the
# line is split at most len-1 times and a separator inside a job name does no harm.
SQUEUE_FIELDS: Final = (
    "JobID",
    "State",
    "Reason",
    "NodeList",
    "exit_code",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "TimeLimit",
    "UserName",
    "Name",
)
FIELD_SEPARATOR: Final = "|"


def squeue_format() -> str:
    """The ``-O`` argument: every field unpadded and followed by the separator."""
    return ",".join(f"{name}:{FIELD_SEPARATOR}" for name in SQUEUE_FIELDS)


def parse_squeue(stdout: str, tz: tzinfo | None = None) -> dict[int, SlurmJobInfo]:
    """Lines of ``squeue -h -O <squeue_format()>`` → job id → info."""
    jobs: dict[int, SlurmJobInfo] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split(FIELD_SEPARATOR, len(SQUEUE_FIELDS) - 1)
        if len(fields) != len(SQUEUE_FIELDS) or not fields[0].strip().isdigit():
            log.warning("Unexpected squeue line", extra={"line": line})
            continue
        job_id, state, reason, nodes, exit_code, submit, start, end, limit, user, name = fields
        # Every field but the last carries the separator as its suffix; strip the name's.
        name = name.removesuffix(FIELD_SEPARATOR)
        info = _job_info(
            job_id=int(job_id),
            state=state,
            reason=reason,
            node_list=nodes,
            exit_status=decode_wait_status(exit_code),
            submit=submit,
            start=start,
            end=end,
            time_limit=limit,
            name=name,
            user=user.strip(),
            tz=tz,
        )
        jobs[info.job_id] = info
    return jobs


@dataclass(frozen=True, slots=True)
class PendingJob:
    """One pending job in one partition, as the queue listing has it.

    ``job_id`` is None for an array's pending tasks listed as one record (``123_[4-100]``): they
    count as one job waiting, and are never one of ucim's. ``estimated_start`` is Slurm's
    estimate (the backfill scheduler's), None while it has none.
    """

    job_id: int | None
    partition: str
    priority: int
    estimated_start: datetime | None


# The fields of the pending listing, in order; -P (--priority) lists a job waiting in several
# partitions once per partition, each line with that partition's priority.
PENDING_FIELDS: Final = ("JobID", "Partition", "PriorityLong", "StartTime")


def pending_format() -> str:
    """The ``-O`` argument of the pending listing."""
    return ",".join(f"{name}:{FIELD_SEPARATOR}" for name in PENDING_FIELDS)


def parse_pending(stdout: str, tz: tzinfo | None = None) -> list[PendingJob]:
    """Lines of ``squeue -h -P -t PENDING -O <pending_format()>`` → the pending jobs, in squeue's order."""
    jobs: list[PendingJob] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(FIELD_SEPARATOR)]
        job_id, partition, priority, start = (fields + [""] * len(PENDING_FIELDS))[: len(PENDING_FIELDS)]
        if not partition or not priority.isdigit() or not job_id[:1].isdigit():
            log.warning("Unexpected squeue line", extra={"line": line})
            continue
        jobs.append(
            PendingJob(
                job_id=int(job_id) if job_id.isdigit() else None,
                partition=partition,
                priority=int(priority),
                estimated_start=parse_slurm_time(start, tz),
            )
        )
    return jobs


SACCT_FIELDS: Final = (
    "JobIDRaw",
    "State",
    "Reason",
    "NodeList",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    "Timelimit",
    "User",
    "JobName",
)


def parse_sacct(stdout: str, tz: tzinfo | None = None) -> dict[int, SlurmJobInfo]:
    """Lines of ``sacct -X -P -n -o <SACCT_FIELDS>`` → job id → info.

    A requeued job has several records under one id; the last one printed (the newest)
    wins. Step lines (``123.batch``) are skipped should ``-X`` be missing.
    """
    jobs: dict[int, SlurmJobInfo] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) != len(SACCT_FIELDS) or not fields[0].strip().isdigit():
            continue
        job_id, state, reason, nodes, exit_code, submit, start, end, limit, user, name = fields
        info = _job_info(
            job_id=int(job_id),
            state=state,
            reason=reason,
            # sacct prints "None assigned" for jobs that never got nodes.
            node_list="" if nodes.strip() == "None assigned" else nodes,
            exit_status=parse_exit_code(exit_code),
            submit=submit,
            start=start,
            end=end,
            time_limit=limit,
            name=name,
            user=user.strip(),
            tz=tz,
        )
        jobs[info.job_id] = info
    return jobs


def parse_job_ids(stdout: str) -> list[int]:
    """One job id per line (``squeue -h -o %A``, ``sacct -XPn -o JobIDRaw``), sorted, unique."""
    return sorted({int(word) for line in stdout.splitlines() if (word := line.strip()).isdigit()})


def parse_sbatch_output(stdout: str) -> int:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``; return the id."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id = lines[-1].split(";", 1)[0]
        if job_id.isdigit():
            return int(job_id)
    raise SlurmError("sbatch did not print a job id", detail=stdout.strip())

"""The one module that talks to the Slurm command-line tools.

Everything ucim asks Slurm goes through :class:`SlurmClient`: ``sbatch``, ``scancel``,
``squeue``, ``sacct`` (and ``scontrol ping``). Commands run as asyncio subprocesses from
argument lists, never through a shell. Where they run and with what environment is fixed
by :class:`SlurmConfig` (binary directory, an optional command prefix such as ``runuser -u
alice --``, ``SLURM_CONF`` and the base environment); nothing here reads ``os.environ``.
The process that calls :meth:`SlurmClient.submit` or :meth:`SlurmClient.cancel` must
already be the user's own (the user instance); the bridge, as root, only polls.

Output formats
==============
Slurm 22.05's ``--json`` output is unusable here (``squeue --json`` ignores ``-j``, is
10-20x slower and gives raw wait statuses; ``sacct --json`` reports wrong exit codes), so
we parse the text formats, each with a pure ``parse_*`` function that the unit tests feed
with lines captured from the real Slurm:

* ``sbatch --parsable``: ``<id>`` or ``<id>;<cluster>`` (:func:`parse_sbatch_output`);
  its stderr becomes a readable :class:`SlurmRejectedError` (:func:`sbatch_error`).
* ``squeue -h -O <field>:<sep>,...``: the poll (:func:`parse_squeue`).
* ``sacct -X -P -n -o ...``: the accounting fallback (:func:`parse_sacct`).
* ``squeue -h -o %A``/``sacct -P -o JobID``: job-id lists (:func:`parse_job_ids`).

All three state queries run with ``SLURM_TIME_FORMAT=%s``, so every timestamp is printed
as epoch seconds and no time zone has to be guessed (:func:`parse_slurm_time` still reads
Slurm's default ISO form, interpreted in the local zone, should a site override it).

Polling: one query per cycle
============================
:meth:`SlurmClient.poll` makes **one** ``squeue -h -t all -O <fields> -j <ids>`` call for
all tracked jobs, whatever their number. Measured on this machine (2 cores, Slurm 22.05.8,
``bench/bench_slurm_poll.py``, median / p95 ms of 20 calls through this module; the tracked
jobs are held jobs; run B had ~1000 finished jobs of run A still in slurmctld's memory):

==============================  ===============  ===============  ===============
query (run A / run B, median)   0 tracked jobs   100 tracked      1000 tracked
==============================  ===============  ===============  ===============
``poll()``                      4.1 / 3.4        7.0 / 12.7       28.0 / 41.6
``squeue -O -j <ids>``          3.8 / 3.4        6.5 / 12.0       26.5 / 34.2
``squeue -O`` (all jobs)        5.0 / 18.1       6.6 / 19.2       20.1 / 27.5
``scontrol show job -o`` (all)  5.4 / 36.1       7.8 / 40.4       44.3 / 60.5
``sacct -XPn -j <ids>``         92 / 92          52 / 52          73 / 72
==============================  ===============  ===============  ===============

Why this query:

* ``squeue -O`` is the fastest call that is **complete**. Its ``exit_code`` field is the raw
  wait(2) status (``exit 3`` → 768, ``exit 200`` → 51200, SIGTERM → 15), decoded here into
  exit status and signal (:func:`decode_wait_status`), so a job that turns terminal needs no
  second query; ``-t all`` keeps finished jobs for ``MinJobAge`` (300 s here). ``-o``
  (``%A|%T|...``) costs the same but has no exit code at all.
* ``scontrol show job -o`` takes one id or all jobs (``1037,1044`` is "Invalid job id
  specified"), is 1.4-10x slower, and its free-text ``Key=value`` pairs (``Comment=UCloud
  job``) cannot be split reliably.
* ``sacct`` is 50-90 ms and its ``ExitCode`` keeps only 7 bits (``exit 200`` → ``72:0``,
  ``exit 139`` → ``11:0``); it is the fallback for jobs squeue has forgotten, not the poll.
* ``-j <ids>`` versus listing every job and filtering here: with only our jobs in the queue,
  squeue's own id filter costs ~6 ms at 1000 ids; with other jobs around (run B; any real
  cluster) it saves far more by not formatting them, and a single id takes slurmctld's
  one-job path (3.4 ms against a ~2000-job queue). Above ``max_ids_per_query`` ids (5000,
  to stay far from the kernel's 128 KiB argument limit) the poll lists all jobs instead.
* ``squeue`` reports a single unknown id as an error ("Invalid job id specified") and
  several unknown ids as nothing; both become "absent from the result".

Jobs absent from the result have left slurmctld's memory (or never existed): the caller may
then ask :meth:`SlurmClient.poll_accounting` (one ``sacct`` call for all of them) when
:meth:`SlurmClient.has_accounting` says there is a database, or finalise them as it sees fit.

State map
=========
:func:`to_ucloud_state` maps a Slurm state to a UCloud state and a short message. It is
the anchor's map (UCloud/IM ``slurmToUCloudState``) except that a job that *failed* is
reported as a failure, as UCloud's own JobState documentation asks for (non-zero exit or
OOM → FAILURE), instead of the anchor's SUCCESS:

==============================================================  ==========  ==========================
Slurm state                                                     UCloud      message
==============================================================  ==========  ==========================
PENDING, CONFIGURING, RESV_DEL_HOLD, REQUEUE_FED, REQUEUE_HOLD,  IN_QUEUE    "pending (<reason>)",
REQUEUED, RESIZING, SUSPENDED, POWER_UP_NODE                                "suspended", ...
RUNNING, COMPLETING, SIGNALING, SPECIAL_EXIT, STAGE_OUT,        RUNNING     "running", ...
STOPPED
COMPLETED                                                       SUCCESS     "completed"
CANCELLED (also "CANCELLED by <uid>")                           SUCCESS     "cancelled"
FAILED                                                          FAILURE     "exited with code N" /
                                                                            "killed by signal N
                                                                            (SIGX)" / "failed
                                                                            (<reason>)"
OUT_OF_MEMORY                                                   FAILURE     "out of memory"
NODE_FAIL                                                       FAILURE     "node failure"
BOOT_FAIL                                                       FAILURE     "node boot failure"
PREEMPTED                                                       FAILURE     "preempted"
REVOKED                                                         FAILURE     "revoked"
TIMEOUT                                                         EXPIRED     "time limit reached"
DEADLINE                                                        EXPIRED     "deadline reached"
anything else                                                   IN_QUEUE    "unrecognised Slurm
                                                                            state: X"
==============================================================  ==========  ==========================

UCloud has no cancelled state: a cancellation is reported as SUCCESS, as the protocol does.
An unrecognised state maps to IN_QUEUE: a final state cannot be taken back, so an unknown
state must never end a job, and IN_QUEUE claims the least (no resources, no output); the
next known state corrects it. Slurm's SUSPENDED stays IN_QUEUE as in the anchor: UCloud's
SUSPENDED means a user-requested suspension, which this provider does not offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import signal as signal_module
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field

from ucim.common.protocol import JobState

log = logging.getLogger(__name__)

SLURM_COMMAND_SECONDS = Histogram(
    "ucim_slurm_command_seconds",
    "Duration of Slurm command-line calls.",
    ["command", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


# --------------------------------------------------------------------------- errors


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
    :meth:`SlurmClient.find_jobs_by_name` before submitting again.
    """


# --------------------------------------------------------------------------- configuration


class SlurmConfig(BaseModel):
    """Where the Slurm tools are and how to run them; nests in a component's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Directory of sbatch, squeue, ...; None looks them up on the PATH of `env`.
    bin_dir: Path | None = None
    # Prepended to every command, e.g. ["runuser", "-u", "alice", "--"] or an ssh invocation.
    command_prefix: tuple[str, ...] = ()
    # Passed to every command as SLURM_CONF when set.
    slurm_conf: Path | None = None
    # The base environment of every command (the caller builds it; we never read os.environ).
    env: dict[str, str] = Field(default_factory=lambda: {"PATH": "/usr/local/bin:/usr/bin:/bin"})
    # Per command; a slurmctld that does not answer makes the tools retry for a long time.
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Whether sacct works (slurmdbd); None detects it from sacct's first answer.
    accounting: bool | None = None
    # The user whose jobs find_jobs_by_name looks at; None is the calling process's user.
    user: str | None = None
    # How far back find_jobs_by_name searches the accounting database.
    find_lookback_days: int = Field(default=30, ge=1)
    # Above this many ids poll() lists all jobs and filters, instead of passing -j.
    max_ids_per_query: int = Field(default=5000, ge=1)


# --------------------------------------------------------------------------- job info


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


# --------------------------------------------------------------------------- state map

PENDING_STATES: Final = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RESV_DEL_HOLD",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "REQUEUED",
        "RESIZING",
        "SUSPENDED",
        "POWER_UP_NODE",
    }
)
RUNNING_STATES: Final = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED"})
# Final Slurm states and what they mean for UCloud; FAILED is handled apart (exit code).
_FINAL_MAP: Final[Mapping[str, tuple[JobState, str]]] = {
    "COMPLETED": (JobState.SUCCESS, "completed"),
    "CANCELLED": (JobState.SUCCESS, "cancelled"),
    "OUT_OF_MEMORY": (JobState.FAILURE, "out of memory"),
    "NODE_FAIL": (JobState.FAILURE, "node failure"),
    "BOOT_FAIL": (JobState.FAILURE, "node boot failure"),
    "PREEMPTED": (JobState.FAILURE, "preempted"),
    "REVOKED": (JobState.FAILURE, "revoked"),
    "TIMEOUT": (JobState.EXPIRED, "time limit reached"),
    "DEADLINE": (JobState.EXPIRED, "deadline reached"),
}
FINISHED_STATES: Final = frozenset({*_FINAL_MAP, "FAILED"})


def normalize_state(slurm_state: str) -> str:
    """``"CANCELLED by 1101"`` → ``"CANCELLED"``; also drops sacct's truncation mark ``+``."""
    words = slurm_state.strip().upper().split()
    return words[0].rstrip("+") if words else ""


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failed_message(exit_code: int | None, signal: int | None, reason: str | None) -> str:
    if signal:
        return f"killed by signal {signal} ({_signal_name(signal)})"
    if exit_code:
        return f"exited with code {exit_code}"
    return f"failed ({reason})" if reason else "failed"


def _waiting_message(state: str, reason: str | None) -> str:
    if state == "SUSPENDED":
        return "suspended"
    if state == "PENDING":
        return f"pending ({reason})" if reason else "pending"
    return f"pending ({state.lower()})"


def to_ucloud_state(
    slurm_state: str,
    exit_code: int | None = None,
    *,
    signal: int | None = None,
    reason: str | None = None,
) -> tuple[JobState, str]:
    """The UCloud state of a Slurm state, with a short human-readable message.

    The map is documented in this module's docstring. ``exit_code``/``signal`` make the
    FAILED message; ``reason`` (Slurm's) decorates PENDING, and FAILED without an exit status.
    """
    state = normalize_state(slurm_state)
    if state == "FAILED":
        return JobState.FAILURE, _failed_message(exit_code, signal, reason)
    if state in _FINAL_MAP:
        return _FINAL_MAP[state]
    if state in RUNNING_STATES:
        return JobState.RUNNING, "running" if state == "RUNNING" else f"running ({state.lower()})"
    if state in PENDING_STATES:
        return JobState.IN_QUEUE, _waiting_message(state, reason)
    return JobState.IN_QUEUE, f"unrecognised Slurm state: {slurm_state.strip() or '(empty)'}"


# --------------------------------------------------------------------------- pure parsers

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


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill a command and whatever it started (it leads its own session), then reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal_module.SIGKILL)
        await proc.wait()


class SlurmClient:
    """Runs the Slurm tools as configured; one instance per component, shared by tasks."""

    def __init__(self, config: SlurmConfig | None = None, *, tz: tzinfo | None = None) -> None:
        self.config = config or SlurmConfig()
        # Only for Slurm's ISO timestamps, should a site force SLURM_TIME_FORMAT.
        self._tz = tz
        self._accounting = self.config.accounting

    # ----------------------------------------------------------------- plumbing

    def _argv(self, tool: str, args: Sequence[str]) -> list[str]:
        exe = str(self.config.bin_dir / tool) if self.config.bin_dir else tool
        return [*self.config.command_prefix, exe, *args]

    def _env(self, extra: Mapping[str, str] | None = None, *, query: bool = False) -> dict[str, str]:
        env = dict(self.config.env)
        if extra:
            env.update(extra)
        if self.config.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.config.slurm_conf)
        if query:
            # Exact epoch timestamps and untranslated output for the parsers.
            env.update({"SLURM_TIME_FORMAT": "%s", "LC_ALL": "C"})
        return env

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        query: bool = True,
    ) -> CommandResult:
        """Run one Slurm tool; raise SlurmUnavailableError if it cannot start or times out."""
        argv = self._argv(tool, args)
        started = time.perf_counter()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(env, query=query),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            SLURM_COMMAND_SECONDS.labels(tool, "error").observe(time.perf_counter() - started)
            raise SlurmUnavailableError(f"cannot run {tool}: {exc}", command=argv) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.config.timeout_seconds)
        except TimeoutError:
            await _kill(proc)
            SLURM_COMMAND_SECONDS.labels(tool, "timeout").observe(time.perf_counter() - started)
            raise SlurmUnavailableError(
                f"{tool} did not answer within {self.config.timeout_seconds:g} s", command=argv
            ) from None
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        seconds = time.perf_counter() - started
        returncode = proc.returncode if proc.returncode is not None else -1
        SLURM_COMMAND_SECONDS.labels(tool, "ok" if returncode == 0 else "error").observe(seconds)
        result = CommandResult(
            argv=tuple(argv),
            returncode=returncode,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            seconds=seconds,
        )
        log.debug(
            "Slurm command finished",
            extra={"command": tool, "returncode": returncode, "seconds": round(seconds, 4)},
        )
        return result

    @staticmethod
    def _failure(result: CommandResult, what: str) -> SlurmError:
        detail = clean_slurm_error(result.stderr) or f"exit status {result.returncode}"
        kind = SlurmUnavailableError if is_transient(detail) else SlurmError
        return kind(f"{what} failed", detail=detail, command=result.argv, returncode=result.returncode)

    def _user(self) -> str:
        return self.config.user or pwd.getpwuid(os.geteuid()).pw_name

    # ----------------------------------------------------------------- operations

    async def submit(self, script_path: Path, *, cwd: Path, env: Mapping[str, str] | None = None) -> int:
        """``sbatch --parsable <script>`` from ``cwd``; the job id.

        ``env`` is laid over the configured base environment and is what the job inherits
        (sbatch exports its environment). Raises SlurmRejectedError with a readable message
        when Slurm refuses the job, SlurmUnavailableError when it cannot be reached.
        """
        result = await self.run("sbatch", ["--parsable", str(script_path)], env=env, cwd=cwd, query=False)
        if result.returncode != 0:
            raise sbatch_error(result.stderr, command=result.argv, returncode=result.returncode)
        job_id = parse_sbatch_output(result.stdout)
        log.info("Slurm job submitted", extra={"slurm_job_id": job_id, "seconds": round(result.seconds, 4)})
        return job_id

    async def cancel(self, job_ids: Iterable[int]) -> None:
        """One ``scancel`` for all ids; jobs that already ended or are unknown are no error."""
        ids = sorted(set(job_ids))
        if not ids:
            return
        result = await self.run("scancel", [str(i) for i in ids], query=False)
        if result.returncode != 0 and (errors := scancel_errors(result.stderr)):
            detail = "; ".join(errors)
            kind = SlurmUnavailableError if is_transient(detail) else SlurmError
            raise kind("scancel failed", detail=detail, command=result.argv, returncode=result.returncode)

    async def find_jobs_by_name(self, name: str, *, user: str | None = None) -> list[int]:
        """Ids of the user's jobs called ``name``, oldest first; [] if there is none.

        squeue sees queued, running and recently finished jobs (MinJobAge); when it finds
        none and accounting is available, sacct looks back ``find_lookback_days``. A retry
        after a crash uses this to find the job it already submitted.
        """
        if not name or "," in name or FIELD_SEPARATOR in name:
            raise ValueError(f"cannot look up job name {name!r}")
        owner = user or self._user()
        result = await self.run("squeue", ["-h", "-t", "all", "-u", owner, "-n", name, "-o", "%A"])
        if result.returncode != 0:
            raise self._failure(result, "squeue")
        found = parse_job_ids(result.stdout)
        if found or not await self.has_accounting():
            return found
        result = await self.run(
            "sacct",
            [
                "-X", "-P", "-n",
                "-u", owner,
                "--name", name,
                "-S", f"now-{self.config.find_lookback_days}days",
                "-E", "now",
                "-o", "JobIDRaw",
            ],
        )  # fmt: skip
        if result.returncode != 0:
            raise self._failure(result, "sacct")
        return parse_job_ids(result.stdout)

    async def poll(self, job_ids: Iterable[int]) -> dict[int, SlurmJobInfo]:
        """One ``squeue`` call for all ``job_ids``: id → info for the jobs Slurm still knows.

        Jobs absent from the result have left slurmctld's memory (finished more than
        MinJobAge ago, or never existed): see :meth:`poll_accounting`.
        """
        wanted = set(job_ids)
        if not wanted:
            return {}
        args = ["-h", "-t", "all", "-O", squeue_format()]
        if len(wanted) <= self.config.max_ids_per_query:
            args += ["-j", ",".join(str(i) for i in sorted(wanted))]
        result = await self.run("squeue", args)
        if result.returncode != 0:
            # Asked for ids of which none exists any more (a single id, for instance).
            if "invalid job id" in result.stderr.lower():
                return {}
            raise self._failure(result, "squeue")
        jobs = parse_squeue(result.stdout, self._tz)
        return {job_id: info for job_id, info in jobs.items() if job_id in wanted}

    async def poll_accounting(self, job_ids: Iterable[int]) -> dict[int, SlurmJobInfo]:
        """One ``sacct`` call for jobs squeue has forgotten; {} without accounting."""
        wanted = set(job_ids)
        if not wanted or not await self.has_accounting():
            return {}
        # -a: root (the bridge) must see every user's jobs; ignored for plain users.
        args = ["-X", "-P", "-n", "-a", "-o", ",".join(SACCT_FIELDS)]
        args += ["-j", ",".join(str(i) for i in sorted(wanted))]
        result = await self.run("sacct", args)
        if result.returncode != 0:
            if self._accounting_disabled(result):
                return {}
            raise self._failure(result, "sacct")
        jobs = parse_sacct(result.stdout, self._tz)
        return {job_id: info for job_id, info in jobs.items() if job_id in wanted}

    async def has_accounting(self) -> bool:
        """Whether sacct works here; asked once (cheaply) unless configured."""
        if self._accounting is None:
            result = await self.run("sacct", ["-X", "-P", "-n", "-j", "1", "-o", "JobIDRaw"])
            if result.returncode == 0:
                self._accounting = True
            elif self._accounting_disabled(result):
                self._accounting = False
            else:
                # Database down, timeout...: don't decide now.
                raise self._failure(result, "sacct")
            log.info("Slurm accounting detected", extra={"accounting": self._accounting})
        return self._accounting

    def _accounting_disabled(self, result: CommandResult) -> bool:
        if "accounting storage is disabled" in result.stderr.lower():
            self._accounting = False
            return True
        return False

    async def ping(self) -> bool:
        """Whether slurmctld answers (``scontrol ping``): for readiness checks."""
        try:
            result = await self.run("scontrol", ["ping"])
        except SlurmUnavailableError:
            return False
        return result.returncode == 0 and "UP" in result.stdout

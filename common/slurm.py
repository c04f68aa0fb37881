"""The one module that talks to the Slurm command-line tools.

Everything ucim asks Slurm goes through :class:`SlurmClient`: ``sbatch``, ``scancel``,
``squeue``, ``sacct`` (and ``scontrol ping``; ``sinfo`` and ``scontrol update`` for a walltime
extension). Commands run as asyncio subprocesses from argument lists, never through a shell.
Where they run and with what environment is fixed by :class:`SlurmConfig` (binary directory,
an optional command prefix such as ``runuser -u alice --``, ``SLURM_CONF`` and the base
environment); nothing here reads ``os.environ``.
The process that calls :meth:`SlurmClient.submit` or :meth:`SlurmClient.cancel` must
already be the user's own (the user instance); the bridge, as root, polls and raises time limits
(:meth:`SlurmClient.set_time_limit`), which Slurm lets no user do to their own job.

The output formats and their parsers are :mod:`ucim.common.slurm_parsing`, failures
:mod:`ucim.common.slurm_errors`, the map from Slurm's states to UCloud's
:mod:`ucim.common.slurm_states`.

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
  wait(2) status (``exit 3`` → 768, ``exit 200`` → 51200, SIGTERM → 15), decoded into exit
  status and signal (:func:`ucim.common.slurm_parsing.decode_wait_status`), so a job that
  turns terminal needs no second query; ``-t all`` keeps finished jobs for ``MinJobAge``
  (300 s here). ``-o`` (``%A|%T|...``) costs the same but has no exit code at all.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal as signal_module
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from pathlib import Path

from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field

from ucim.common.slurm_errors import (
    SlurmError,
    SlurmUnavailableError,
    clean_slurm_error,
    is_transient,
    sbatch_error,
    scancel_errors,
)
from ucim.common.slurm_parsing import (
    FIELD_SEPARATOR,
    SACCT_FIELDS,
    PendingJob,
    SlurmJobInfo,
    minutes_to_slurm_time,
    parse_job_ids,
    parse_pending,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    parse_time_limit,
    pending_format,
    squeue_format,
)

log = logging.getLogger(__name__)

SLURM_COMMAND_SECONDS = Histogram(
    "ucim_slurm_command_seconds",
    "Duration of Slurm command-line calls.",
    ["command", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


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
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that comes as the
            # command ends, and a stopping controller then waits for ever (seen in bench_accounting).
            async with asyncio.timeout(self.config.timeout_seconds):
                out, err = await proc.communicate()
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

    async def user_accounts(self) -> list[str]:
        """The Slurm accounts the user has an association with, each once, as ``sacctmgr`` lists them."""
        args = ["show", "user", self._user(), "withassoc", "format=account", "--parsable2", "--noheader"]
        result = await self.run("sacctmgr", args)
        if result.returncode != 0:
            raise self._failure(result, "sacctmgr")
        return list(dict.fromkeys(line.strip() for line in result.stdout.splitlines() if line.strip()))

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

    async def partition_max_time(self, job_id: int) -> timedelta | None:
        """The longest time limit the partition of ``job_id`` allows (its MaxTime); None: unlimited.

        A job still pending in several partitions gets the smallest of theirs. A job Slurm no
        longer has (finished) is a SlurmError that says so.
        """
        result = await self.run("squeue", ["-h", "-j", str(job_id), "-o", "%P"])
        partitions = result.stdout.strip() if result.returncode == 0 else ""
        if not partitions:
            detail = clean_slurm_error(result.stderr) or f"Slurm has no queued or running job {job_id}"
            raise SlurmError("squeue failed", detail=detail, command=result.argv, returncode=result.returncode)
        result = await self.run("sinfo", ["-h", "-p", partitions, "-o", "%l"])
        if result.returncode != 0:
            raise self._failure(result, "sinfo")
        limits = [limit for line in result.stdout.split() if (limit := parse_time_limit(line)) is not None]
        return min(limits) if limits else None

    async def set_time_limit(self, job_id: int, minutes: int) -> None:
        """``scontrol update JobId=<id> TimeLimit=<minutes>``: only root and Slurm's operators may raise it."""
        limit = minutes_to_slurm_time(minutes)
        result = await self.run("scontrol", ["update", f"JobId={job_id}", f"TimeLimit={limit}"], query=False)
        if result.returncode != 0:
            raise self._failure(result, "scontrol update")
        log.info("Slurm time limit set", extra={"slurm_job_id": job_id, "minutes": minutes})

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

    async def pending(self, partitions: Iterable[str] | None = None) -> list[PendingJob]:
        """One ``squeue`` listing every user's pending jobs (in ``partitions``, or all): for queue positions.

        ``-a`` includes hidden partitions, ``-P`` lists a job waiting in several partitions once per
        partition. Only root (the bridge) sees other users' jobs where ``PrivateData=jobs`` is set.
        """
        args = ["-h", "-a", "-P", "-t", "PENDING", "-O", pending_format()]
        if partitions is not None:
            names = sorted(set(partitions))
            if not names:
                return []
            args += ["-p", ",".join(names)]
        result = await self.run("squeue", args)
        if result.returncode != 0:
            raise self._failure(result, "squeue")
        return parse_pending(result.stdout, self._tz)

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

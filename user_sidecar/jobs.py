"""Submitting and cancelling a user's Slurm jobs, as that user.

The job folder is ``<drive root>/<jobs_folder>/<UCloud job id>`` (0770, the process runs
with umask 0007): the drive is the request's (``SubmitRequest.drive``, a locator rooted
with the site's ``drive_roots`` as file calls are), the user's home when it names none. A
project's job names its project's drive, whose folder is its group's (setgid 2770): the
instance makes the folder as its user, so the OS lets only a member in, and the folder
and what the job writes in it belong to the project's group.

Submission is idempotent on the Slurm job name, which is the UCloudJob's identity, and the
job folder is the local record of what was submitted, so the common case asks Slurm
nothing before ``sbatch``:

* **no folder**: this job was never submitted from here. The folder is created (``mkdir``,
  which exactly one caller can win), the script ``job.sbatch`` (rendered from the job's application
  beforehand, its input files checked as the user; for a Jinja application also ``job_template.j2`` and
  ``job_template_params.yml``, as the anchor writes them) is written atomically and
  sbatch runs at once. After sbatch answers, ``.slurm-job-id`` (the Slurm id and the job
  name) is written atomically into the folder.
* **a record of this job name**: the job was submitted; the answer is its id with
  ``alreadySubmitted``, again without asking Slurm. (A record of another name, left by an
  earlier UCloudJob with the same UCloud job id, counts as no record.)
* **a folder without that record**: something happened between ``mkdir`` and the record
  (the process died around sbatch, sbatch timed out, Slurm was away, or sbatch refused an
  earlier attempt in a folder the user had made). Only Slurm knows, so it is asked by name
  (:meth:`SlurmClient.find_jobs_by_name`: squeue, then sacct); a job found is recorded and
  answered, otherwise the job is submitted.

When sbatch refuses the job, what this submission created is removed again (the script,
and the folder if this call made it), so a retry starts from the same state: no folder,
nothing in Slurm. When Slurm cannot be reached, the folder stays and a retry looks the job
up by name, in case sbatch created it after all. Submissions of one job name are serialised
within the instance, and the one instance of a user is the only process that submits its
jobs; the record is written without fsync, so after a power loss (not a process crash) a
folder whose record was lost takes the lookup path, which is still correct.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import TypeAdapter, ValidationError

from ucim.common.drives import Locator
from ucim.common.instance_api import SubmitRequest, SubmitResponse
from ucim.common.resources import JobInterface
from ucim.common.slurm import SlurmClient
from ucim.common.slurm_errors import SlurmRejectedError
from ucim.user_sidecar.job_inputs import local_inputs
from ucim.user_sidecar.load_instructions import SiteApplications
from ucim.user_sidecar.paths import DriveResolver, drive_root
from ucim.user_sidecar.sbatch import JobScript, check_job_id, check_job_name, render_job

log = logging.getLogger(__name__)

SCRIPT_NAME: Final = "job.sbatch"
# A Jinja application's template after preprocessing and its context, beside the script (as the anchor does).
TEMPLATE_NAME: Final = "job_template.j2"
CONTEXT_NAME: Final = "job_template_params.yml"
# The submission record in the job folder: "slurm_job_id=<id>" and "slurm_job_name=<name>" lines.
RECORD_NAME: Final = ".slurm-job-id"
FOLDER_MODE: Final = 0o770


class JobFolderError(Exception):
    """The job folder cannot be made now: its drive's folder is missing, or the user is not (yet) let in."""


class Submitter:
    """Renders, writes and submits jobs for one user; one per instance."""

    def __init__(self, *, site: SiteApplications, slurm: SlurmClient, drives: DriveResolver, jobs_folder: str) -> None:
        self.site = site
        self.slurm = slurm
        self.drives = drives
        self.jobs_folder = jobs_folder
        # One submission per job name at a time, so a retry racing the original finds its job.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def job_folder(self, job_id: str, drive: str | None = None) -> Path:
        """``<drive root>/<jobs_folder>/<job id>``; PathRefusedError says why a drive is not the user's to use."""
        if drive is None:
            root = self.drives.home
        else:
            root = drive_root(Locator.parse(drive), self.drives.roots, self.drives.user, self.drives.home)
        return root / self.jobs_folder / check_job_id(job_id)

    async def submit(self, request: SubmitRequest) -> SubmitResponse:
        """Submit ``request`` once; InvalidJobError, PathRefusedError, JobFolderError and SlurmError say why not."""
        name = check_job_name(request.slurm_job_name)
        folder = self.job_folder(request.job_id, request.drive)
        # Everything the user can get wrong is found before anything is touched.
        inputs = local_inputs(request.application, request.parameters, self.drives)
        script = render_job(request, folder, self.site, inputs)
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                return await self._submit_once(name, folder, script)
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    async def _submit_once(self, name: str, folder: Path, script: JobScript) -> SubmitResponse:
        recorded = read_record(folder)
        if recorded is not None and recorded.name == name:
            log.info("job already submitted", extra={"slurm_job_id": recorded.slurm_job_id, "job_name": name})
            return self._answer(recorded.slurm_job_id, folder, recorded.interfaces, already_submitted=True)
        created = self._make_folder(folder)
        if not created:
            # An earlier attempt got at least as far as mkdir but left no record: ask Slurm.
            existing = await self.slurm.find_jobs_by_name(name)
            if existing:
                # The script on disk is the one Slurm runs: its interfaces are not known here any more.
                log.info("job already submitted", extra={"slurm_job_id": existing[0], "job_name": name})
                _write_record(folder, Record(existing[0], name))
                return self._answer(existing[0], folder, [], already_submitted=True)
        written = _write_job_files(folder, script)
        try:
            job_id = await self.slurm.submit(folder / SCRIPT_NAME, cwd=folder)
        except SlurmRejectedError:
            # Nothing was submitted: leave the folder as this call found it.
            for path in written:
                path.unlink(missing_ok=True)
            if created:
                _remove_if_empty(folder)
            raise
        _write_record(folder, Record(job_id, name, script.interfaces))
        return self._answer(job_id, folder, script.interfaces)

    def _make_folder(self, folder: Path) -> bool:
        """Create the job folder (and the jobs root); True if this call created it."""
        try:
            _make_shared_folder(folder.parent)
            return _make_shared_folder(folder)
        except OSError as error:
            # The drive's folder is not there yet, or the instance has not got the project's group yet.
            raise JobFolderError(f"cannot make the job folder {folder}: {error.strerror}") from error

    def _answer(
        self, slurm_job_id: int, folder: Path, interfaces: Sequence[JobInterface], *, already_submitted: bool = False
    ) -> SubmitResponse:
        return SubmitResponse(
            slurm_job_id=slurm_job_id,
            job_folder=str(folder),
            folder_in_drive=f"{self.jobs_folder}/{folder.name}",
            already_submitted=already_submitted,
            interfaces=list(interfaces),
        )

    async def cancel(self, job_ids: list[int]) -> None:
        """scancel as the user: Slurm itself refuses jobs that are not the user's."""
        await self.slurm.cancel(job_ids)


def _write_job_files(folder: Path, script: JobScript) -> list[Path]:
    """The script, and a Jinja application's template and context beside it; the paths written."""
    files = {SCRIPT_NAME: script.script, TEMPLATE_NAME: script.template, CONTEXT_NAME: script.parameters_yaml}
    written = []
    for name, text in files.items():
        if text is not None:
            _write_atomically(folder / name, text)
            written.append(folder / name)
    return written


def _make_shared_folder(folder: Path) -> bool:
    """mkdir ``folder`` FOLDER_MODE; True if this call made it, False if it was a folder already."""
    try:
        folder.mkdir(mode=FOLDER_MODE)
    except FileExistsError:
        if not folder.is_dir():
            raise
        return False
    # mkdir's mode is filtered by the umask; the folder is meant for the project group too. A setgid bit
    # inherited from a project folder stays, so what the job writes belongs to the project's group.
    folder.chmod(FOLDER_MODE | (folder.stat().st_mode & stat.S_ISGID))
    return True


@dataclass(frozen=True)
class Record:
    """What the job folder's submission record holds."""

    slurm_job_id: int
    name: str
    interfaces: tuple[JobInterface, ...] = ()


_INTERFACES: Final = TypeAdapter(tuple[JobInterface, ...])


def read_record(folder: Path) -> Record | None:
    """The folder's submission record; None if there is no usable one."""
    try:
        text = (folder / RECORD_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        log.warning("submission record unreadable; asking Slurm", extra={"folder": str(folder)}, exc_info=True)
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    job_id, name = fields.get("slurm_job_id", ""), fields.get("slurm_job_name", "")
    if not (job_id.isascii() and job_id.isdigit() and name):
        log.warning("submission record garbled; asking Slurm", extra={"folder": str(folder)})
        return None
    try:
        interfaces = _INTERFACES.validate_json(fields.get("interfaces") or "[]")
    except ValidationError:  # the user's own folder: what they wrote there names no interface
        log.warning("submission record's interfaces garbled; ignored", extra={"folder": str(folder)})
        interfaces = ()
    return Record(int(job_id), name, interfaces)


def _write_record(folder: Path, record: Record) -> None:
    """Record a submission; best effort: without the record a retry asks Slurm instead."""
    lines = f"slurm_job_id={record.slurm_job_id}\nslurm_job_name={record.name}\n"
    if record.interfaces:
        lines += f"interfaces={_INTERFACES.dump_json(record.interfaces, by_alias=True, exclude_none=True).decode()}\n"
    try:
        _write_atomically(folder / RECORD_NAME, lines)
    except OSError:
        extra = {"folder": str(folder), "slurm_job_id": record.slurm_job_id}
        log.warning("could not record the submission; a retry will ask Slurm", extra=extra, exc_info=True)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with temporary.open("x", encoding="utf-8") as stream:
            stream.write(text)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        log.info("job folder kept: it is not empty", extra={"folder": str(folder)})

"""Submitting and cancelling a user's Slurm jobs, as that user.

Submission is idempotent on the Slurm job name, which is the UCloudJob's identity:
before anything is written, the instance asks Slurm for a job of that name and, if one
exists, answers with it (``alreadySubmitted``). A job folder is
``<home>/<jobs_folder>/<UCloud job id>`` (0770, the process runs with umask 0007), the
script is ``job.sbatch`` in it, written atomically. When sbatch refuses the job, what
this submission created is removed again, so a retry starts from the same state; when
Slurm cannot be reached, the folder stays and a retry finds the job by name if sbatch
created it after all.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Final

from prometheus_client import Counter

from ucim.common.instance_api import SubmitRequest, SubmitResponse
from ucim.common.slurm import SlurmClient, SlurmRejectedError
from ucim.user_sidecar.templates import Catalogue, check_job_id, check_job_name, render_script

log = logging.getLogger(__name__)

SCRIPT_NAME: Final = "job.sbatch"
FOLDER_MODE: Final = 0o770

SUBMISSIONS = Counter(
    "ucim_submissions",
    "Job submissions by this instance, by result (submitted, already_submitted, invalid, rejected, unavailable).",
    ["result"],
)


class Submitter:
    """Renders, writes and submits jobs for one user; one per instance."""

    def __init__(self, *, catalogue: Catalogue, slurm: SlurmClient, home: Path, jobs_folder: str) -> None:
        self.catalogue = catalogue
        self.slurm = slurm
        self.jobs_root = home / jobs_folder
        # One submission per job name at a time, so a retry racing the original finds its job.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def job_folder(self, job_id: str) -> Path:
        return self.jobs_root / check_job_id(job_id)

    async def submit(self, request: SubmitRequest) -> SubmitResponse:
        """Submit ``request`` once; InvalidJobError and SlurmError tell the caller why not."""
        name = check_job_name(request.slurm_job_name)
        folder = self.job_folder(request.job_id)
        # Everything the user can get wrong is found before anything is touched.
        script = render_script(self.catalogue, request, folder)
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

    async def _submit_once(self, name: str, folder: Path, script: str) -> SubmitResponse:
        existing = await self.slurm.find_jobs_by_name(name)
        if existing:
            log.info("job already submitted", extra={"slurm_job_id": existing[0], "job_name": name})
            return SubmitResponse(slurm_job_id=existing[0], job_folder=str(folder), already_submitted=True)
        created = self._make_folder(folder)
        script_path = folder / SCRIPT_NAME
        _write_atomically(script_path, script)
        try:
            job_id = await self.slurm.submit(script_path, cwd=folder)
        except SlurmRejectedError:
            # Nothing was submitted: leave the folder as this call found it.
            script_path.unlink(missing_ok=True)
            if created:
                _remove_if_empty(folder)
            raise
        return SubmitResponse(slurm_job_id=job_id, job_folder=str(folder))

    def _make_folder(self, folder: Path) -> bool:
        """Create the job folder (and the jobs root); True if this call created it."""
        self.jobs_root.mkdir(mode=FOLDER_MODE, exist_ok=True)
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            return False
        # mkdir's mode is filtered by the umask; the folder is meant for the project group too.
        folder.chmod(FOLDER_MODE)
        return True

    async def cancel(self, job_ids: list[int]) -> None:
        """scancel as the user: Slurm itself refuses jobs that are not the user's."""
        await self.slurm.cancel(job_ids)


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

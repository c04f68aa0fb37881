"""The API of a user's instance (user_sidecar), as the operator and gateway call it.

Callers reach an instance only through the slurm_bridge's ingress:
``<UserInstance.status.endpoint><path>`` with ``Authorization: Bearer <ingress token>``;
the bridge forwards to the instance's unix socket. Paths and bodies are defined
here once; errors use the UCloud error envelope (``{"why": ..., "statusCode": ...}``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from ucim.common.drives import Locator
from ucim.common.protocol import UploadProtocol
from ucim.common.resources import (
    MAX_INTERFACES,
    JobApplication,
    JobInterface,
    JobResources,
    ParameterValue,
    ProductRef,
    SlurmPlacement,
)

# ``GET <endpoint>`` upgraded to this protocol opens a tunnel: the connection then carries the
# instance's own HTTP (``ucim.common.byte_tunnels``, ``ucim.gateway.tunnel_connector``).
TUNNEL_UPGRADE = "ucim-instance"

SUBMIT_PATH = "/jobs/submit"
CANCEL_PATH = "/jobs/cancel"
# Core's jobs/requestDynamicParameters body ({owner, application}), answered by the user's instance.
DYNAMIC_PARAMETERS_PATH = "/jobs/dynamic-parameters"
HEALTH_PATH = "/healthz"
# File calls: bodies and answers are UCloud's own (``Files*`` in protocol.py), passed through by the
# gateway unchanged. The drive of every file id is the request's ``resolvedCollection``, whose
# providerGeneratedId is a locator (``ucim.common.drives``).
FILES_BROWSE_PATH = "/files/browse"
FILES_RETRIEVE_PATH = "/files/retrieve"
FILES_FOLDER_PATH = "/files/folder"  # BulkRequest[FilesProviderCreateFolderRequestItem] -> BulkResponse[Empty]
FILES_MOVE_PATH = "/files/move"  # BulkRequest[FilesProviderMoveOrCopyRequestItem] -> BulkResponse[Empty]
FILES_COPY_PATH = "/files/copy"  # same as move
FILES_TRASH_PATH = "/files/trash"  # BulkRequest[FilesProviderTrashRequestItem] -> BulkResponse[Empty]
FILES_EMPTY_TRASH_PATH = "/files/emptyTrash"  # same as trash
FILES_DELETE_PATH = "/files/delete"  # BulkRequest[UFile] -> BulkResponse[Empty] (Core's DELETE /files)

# Transfers. Creating one answers a token per item (``TransferToken``); the gateway turns
# it into the endpoint Core hands to the browser. Tokens are made and checked by the
# instance, so a token only ever works for the user whose instance made it.
FILES_UPLOAD_PATH = "/files/upload"  # BulkRequest[FilesProviderCreateUploadRequestItem] -> BulkResponse[TransferToken]
FILES_DOWNLOAD_PATH = "/files/download"  # BulkRequest[FilesProviderCreateDownloadRequestItem] -> same
# CHUNKED upload data: POST with the CHUNKED headers below and the chunk as the body;
# GET with only the token header answers the upload's progress (``UploadProgress``).
UPLOAD_CHUNK_PATH = "/transfers/upload"
# A folder upload: GET ?token=<t> upgraded to a websocket speaking WEBSOCKET_V2 (``ucim.common.upload_frames``).
FOLDER_UPLOAD_PATH = "/transfers/folder"
# A download: GET ?token=<t>, honouring Range.
DOWNLOAD_FILE_PATH = "/transfers/download"

CHUNKED_TOKEN_HEADER = "Chunked-Upload-Token"  # noqa: S105 (a header name)
CHUNKED_OFFSET_HEADER = "Chunked-Upload-Offset"
CHUNKED_TOTAL_SIZE_HEADER = "Chunked-Upload-Total-Size"


# A job's Slurm name is this and its UCloudJob's uid: unique per object, stable across retries and restarts.
SLURM_JOB_NAME_PREFIX = "ucim-"


def slurm_job_name(uid: str) -> str:
    """The Slurm job name of the UCloudJob whose ``metadata.uid`` is ``uid``."""
    return SLURM_JOB_NAME_PREFIX + uid


class _Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SubmitRequest(_Message):
    """Submit one UCloud job as the instance's user; idempotent on ``slurm_job_name``."""

    job_id: str = Field(min_length=1)
    # The Slurm job name: the resource's identity, so a retry finds the job instead of submitting it again.
    slurm_job_name: str = Field(min_length=1, max_length=200)
    application: JobApplication
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    product: ProductRef
    resources: JobResources
    slurm: SlurmPlacement = Field(default_factory=SlurmPlacement)
    # The drive the job folder goes in, as a locator (``project:<group>`` for a project's job); None is the
    # user's home. The folder is ``<drive root>/<jobs_folder>/<job id>``.
    drive: str | None = None

    @field_validator("drive")
    @classmethod
    def _a_locator(cls, drive: str | None) -> str | None:
        return None if drive is None else str(Locator.parse(drive))


class SubmitResponse(_Message):
    slurm_job_id: int
    # Where the instance made the job folder (a local path on the frontend) ...
    job_folder: str
    # ... and that folder below its drive's root ("ucloud-jobs/<job id>"): the operator prefixes the drive's id.
    # None from an instance older than the field: the job then has no outputFolder at Core.
    folder_in_drive: str | None = None
    # True when a job with this name already existed and no new one was submitted.
    already_submitted: bool = False
    # The web and VNC servers the script starts (its port, its dynamicInterface calls); [] for a batch job.
    interfaces: list[JobInterface] = Field(default_factory=list, max_length=MAX_INTERFACES)


class CancelRequest(_Message):
    slurm_job_ids: list[int] = Field(min_length=1, max_length=10_000)


class TransferToken(_Message):
    """The instance's answer per item of FILES_UPLOAD_PATH / FILES_DOWNLOAD_PATH."""

    token: str
    # What an upload's endpoint speaks: CHUNKED (UPLOAD_CHUNK_PATH), or WEBSOCKET_V2 for a folder (FOLDER_UPLOAD_PATH).
    protocol: UploadProtocol = "CHUNKED"


class UploadProgress(_Message):
    """Answer to every chunk and to GET UPLOAD_CHUNK_PATH: how much of the file is stored."""

    offset: int  # bytes stored so far: the next chunk starts here
    total_size: int | None = None  # None until the first chunk named it
    complete: bool = False
    # The file's final id once complete (RENAME may have picked another name).
    id: str | None = None


# Log follow: POST a FollowRequest; the answer streams one LogChunk per line (NDJSON), and an empty
# line every FOLLOW_KEEPALIVE_SECONDS of silence so that nothing between the ends times it out.
# ``follow`` false reads what the files hold from ``offsets`` on and ends; true goes on until the caller
# hangs up (the gateway knows when the job is terminal, then asks once more without ``follow``).
JOBS_FOLLOW_PATH = "/jobs/follow"
FOLLOW_KEEPALIVE_SECONDS = 20.0


class FollowRequest(_Message):
    job_folder: str = Field(min_length=1, max_length=4096)  # UCloudJob.status.jobFolder, a local path
    # Bytes already had, by file name: each file is read from there on.
    offsets: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=4096)
    follow: bool = True


class LogChunk(_Message):
    """Text a job wrote to one of its output files: ``stdout.txt``/``stderr.txt`` (rank 0), ``std-<r>.out``/``.err``."""

    file: str
    rank: int
    stream: Literal["stdout", "stderr"]
    text: str  # decoded as UTF-8, invalid bytes as U+FFFD
    end: int  # the file's offset after these bytes: where a later read goes on

"""The UCloud provider protocol: wire models shared by the gateway, the operator and tests.

Field names, nulls and millisecond timestamps follow UCloud/Core's JSON exactly
(see docs/protocol.md); every model here is the one place its shape is defined.

UCloud/Core is written in Go, so Go's ``encoding/json`` behaviour *is* the wire
format. The rules that matter, and how they are kept here:

* An optional (``util.Option``) field is written as ``null``, never left out:
  optional fields are ``X | None`` and ``dump()`` keeps ``None`` as ``null``.
* A field tagged ``omitempty`` is left out when it is false, ``0``, ``""`` or
  empty: such fields carry the ``OMIT_EMPTY`` marker (``OmitEmptyBool`` ...).
* Timestamps are integer milliseconds; a float, a string or ``null`` is rejected
  on input, as Go's parser does (``Timestamp`` is a strict int).
* A nil slice or map arrives as ``null``; those fields accept it.
* Unknown keys are ignored; keys are written in camelCase.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    model_serializer,
)
from pydantic.alias_generators import to_camel


class JobState(StrEnum):
    """A UCloud job state (JobState in UCloud's API)."""

    IN_QUEUE = "IN_QUEUE"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    EXPIRED = "EXPIRED"
    SUSPENDED = "SUSPENDED"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.EXPIRED})


# --- serialization machinery --------------------------------------------------


class _OmitEmpty:
    """Field marker for Go's ``omitempty``: the key is left out when the value is empty."""

    def __repr__(self) -> str:
        return "OMIT_EMPTY"


OMIT_EMPTY = _OmitEmpty()


def _null_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


T = TypeVar("T")
U = TypeVar("U")
S = TypeVar("S")

# Integer epoch milliseconds. Strict, because Go's parser rejects 1.7e12, "17..." and true.
Timestamp = Annotated[int, Strict()]
OmitEmptyBool = Annotated[bool, OMIT_EMPTY]
OmitEmptyStr = Annotated[str, OMIT_EMPTY]
OmitEmptyInt = Annotated[int, OMIT_EMPTY]
# A list that is written even when empty but where a sender may have written nil as null.
NullAsEmptyList = Annotated[list[T], BeforeValidator(_null_as_empty_list)]


def now_ms() -> int:
    """The current time as UCloud timestamps it: integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


@cache
def _omit_empty_fields(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """(python name, wire key) of every field of ``model`` marked OMIT_EMPTY."""
    return tuple(
        (name, info.serialization_alias or info.alias or name)
        for name, info in model.model_fields.items()
        if any(meta is OMIT_EMPTY for meta in info.metadata)
    )


class WireModel(BaseModel):
    """Base of every wire model: camelCase keys, unknown keys ignored, omitempty honoured."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    @model_serializer(mode="wrap")
    def _drop_empty_omitempty_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, alias in _omit_empty_fields(type(self)):
            # The key is the alias or the name, depending on how the caller dumps.
            for key in (alias, name):
                if key in data and not data[key]:
                    del data[key]
        return data


def dump(model: BaseModel) -> dict[str, Any]:
    """The model as UCloud writes it: camelCase, ``None`` as ``null``, omitempty applied."""
    return model.model_dump(mode="json", by_alias=True)


def dump_json(model: BaseModel) -> bytes:
    """``dump()`` as compact JSON bytes, ready for an HTTP body."""
    return model.model_dump_json(by_alias=True).encode()


# --- envelopes ----------------------------------------------------------------


class Empty(WireModel):
    """``util.Empty``: written as ``{}``, accepts anything."""


class BulkRequest(WireModel, Generic[T]):
    """``{"items": [...]}``; Go leaves the key out when the list is empty."""

    items: Annotated[NullAsEmptyList[T], OMIT_EMPTY] = Field(default_factory=list)


class BulkResponse(WireModel, Generic[T]):
    """``{"responses": [...]}``; Go leaves the key out when the list is empty."""

    responses: Annotated[NullAsEmptyList[T], OMIT_EMPTY] = Field(default_factory=list)


class FindByStringId(WireModel):
    id: str


class PageV2(WireModel, Generic[T]):
    """A page of results; ``items`` is never null (PageV2 has its own marshaller)."""

    items: NullAsEmptyList[T] = Field(default_factory=list)
    items_per_page: int = 50
    next: str | None = None


class HttpError(WireModel):
    """The error body of every non-2xx answer; ``statusCode`` repeats the HTTP status."""

    status_code: int
    why: str
    error_code: str = ""
    detailed_code: int = 0

    @classmethod
    def of(cls, status: int, why: str, error_code: str = "") -> Self:
        """Build the envelope as Go's ``HttpErr()`` does, which capitalises ``why``."""
        return cls(status_code=status, why=why[:1].upper() + why[1:], error_code=error_code)


def error_body(status: int, why: str, error_code: str = "") -> dict[str, Any]:
    """The JSON body of an error answer with the given HTTP status."""
    return dump(HttpError.of(status, why, error_code))


def why_of(body: bytes) -> str | None:
    """The ``why`` of an error answer's body, if the body is such an envelope."""
    try:
        found = json.loads(body)
    except ValueError:
        return None
    text = found.get("why") if isinstance(found, dict) else None
    return text if isinstance(text, str) else None


# --- products -----------------------------------------------------------------

ProductTypeName = Literal[
    "COMPUTE", "STORAGE", "INGRESS", "LICENSE", "INFERENCE", "NETWORK_IP", "PRIVATE_NETWORK", "PRIVATE_NETWORK_IP"
]
ProductTypeLower = Literal[
    "compute", "storage", "ingress", "license", "inference", "network_ip", "private_network", "private_network_ip"
]
AccountingFrequency = Literal["ONCE", "PERIODIC_MINUTE", "PERIODIC_HOUR", "PERIODIC_DAY"]


class ProductReference(WireModel):
    id: str
    category: str
    provider: str


class AccountingUnit(WireModel):
    name: str
    name_plural: str
    floating_point: bool = False
    display_frequency_suffix: bool = False


class ProductCategory(WireModel):
    name: OmitEmptyStr = ""
    provider: OmitEmptyStr = ""
    product_type: Annotated[ProductTypeName | Literal[""], OMIT_EMPTY] = ""
    accounting_unit: AccountingUnit
    accounting_frequency: Annotated[AccountingFrequency | Literal[""], OMIT_EMPTY] = ""
    free_to_use: OmitEmptyBool = False
    allow_sub_allocations: OmitEmptyBool = False


class Fraction(WireModel):
    numerator: int = 1
    denominator: int = 1


class ProductV2(WireModel):
    """A product as registered with ``POST /api/products/v2``."""

    type: ProductTypeLower
    category: ProductCategory
    name: str
    description: str = ""
    product_type: ProductTypeName
    price: int = 0
    fraction: Fraction = Field(default_factory=Fraction)
    hidden_in_grant_applications: bool = False
    usage: int | None = None
    # Compute products only.
    cpu: OmitEmptyInt = 0
    cpu_model: OmitEmptyStr = ""
    memory_in_gigs: OmitEmptyInt = 0
    memory_model: OmitEmptyStr = ""
    gpu: OmitEmptyInt = 0
    gpu_model: OmitEmptyStr = ""
    # Filled by Core only when asked for.
    balance: int = 0
    max_usable_balance: int = 0
    price_per_unit: int = 0  # deprecated, still written by Go

    def to_reference(self) -> ProductReference:
        return ProductReference(id=self.name, category=self.category.name, provider=self.category.provider)


# --- accounting (SP/accounting/accounting.go) ----------------------------------

# Go's zero ``time.Time`` as a Timestamp: what Core writes for a time it never set, and
# the replay point a provider sends when it has none (which replays everything).
GO_ZERO_TIME_MS = -62_135_596_800_000

WalletOwnerType = Literal["user", "project"]


class WalletOwner(WireModel):
    """The owner of a wallet; all three keys are always written, the unused id as ``""``."""

    type: WalletOwnerType
    username: str = ""
    project_id: str = ""

    @classmethod
    def user(cls, username: str) -> Self:
        return cls(type="user", username=username)

    @classmethod
    def project(cls, project_id: str) -> Self:
        return cls(type="project", project_id=project_id)

    @property
    def reference(self) -> str:
        """What Core keys the wallet on: the project id when there is one, else the username."""
        return self.project_id or self.username


class ProductCategoryIdV2(WireModel):
    name: OmitEmptyStr = ""
    provider: OmitEmptyStr = ""


class ChargeDescription(WireModel):
    scope: str | None = None  # usage is tracked per (owner, scope); None: the wallet's local usage
    description: str | None = None


class ReportUsageRequest(WireModel):
    """One item of ``POST /api/accounting/v2/reportUsage``; Core answers one bool (not locked) per item."""

    is_delta_charge: Annotated[bool, Strict()] = False  # Go takes only true or false
    owner: WalletOwner
    category_id_v2: ProductCategoryIdV2
    usage: Annotated[int, Strict()]  # int64 in the category's unit (periodic: unit x frequency)
    description: ChargeDescription = Field(default_factory=ChargeDescription)


# --- projects (SP/foundation/projects.go, as core2's coreutil builds them) ------

ProjectRole = Literal["PI", "ADMIN", "USER"]


class ProjectMember(WireModel):
    username: str
    role: ProjectRole
    email: OmitEmptyStr = ""  # never filled by Core


class ProjectGroupSpecification(WireModel):
    project: str = ""
    title: str = ""


class ProjectGroupStatus(WireModel):
    members: NullAsEmptyList[str] = Field(default_factory=list)  # sorted case-insensitively by Core


class ProjectGroup(WireModel):
    id: OmitEmptyStr = ""
    created_at: Timestamp = GO_ZERO_TIME_MS  # Core never sets it
    specification: ProjectGroupSpecification = Field(default_factory=ProjectGroupSpecification)
    status: ProjectGroupStatus = Field(default_factory=ProjectGroupStatus)


class ProjectSpecification(WireModel):
    parent: str | None = None
    title: str = ""
    can_consume_resources: bool = False


class SubProjectSettings(WireModel):
    allow_renaming: bool = False


class ProjectSettings(WireModel):
    sub_projects: SubProjectSettings = Field(default_factory=SubProjectSettings)


class ProjectStatus(WireModel):
    archived: bool = False
    is_favorite: bool = False
    is_hidden: bool = False
    members: NullAsEmptyList[ProjectMember] = Field(default_factory=list)
    groups: NullAsEmptyList[ProjectGroup] = Field(default_factory=list)  # by lower-cased title
    settings: ProjectSettings = Field(default_factory=ProjectSettings)
    my_role: str = ""  # always "" towards a provider
    path: str = ""  # always "" towards a provider
    personal_provider_project_for: str | None = None  # set: the personal provider project of this username


class Project(WireModel):
    """``fnd.Project`` as the accounting stream carries it (op 2)."""

    id: OmitEmptyStr = ""
    created_at: Timestamp = 0
    modified_at: Timestamp = 0
    specification: ProjectSpecification = Field(default_factory=ProjectSpecification)
    status: ProjectStatus = Field(default_factory=ProjectStatus)


# --- jobs: small value types --------------------------------------------------


class NameAndVersion(WireModel):
    name: str
    version: str


class SimpleDuration(WireModel):
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def to_millis(self) -> int:
        return self.hours * 3_600_000 + self.minutes * 60_000 + self.seconds * 1_000

    @classmethod
    def from_millis(cls, millis: int) -> Self:
        # Computed correctly; Go's SimpleDurationFromMillis always yields seconds=0.
        total_seconds = millis // 1000
        return cls(hours=total_seconds // 3600, minutes=total_seconds % 3600 // 60, seconds=total_seconds % 60)


class WorkflowSpecification(WireModel):
    application_name: str = ""
    language: str = ""
    init: str | None = None
    job: str | None = None
    readme: str | None = None
    inputs: list[ApplicationParameter] | None = None


# The value types Core sends. ``type`` stays a plain string on the model so that a
# job is never rejected for a parameter kind this provider ignores.
APP_PARAMETER_VALUE_TYPES = frozenset(
    {
        "text", "integer", "floating_point", "boolean", "file", "peer", "license_server", "block_storage",
        "network", "ingress", "private_network", "workflow", "modules", "api_server",
    }
)  # fmt: skip


class AppParameterValue(WireModel):
    """One parameter value: a single flat struct, discriminated by ``type``.

    A Go producer writes every key (zero values for the ones that do not apply);
    other producers may send only ``type`` and the relevant keys. Both parse, and
    ``dump()`` writes every key, as Go does.
    """

    type: str
    path: str = ""
    mount_path: str = ""
    read_only: bool = False
    value: Any = None
    hostname: str = ""
    job_id: str = ""
    id: str = ""
    specification: WorkflowSpecification = Field(default_factory=WorkflowSpecification)
    modules: list[str] | None = None
    port: int = 0
    tls: bool = False
    server: str = ""
    token: str = ""
    token_type: str = ""

    @classmethod
    def text(cls, value: str) -> Self:
        return cls(type="text", value=value)

    @classmethod
    def integer(cls, value: int) -> Self:
        return cls(type="integer", value=value)

    @classmethod
    def floating_point(cls, value: float) -> Self:
        return cls(type="floating_point", value=value)

    @classmethod
    def boolean(cls, value: bool) -> Self:
        return cls(type="boolean", value=value)

    @classmethod
    def file(cls, path: str, *, read_only: bool = False, mount_path: str = "") -> Self:
        return cls(type="file", path=path, read_only=read_only, mount_path=mount_path)

    @classmethod
    def peer(cls, hostname: str, job_id: str) -> Self:
        return cls(type="peer", hostname=hostname, job_id=job_id)

    @classmethod
    def resource(cls, type_: str, id_: str) -> Self:
        """A value that names another resource: license_server, network, ingress, ..."""
        return cls(type=type_, id=id_)


# --- applications (Job.status.resolvedApplication) ----------------------------


class InvocationParameter(WireModel):
    """One piece of a command line; Go writes every key of every variant."""

    type: str  # env | word | var | bool_flag | jinja
    variable: str = ""
    word: str = ""
    variable_names: list[str] | None = None
    prefix_global: str = ""
    suffix_global: str = ""
    prefix_variable: str = ""
    suffix_variable: str = ""
    is_prefix_variable_part_of_arg: bool = False
    is_suffix_variable_part_of_arg: bool = False
    variable_name: str = ""
    flag: str = ""
    template: str = ""


class EnumOption(WireModel):
    name: str
    value: str


class ApplicationParameter(WireModel):
    type: str
    name: str
    optional: bool = False
    default_value: Any = None  # raw JSON: a bare value or {"value": ...}
    title: str = ""
    description: str = ""
    min: Any = None
    max: Any = None
    step: Any = None
    unit_name: str = ""
    true_value: str = ""
    false_value: str = ""
    options: list[EnumOption] | None = None
    tagged: list[str] | None = None
    supported_modules: list[dict[str, Any]] | None = None


class ToolDescription(WireModel):
    info: NameAndVersion
    default_number_of_nodes: int = 1
    default_time_allocation: SimpleDuration = Field(default_factory=SimpleDuration)
    required_modules: list[str] | None = None
    authors: list[str] | None = None
    title: str = ""
    description: str = ""
    backend: str = "NATIVE"  # SINGULARITY | DOCKER | VIRTUAL_MACHINE | NATIVE | UCX
    license: str = ""
    image: str = ""
    container: str = ""
    supported_providers: list[str] | None = None
    load_instructions: dict[str, Any] | None = None

    def native_loads(self) -> list[NameAndVersion]:
        """The applications a native tool's load instructions name (``{"type": "Native", "applications": [...]}``).

        core2 writes ``applications: null`` for an empty ``software.load``; other types load nothing here.
        """
        instructions = self.load_instructions
        if not instructions or instructions.get("type") != "Native":
            return []
        return [NameAndVersion.model_validate(item) for item in instructions.get("applications") or []]


class Tool(WireModel):
    owner: str = ""
    created_at: Timestamp = 0
    modified_at: Timestamp = 0
    description: ToolDescription


class ToolReference(WireModel):
    name: str
    version: str
    tool: Tool | None = None


class ApplicationMetadata(WireModel):
    name: str
    version: str
    authors: list[str] | None = None
    title: str = ""
    description: str = ""
    website: str = ""
    public: bool = False
    flavor_name: str | None = None
    group: dict[str, Any] | None = None
    created_at: Timestamp = 0


class VncDescription(WireModel):
    password: str = ""
    port: int = 5900


class WebDescription(WireModel):
    port: int = 80


class ContainerDescription(WireModel):
    change_working_directory: bool = True
    run_as_root: bool = False
    run_as_real_user: bool = False


class ModulesDescription(WireModel):
    mount_path: str = ""
    optional: list[str] | None = None


class ApplicationInvocation(WireModel):
    tool: ToolReference
    invocation: list[InvocationParameter] | None = None
    ucx: dict[str, Any] | None = None
    parameters: list[ApplicationParameter] | None = None
    output_file_globs: list[str] | None = None
    application_type: str = "BATCH"  # BATCH | VNC | WEB
    vnc: VncDescription | None = None
    web: WebDescription | None = None
    ssh: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    container: ContainerDescription = Field(default_factory=ContainerDescription)
    environment: dict[str, InvocationParameter] | None = None
    allow_additional_mounts: bool | None = None
    allow_additional_peers: bool | None = None
    allow_multi_node: bool | None = None
    allow_public_ip: bool | None = None
    allow_public_link: bool | None = None
    job_audit_log_is_enabled: bool | None = None
    file_extensions: list[str] | None = None
    license_servers: list[str] | None = None
    modules: ModulesDescription | None = None
    sbatch: dict[str, InvocationParameter] | None = None


class Application(WireModel):
    metadata: ApplicationMetadata
    invocation: ApplicationInvocation
    favorite: bool | None = None
    versions: list[str] | None = None


# --- job support (the provider's retrieveProducts answer) ---------------------


class UniversalBackendSupport(WireModel):
    """Feature flags of one backend; every key is omitempty, so false means absent."""

    enabled: OmitEmptyBool = False
    web: OmitEmptyBool = False
    vnc: OmitEmptyBool = False
    logs: OmitEmptyBool = False
    terminal: OmitEmptyBool = False
    peers: OmitEmptyBool = False
    time_extension: OmitEmptyBool = False
    bind_link_to_port: OmitEmptyBool = False


class VirtualMachineSupport(UniversalBackendSupport):
    suspension: OmitEmptyBool = False


QueueStatus = Literal["AVAILABLE", "BUSY", "FULL"]


class JobSupport(WireModel):
    product: ProductReference
    docker: UniversalBackendSupport = Field(default_factory=UniversalBackendSupport)
    virtual_machine: VirtualMachineSupport = Field(default_factory=VirtualMachineSupport)
    native: UniversalBackendSupport = Field(default_factory=UniversalBackendSupport)
    queue_status: QueueStatus | None = None


class ResolvedSupport(WireModel, Generic[S]):
    product: ProductV2
    support: S
    features: list[str] | None = None


# --- jobs ---------------------------------------------------------------------


class ResourceOwner(WireModel):
    created_by: OmitEmptyStr = ""
    project: str | None = None


class AclEntity(WireModel):
    type: OmitEmptyStr = ""  # project_group | user
    project_id: OmitEmptyStr = ""
    group: OmitEmptyStr = ""
    username: OmitEmptyStr = ""


class ResourceAclEntry(WireModel):
    entity: AclEntity
    permissions: Annotated[list[str] | None, OMIT_EMPTY] = None


class ResourcePermissions(WireModel):
    myself: list[str] | None = None  # READ | EDIT | ADMIN | PROVIDER
    others: list[ResourceAclEntry] | None = None


class JobSpecification(WireModel):
    product: ProductReference
    labels: dict[str, str] | None = None
    application: NameAndVersion
    name: OmitEmptyStr = ""
    hostname: str | None = None
    replicas: int = 1  # Core always writes it; 1 (not Go's zero) suits code that builds specs
    allow_duplicate_job: bool = False  # deprecated
    parameters: dict[str, AppParameterValue] | None = None
    resources: list[AppParameterValue] | None = None
    time_allocation: SimpleDuration | None = None
    opened_file: OmitEmptyStr = ""
    restart_on_exit: OmitEmptyBool = False  # deprecated
    ssh_enabled: OmitEmptyBool = False


class JobUpdate(WireModel):
    """One job update; every key is always written, ``null`` when it does not apply."""

    state: JobState | None = None
    output_folder: str | None = None
    status: str | None = None  # a human-readable message
    expected_state: JobState | None = None
    expected_different_state: bool | None = None
    new_time_allocation: int | None = None  # milliseconds
    allow_restart: bool | None = None  # deprecated
    resource_list: list[AppParameterValue] | None = None
    timestamp: Timestamp


class JobStatus(WireModel):
    state: JobState = JobState.IN_QUEUE
    job_parameters_json: dict[str, Any] | None = None  # ExportedParameters, kept raw
    started_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    resolved_application: Application | None = None
    resolved_product: ProductV2 | None = None
    resolved_support: ResolvedSupport[JobSupport] | None = None
    allow_restart: bool = False


class JobOutput(WireModel):
    output_folder: str | None = None


class Job(WireModel):
    """A job as Core sends it; the fields of Go's embedded ``Resource`` are flattened in."""

    id: OmitEmptyStr = ""
    created_at: Timestamp
    owner: ResourceOwner
    permissions: ResourcePermissions | None = None
    provider_generated_id: OmitEmptyStr = ""
    updates: list[JobUpdate] | None = None
    specification: JobSpecification
    status: JobStatus = Field(default_factory=JobStatus)
    output: JobOutput = Field(default_factory=JobOutput)


class ResourceUpdateAndId(WireModel, Generic[U]):
    """One item of ``POST /api/jobs/control/update``: ``{"id", "update"}``."""

    id: str
    update: U


JobUpdateItem = ResourceUpdateAndId[JobUpdate]


class JobExtendRequestItem(WireModel):
    job: Job
    requested_time: SimpleDuration


class JobSuspendRequestItem(WireModel):
    job: Job


class ProviderRegisteredResource(WireModel, Generic[S]):
    """One item of ``POST /api/jobs/control/register`` (jobs Core did not create)."""

    spec: S
    provider_generated_id: str | None = None
    created_by: str | None = None
    project: str | None = None
    project_all_read: bool = False
    project_all_write: bool = False


# --- files and drives ---------------------------------------------------------

FileType = Literal["FILE", "DIRECTORY"]
FileIcon = Literal["", "DIRECTORY_STAR", "DIRECTORY_SHARES", "DIRECTORY_TRASH", "DIRECTORY_JOBS"]
SortDirection = Literal["ascending", "descending", ""]


class FileMetadataHistory(WireModel):
    metadata: dict[str, list[dict[str, Any]]] | None = None


class UFileStatus(WireModel):
    """The status of a file; timestamps and unix fields are always written, sizes may be null."""

    type: FileType
    icon: Annotated[FileIcon, OMIT_EMPTY] = ""
    size_in_bytes: int | None = None
    size_including_children_in_bytes: int | None = None
    file_count: int | None = None
    directory_count: int | None = None
    modified_at: Timestamp = 0
    accessed_at: Timestamp = 0
    unix_mode: int = 0
    unix_owner: int = 0
    unix_group: int = 0
    metadata: FileMetadataHistory = Field(default_factory=FileMetadataHistory)


class ProviderFile(WireModel):
    """A file as the provider answers browse and retrieve; ``id`` is the UCloud path ``/<drive>/a/b``."""

    id: OmitEmptyStr = ""
    status: UFileStatus
    created_at: Timestamp
    legacy_sensitivity: OmitEmptyStr = ""


class FileFlags(WireModel):
    """ResourceFlags and FileFlags, flattened as Go does; every filter is optional."""

    include_others: bool = False
    include_updates: bool = False
    include_support: bool = False
    include_product: bool = False
    filter_labels: dict[str, str] | None = None
    filter_created_by: str | None = None
    filter_created_after: int | None = None
    filter_created_before: int | None = None
    filter_provider: str | None = None
    filter_product_id: str | None = None
    filter_product_category: str | None = None
    hide_product_id: str | None = None
    hide_product_category: str | None = None
    hide_provider: str | None = None
    filter_provider_ids: str | None = None
    filter_ids: str | None = None
    sort_by: str | None = None
    sort_direction: SortDirection | None = None
    include_permissions: bool | None = None
    include_timestamps: bool | None = None
    include_sizes: bool | None = None
    include_unix_info: bool | None = None
    include_metadata: bool | None = None
    filter_by_file_extension: str | None = None
    path: str | None = None  # the folder to browse
    filter_hidden_files: bool | None = None


class ResourceBrowseRequest(WireModel, Generic[T]):
    flags: T
    items_per_page: OmitEmptyInt = 0  # <= 0 means 50; capped at 1000
    next: str | None = None
    sort_by: str | None = None
    sort_direction: SortDirection | None = None


class ResourceRetrieveRequest(WireModel, Generic[T]):
    flags: T
    id: str


class DriveSpecification(WireModel):
    title: str = ""
    product: ProductReference | None = None
    labels: dict[str, str] | None = None


class Drive(WireModel):
    """A drive (FileCollection) as Core resolves it; only what a provider reads is modelled, the rest is ignored."""

    id: OmitEmptyStr = ""
    created_at: Timestamp = 0
    owner: ResourceOwner = Field(default_factory=ResourceOwner)
    provider_generated_id: OmitEmptyStr = ""
    specification: DriveSpecification = Field(default_factory=DriveSpecification)


class FilesProviderBrowseRequest(WireModel):
    """``POST /ucloud/P/files/browse``.

    Core writes the untagged Go field as ``"Browse"``; ``"browse"`` is accepted too.
    """

    resolved_collection: Drive = Field(default_factory=Drive)
    browse: ResourceBrowseRequest[FileFlags] = Field(
        validation_alias=AliasChoices("Browse", "browse"), serialization_alias="Browse"
    )


class FilesProviderRetrieveRequest(WireModel):
    """``POST /ucloud/P/files/retrieve``."""

    resolved_collection: Drive = Field(default_factory=Drive)
    retrieve: ResourceRetrieveRequest[FileFlags]


WriteConflictPolicy = Literal["RENAME", "REJECT", "REPLACE", "MERGE_RENAME"]
UploadType = Literal["FILE", "FOLDER"]
# "WEBSOCKET" is the web client's legacy name for WEBSOCKET_V1.
UploadProtocol = Literal["CHUNKED", "WEBSOCKET_V1", "WEBSOCKET_V2", "WEBSOCKET"]


class FilesProviderCreateFolderRequestItem(WireModel):
    """Item of ``POST /ucloud/P/files/folder``."""

    id: str
    conflict_policy: WriteConflictPolicy
    resolved_collection: Drive = Field(default_factory=Drive)


class FilesProviderMoveOrCopyRequestItem(WireModel):
    """Item of ``POST /ucloud/P/files/move`` and ``/copy``."""

    resolved_old_collection: Drive = Field(default_factory=Drive)
    resolved_new_collection: Drive = Field(default_factory=Drive)
    old_id: str
    new_id: str
    conflict_policy: WriteConflictPolicy


class FilesProviderTrashRequestItem(WireModel):
    """Item of ``POST /ucloud/P/files/trash`` and ``/emptyTrash``."""

    id: str
    resolved_collection: Drive = Field(default_factory=Drive)


class UFileSpecification(WireModel):
    collection: str = ""
    product: ProductReference | None = None


class UFile(WireModel):
    """Item of ``DELETE /ucloud/P/files``: the file as Core knows it; its ``id`` is the path."""

    id: str
    specification: UFileSpecification = Field(default_factory=UFileSpecification)


class FilesProviderCreateUploadRequestItem(WireModel):
    """Item of ``POST /ucloud/P/files/upload``: ``id`` is the target path."""

    id: str
    type: UploadType = "FILE"
    supported_protocols: NullAsEmptyList[UploadProtocol] = Field(default_factory=list)
    conflict_policy: WriteConflictPolicy = "REJECT"
    resolved_collection: Drive = Field(default_factory=Drive)


class FilesCreateUploadResponseItem(WireModel):
    endpoint: str
    protocol: UploadProtocol
    token: str


class FilesProviderCreateDownloadRequestItem(WireModel):
    """Item of ``POST /ucloud/P/files/download``."""

    id: str
    resolved_collection: Drive = Field(default_factory=Drive)


class FilesCreateDownloadResponseItem(WireModel):
    endpoint: str


class FSSupportStats(WireModel):
    size_in_bytes: bool = False
    size_including_children_in_bytes: bool = False
    visualization: bool = False
    modified_at: bool = False
    created_at: bool = False
    accessed_at: bool = False
    unix_permissions: bool = False
    unix_owner: bool = False
    unix_group: bool = False


class FSSupportCollection(WireModel):
    acl_modifiable: bool = False
    users_can_create: bool = False
    users_can_delete: bool = False
    users_can_rename: bool = False


class FSSupportFiles(WireModel):
    acl_modifiable: bool = False
    trash_supported: bool = False
    is_read_only: bool = False
    search_supported: bool = False
    streaming_search_supported: bool = False
    shares_supported: bool = False
    open_in_terminal: bool = False


class FSSupport(WireModel):
    """What UCloud may do with the drives of one storage product (``files/collections/retrieveProducts``)."""

    product: ProductReference
    stats: FSSupportStats = Field(default_factory=FSSupportStats)
    collection: FSSupportCollection = Field(default_factory=FSSupportCollection)
    files: FSSupportFiles = Field(default_factory=FSSupportFiles)


# --- authentication and connections -------------------------------------------


class RefreshTokenItem(WireModel):
    """Item of ``POST /auth/providers/refresh``."""

    refresh_token: str


class AccessTokenAndCsrf(WireModel):
    """Answer item of ``POST /auth/providers/refresh``."""

    access_token: str
    csrf_token: str = ""


class FindByUsername(WireModel):
    """``{"username"}``: integration connect/init/unlinked and approve/clearConnection."""

    username: str


class ConnectResponse(WireModel):
    redirect_to: str


class IntegrationManifest(WireModel):
    enabled: bool
    expire_after_ms: int | None = None


# --- provider branding (shared/pkg/orchestrators/provider_metadata.go) ---------


class ProviderBrandingSection(WireModel):
    description: str = ""  # Markdown
    image: str | None = None  # a URL; relative ones are resolved against the provider's domain by Core


class ProviderBrandingProductDescription(WireModel):
    category: str
    short_description: str = ""  # shown in grant applications
    section: ProviderBrandingSection = Field(default_factory=ProviderBrandingSection)


class ProviderBranding(WireModel):
    """``GET /ucloud/<id>/provider/branding/retrieveInfo``, which Core polls every 10 s."""

    id: str
    title: str = ""
    short_title: str = ""
    short_description: str = ""
    description: str = ""  # Markdown
    url: str = ""
    logo: str | None = None
    sections: list[ProviderBrandingSection] = Field(default_factory=list)
    product_description: list[ProviderBrandingProductDescription] = Field(default_factory=list)


# --- UCloud-Username header ---------------------------------------------------

# Names the end user a call acts for (Core's calls) or a transfer belongs to (the browser's).
USERNAME_HEADER = "UCloud-Username"


def encode_username(username: str) -> str:
    """The ``UCloud-Username`` header value: standard base64 of the UTF-8 name."""
    return base64.b64encode(username.encode()).decode("ascii")


def decode_username(encoded: str) -> str:
    """Decode a base64 username, standard or URL-safe alphabet, padded or not.

    Core sends the header in the standard alphabet and ``usernameHint`` in the
    URL-safe one, so both are accepted.
    """
    stripped = encoded.strip().rstrip("=")
    if not stripped or len(stripped) % 4 == 1:
        raise ValueError(f"not a base64 username: {encoded!r}")
    standard = stripped.replace("-", "+").replace("_", "/")
    padded = standard + "=" * (-len(standard) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
        username = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(f"not a base64 username: {encoded!r}") from error
    if not username or not username.isprintable():
        raise ValueError(f"not a base64 username: {encoded!r}")
    return username


# Resolve forward references between the models above.
WorkflowSpecification.model_rebuild()
AppParameterValue.model_rebuild()

"""Typed models of ucim's custom resources, UCloudJob, UserInstance, UserConnection, UCloudProject (and the Lease).

This module is the only place that knows their shape: code builds a model and
calls ``to_manifest()`` / ``status_patch()``, and reads objects with
``from_obj()``; nobody hand-builds these dicts. The CRD schemas in crds/ mirror
these models, and tests/unit/test_resources.py keeps the two in step.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ucim.common.protocol import JobState
from ucim.common.settings import API_GROUP, API_VERSION


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(_Model):
    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int | None = None


class _Resource(_Model):
    """Common envelope of a custom resource; subclasses fix kind and plural."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    GROUP: ClassVar[str] = API_GROUP
    VERSION: ClassVar[str] = API_VERSION

    metadata: ObjectMeta

    @classmethod
    def api_version(cls) -> str:
        return f"{cls.GROUP}/{cls.VERSION}"

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Self:
        return cls.model_validate(obj)

    def to_manifest(self) -> dict[str, Any]:
        """The object as the apiserver takes it on create; status goes through its subresource."""
        body = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
        return {"apiVersion": self.api_version(), "kind": self.KIND, **body}

    def status_patch(self) -> dict[str, Any]:
        """A merge patch for the status subresource that sets the whole status."""
        status = getattr(self, "status", None)
        return {"status": status.to_dict() if isinstance(status, _Model) else {}}


# --- limits -------------------------------------------------------------------
# The CRDs' limits, so that a value is refused here, readably, before the apiserver refuses it
# (tests/unit/test_resources.py keeps them equal to the schemas in crds/).

# A UCloud username, as ucloudUsername (UserInstance, UserConnection) and owner (UCloudJob).
MAX_USERNAME_LENGTH: Final = 256
MAX_NODES: Final = 10_000
# sbatch reads --time into a signed 32-bit count of seconds (Slurm's parse_time.c time_str2secs), so no
# longer limit can reach Slurm: about 68 years.
MAX_TIME_LIMIT_MINUTES: Final = (2**31 - 1) // 60
# The largest uid: (uid_t)-1 means "no uid" to setresuid and chown.
MAX_UID: Final = 2**32 - 2


# --- UCloudJob ----------------------------------------------------------------


class ApplicationRef(_Model):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)


# The largest Jinja template or invocation word ucim keeps: the whole UCloudJob must stay well below
# etcd's 1.5 MiB object limit, and Linux takes no program argument over 128 KiB anyway.
MAX_TEMPLATE_BYTES: Final = 131_072
MAX_INVOCATION_PARTS: Final = 256
MAX_APP_PARAMETERS: Final = 256
# A job's web and VNC interfaces; a dynamicInterface target name as a template may write it. Each dynamic
# target is also a job update in status.transitions, which holds 64: a job may announce 16.
MAX_INTERFACES: Final = 64
MAX_DYNAMIC_TARGETS: Final = 16
MAX_TARGET_CHARS: Final = 128


class InvocationPart(_Model):
    """One element of Core's invocation (``InvocationParameter``): only the keys of its ``type`` are kept."""

    type: Literal["word", "env", "var", "bool_flag", "jinja"]
    word: str | None = Field(default=None, max_length=MAX_TEMPLATE_BYTES)  # word
    variable: str | None = Field(default=None, max_length=256)  # env
    variable_names: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None, max_length=64)  # var
    prefix_global: str | None = Field(default=None, max_length=4096)
    suffix_global: str | None = Field(default=None, max_length=4096)
    prefix_variable: str | None = Field(default=None, max_length=4096)
    suffix_variable: str | None = Field(default=None, max_length=4096)
    is_prefix_variable_part_of_arg: bool | None = None
    is_suffix_variable_part_of_arg: bool | None = None
    variable_name: str | None = Field(default=None, max_length=256)  # bool_flag
    flag: str | None = Field(default=None, max_length=4096)
    template: str | None = Field(default=None, max_length=MAX_TEMPLATE_BYTES)  # jinja


class AppParameterOption(_Model):
    name: str = Field(max_length=1024)
    value: str = Field(max_length=4096)


class AppParameter(_Model):
    """One parameter the application declares (Core's ``ApplicationParameter``), as far as a script needs it."""

    type: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    optional: bool = False
    # Raw JSON as Core has it: a bare value or {"value": ...}.
    default_value: Any = None
    title: str | None = Field(default=None, max_length=1024)
    min: float | None = None
    max: float | None = None
    true_value: str | None = Field(default=None, max_length=1024)
    false_value: str | None = Field(default=None, max_length=1024)
    options: list[AppParameterOption] | None = Field(default=None, max_length=1024)


class JobApplication(_Model):
    """The application Core resolved for the job (``status.resolvedApplication``): what its script is made of."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    # BATCH, WEB or VNC (Core's applicationType).
    type: Literal["BATCH", "WEB", "VNC"] = "BATCH"
    invocation: list[InvocationPart] = Field(default_factory=list, max_length=MAX_INVOCATION_PARTS)
    parameters: list[AppParameter] = Field(default_factory=list, max_length=MAX_APP_PARAMETERS)
    environment: dict[str, InvocationPart] | None = Field(default=None, max_length=256)
    sbatch: dict[str, InvocationPart] | None = Field(default=None, max_length=256)
    # The tool's load instructions (the site's applications/ configuration says what each means here).
    load: list[ApplicationRef] | None = Field(default=None, max_length=64)
    # A legacy tool's modules (``module load`` each).
    required_modules: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None, max_length=64)


class ProductRef(_Model):
    id: str = Field(min_length=1, max_length=128)
    category: str = Field(min_length=1, max_length=128)
    provider: str | None = Field(default=None, max_length=128)


class SlurmPlacement(_Model):
    partition: str | None = Field(default=None, max_length=128)
    qos: str | None = Field(default=None, max_length=128)
    account: str | None = Field(default=None, max_length=128)


class JobResources(_Model):
    nodes: int = Field(ge=1, le=MAX_NODES)
    cpus_per_node: int = Field(ge=1, le=100_000)
    memory_megabytes_per_node: int = Field(ge=1)
    gpus_per_node: int | None = Field(default=None, ge=0, le=64)
    time_limit_minutes: int | None = Field(default=None, ge=1, le=MAX_TIME_LIMIT_MINUTES)


ParameterType = Literal[
    "text", "integer", "floating_point", "boolean", "file", "peer", "license_server", "block_storage",
    "network", "ingress", "private_network", "workflow", "modules", "api_server",
]  # fmt: skip


class ParameterValue(_Model):
    """One AppParameterValue as UCloud sent it; only the keys ucim uses are kept."""

    type: ParameterType
    value: Any = None
    path: str | None = Field(default=None, max_length=4096)
    read_only: bool | None = None
    mount_path: str | None = Field(default=None, max_length=4096)
    hostname: str | None = Field(default=None, max_length=253)
    job_id: str | None = Field(default=None, max_length=128)
    id: str | None = Field(default=None, max_length=256)
    modules: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None, max_length=256)
    # A file's drive, as the locator Core registered for it (``home:<user>``, ``project:<group>``): the
    # gateway looks ``path``'s drive id up at Core, and the user's instance finds the folder from it.
    drive: str | None = Field(default=None, max_length=64)


# The delivery log's length (the CRD's maxItems): a write past it is refused, and a job's end with it.
MAX_TRANSITIONS: Final = 64
# Extensions one job may be given (each applied one is a job update in status.transitions, which holds
# MAX_TRANSITIONS beside the states, the dynamic targets and the queue lines).
MAX_EXTENSIONS: Final = 24
ExtensionResult = Literal["Applied", "Refused"]


class TimeExtension(_Model):
    """One ``jobs/extend`` request: the gateway's, checked against the site's policy, applied by the bridge.

    ``id`` is made from what Core sent (the job's time allocation as Core knew it and the time asked for), so
    Core's retry of a call finds its first request instead of extending the job twice.
    """

    id: str = Field(min_length=1, max_length=64)
    add_minutes: int = Field(ge=1, le=MAX_TIME_LIMIT_MINUTES)
    # The job's whole time limit once applied (what ``scontrol update TimeLimit=`` sets: absolute, so
    # applying it again changes nothing).
    time_limit_minutes: int = Field(ge=1, le=MAX_TIME_LIMIT_MINUTES)
    requested_at: datetime


class ExtensionOutcome(_Model):
    """The bridge's answer to one TimeExtension (same ``id``)."""

    id: str = Field(min_length=1, max_length=64)
    result: ExtensionResult
    message: str = Field(max_length=1024)
    at: datetime


class UCloudJobSpec(_Model):
    job_id: str = Field(min_length=1, max_length=128)
    owner: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    project: str | None = Field(default=None, max_length=256)
    cluster: str = Field(min_length=1, max_length=63)
    application: JobApplication
    product: ProductRef
    slurm: SlurmPlacement | None = None
    resources: JobResources
    parameters: dict[str, ParameterValue] | None = Field(default=None, max_length=256)
    terminate: bool | None = None
    # Walltime extensions Core asked for (jobs/extend), in order; the bridge applies each once (status.extensions).
    extensions: list[TimeExtension] | None = Field(default=None, max_length=MAX_EXTENSIONS)


class JobTransition(_Model):
    """One job update for Core: a state change, or (``state`` None) a status line such as a ``Target: {…}``."""

    state: JobState | None = None
    timestamp: int  # epoch milliseconds, UCloud's unit
    message: str | None = None
    # The job's new time limit (milliseconds, the whole of it) after an extension: Core's newTimeAllocation.
    new_time_allocation: int | None = Field(default=None, ge=1)


class JobInterface(_Model):
    """A web or remote-desktop server the job's script starts: where ``interactiveSession`` WEB/VNC leads.

    The application's own interface (a WEB or VNC application) listens on ``port`` on every node
    (``rank`` None, no ``target``); a ``dynamicInterface(rank, type, target, port)`` call in the
    template adds one for one rank, named ``target``.
    """

    type: Literal["WEB", "VNC"]
    port: int = Field(ge=1, le=65_535)
    rank: int | None = Field(default=None, ge=0, le=MAX_NODES)
    target: str | None = Field(default=None, min_length=1, max_length=MAX_TARGET_CHARS)


class UCloudJobStatus(_Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    state: JobState | None = None
    slurm_job_id: int | None = None
    slurm_state: str | None = None
    reason: str | None = None
    node_list: str | None = None
    exit_code: int | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    job_folder: str | None = None
    # The job folder as a UCloud path, /<drive id>/<jobs folder>/<job id>: Core's outputFolder.
    output_folder: str | None = None
    provider_generated_id: str | None = None
    # The job's web and VNC servers, as its script was rendered (the instance's submit answer).
    interfaces: list[JobInterface] = Field(default_factory=list, max_length=MAX_INTERFACES)
    # While Slurm keeps the job pending: its place among the partition's pending jobs (1 = next) and
    # Slurm's estimate of its start, as last told to Core (slurm_bridge/queue_status.py); gone once it starts.
    queue_position: int | None = Field(default=None, ge=1)
    queue_length: int | None = Field(default=None, ge=1)
    estimated_start_at: datetime | None = None
    transitions: list[JobTransition] = Field(default_factory=list, max_length=MAX_TRANSITIONS)
    reported_transitions: int = 0
    # The bridge's outcome of each spec.extensions entry, and the time limit the last applied one set in Slurm.
    extensions: list[ExtensionOutcome] = Field(default_factory=list, max_length=MAX_EXTENSIONS)
    time_limit_minutes: int | None = Field(default=None, ge=1, le=MAX_TIME_LIMIT_MINUTES)


class UCloudJob(_Resource):
    KIND: ClassVar[str] = "UCloudJob"
    PLURAL: ClassVar[str] = "ucloudjobs"

    spec: UCloudJobSpec
    status: UCloudJobStatus = Field(default_factory=UCloudJobStatus)

    @staticmethod
    def name_for(job_id: str) -> str:
        """The deterministic object name for a UCloud job id (idempotent creates)."""
        return dns_name("ucloud", job_id)

    def extension_outcome(self, extension_id: str) -> ExtensionOutcome | None:
        """The bridge's outcome of the extension ``extension_id``; None while it waits."""
        return next((o for o in self.status.extensions if o.id == extension_id), None)

    def pending_extensions(self) -> list[TimeExtension]:
        """The extensions the bridge has not answered yet, in the order they were asked for."""
        answered = {o.id for o in self.status.extensions}
        return [e for e in self.spec.extensions or [] if e.id not in answered]


# --- UserInstance -------------------------------------------------------------


class UserInstanceSpec(_Model):
    ucloud_username: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    cluster: str = Field(min_length=1, max_length=63)
    local_user: str | None = Field(default=None, min_length=1, max_length=32)
    uid: int | None = Field(default=None, ge=1, le=MAX_UID)
    idle_timeout_seconds: int = Field(default=1800, ge=0)


class UserInstanceStatus(_Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    endpoint: str | None = None
    bridge: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    last_activity_at: datetime | None = None
    spawn_duration_seconds: float | None = None


class UserInstance(_Resource):
    KIND: ClassVar[str] = "UserInstance"
    PLURAL: ClassVar[str] = "userinstances"

    spec: UserInstanceSpec
    status: UserInstanceStatus = Field(default_factory=UserInstanceStatus)

    @staticmethod
    def name_for(ucloud_username: str, cluster: str) -> str:
        """The deterministic object name for a (UCloud user, cluster) pair."""
        return dns_name(cluster, ucloud_username)


# --- UserConnection -------------------------------------------------------------


class UserConnectionSpec(_Model):
    ucloud_username: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    cluster: str = Field(min_length=1, max_length=63)
    local_user: str | None = Field(default=None, min_length=1, max_length=32)
    uid: int | None = Field(default=None, ge=1, le=MAX_UID)
    expires_at: datetime | None = None


class ConnectionCleared(_Model):
    """The operator's record of the clearConnection it sent Core when the connection ended."""

    # The ``spec.expiresAt`` the clear answered: a connection that connects again gets a new one.
    expires_at: datetime
    cleared_at: datetime
    reason: Literal["Expired", "Unlinked"]


class UserConnectionStatus(_Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    cleared: ConnectionCleared | None = None


class UserConnection(_Resource):
    """The durable UCloud user <-> local account link; the one source of a user's uid."""

    KIND: ClassVar[str] = "UserConnection"
    PLURAL: ClassVar[str] = "userconnections"

    spec: UserConnectionSpec
    status: UserConnectionStatus = Field(default_factory=UserConnectionStatus)

    @staticmethod
    def name_for(ucloud_username: str, cluster: str) -> str:
        """The deterministic object name for a (UCloud user, cluster) pair, as the UserInstance's."""
        return dns_name(cluster, ucloud_username)


# --- UCloudProject ---------------------------------------------------------------

WorkspaceKind = Literal["project", "user"]
ProjectRole = Literal["PI", "ADMIN", "USER"]
AccountingFrequency = Literal["ONCE", "PERIODIC_MINUTE", "PERIODIC_HOUR", "PERIODIC_DAY"]
# Minutes per accounting period: Slurm counts minutes, Core counts the category's unit x frequency.
MINUTES_PER_PERIOD: Final[dict[AccountingFrequency, int]] = {
    "ONCE": 1,
    "PERIODIC_MINUTE": 1,
    "PERIODIC_HOUR": 60,
    "PERIODIC_DAY": 1440,
}


class Workspace(_Model):
    """Whose resources: a UCloud project (by id) or a user's personal workspace (by UCloud username)."""

    kind: WorkspaceKind
    id: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)


class ProjectMember(_Model):
    username: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    role: ProjectRole


class Wallet(_Model):
    """Core's allocation of one product category to the workspace, as its event stream last said."""

    category: str = Field(min_length=1, max_length=128)
    product_type: str | None = Field(default=None, max_length=32)
    frequency: AccountingFrequency
    # In the category's unit x frequency (core-hours for a PERIODIC_HOUR "Core" category).
    quota: int = Field(ge=0)
    usage: int = Field(ge=0)
    locked: bool
    # A free category (ucim's storage unless accounted): nothing to measure or enforce.
    free_to_use: bool = False
    # Core's last significant update of the wallet, epoch milliseconds.
    updated_at: int


class UCloudProjectSpec(_Model):
    workspace: Workspace
    cluster: str = Field(min_length=1, max_length=63)
    title: str | None = Field(default=None, max_length=1024)
    members: list[ProjectMember] = Field(default_factory=list, max_length=10_000)
    can_consume_resources: bool = True
    wallets: list[Wallet] = Field(default_factory=list, max_length=256)
    # Core's modifiedAt of the project, epoch milliseconds.
    modified_at: int | None = None


class SlurmAccount(_Model):
    """One Slurm account of the workspace (one per compute category), as the bridge last set it."""

    category: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    users: list[str] = Field(default_factory=list)
    locked: bool = False
    quota_minutes: int | None = Field(default=None, ge=0)


class WalletUsage(_Model):
    """Usage of one category, in the category's unit x frequency."""

    category: str = Field(min_length=1, max_length=128)
    usage: int = Field(ge=0)


class UCloudProjectStatus(_Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    group: str | None = None
    gid: int | None = None
    group_members: list[str] = Field(default_factory=list)
    # The project's folder on the frontend (the bridge's) and its drive at Core (the operator's).
    drive_folder: str | None = None
    drive_id: str | None = None
    accounts: list[SlurmAccount] = Field(default_factory=list)
    # Measured by the bridge from Slurm ...
    usage: list[WalletUsage] = Field(default_factory=list)
    # ... and what Core has accepted of it (the operator's).
    reported_usage: list[WalletUsage] = Field(default_factory=list)


class UCloudProject(_Resource):
    """A UCloud workspace on this provider: its members, Unix group, Slurm accounts and wallets."""

    KIND: ClassVar[str] = "UCloudProject"
    PLURAL: ClassVar[str] = "ucloudprojects"

    spec: UCloudProjectSpec
    status: UCloudProjectStatus = Field(default_factory=UCloudProjectStatus)

    @staticmethod
    def name_for(workspace: Workspace) -> str:
        """The deterministic object name of a workspace (``project-…`` or ``user-…``)."""
        return dns_name(workspace.kind, workspace.id)

    def wallet(self, category: str) -> Wallet | None:
        return next((w for w in self.spec.wallets if w.category == category), None)

    def account(self, category: str) -> SlurmAccount | None:
        return next((a for a in self.status.accounts if a.category == category), None)


# --- Lease (coordination.k8s.io) --------------------------------------------------


class LeaseSpec(_Model):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    renew_time: datetime | None = None


class Lease(_Resource):
    """A bridge's heartbeat: renewed while it runs, so that others can tell a Ready it can no longer stand by."""

    KIND: ClassVar[str] = "Lease"
    PLURAL: ClassVar[str] = "leases"
    GROUP: ClassVar[str] = "coordination.k8s.io"
    VERSION: ClassVar[str] = "v1"

    spec: LeaseSpec = Field(default_factory=LeaseSpec)

    @staticmethod
    def name_for(bridge: str) -> str:
        """The Lease of the bridge named ``bridge`` (a UserInstance's ``status.bridge``)."""
        return dns_name("ucim-bridge", bridge)

    def expired(self, now: datetime) -> bool:
        """Not renewed within its duration: its holder has stopped (or cannot reach the apiserver)."""
        spec = self.spec
        if spec.renew_time is None or spec.lease_duration_seconds is None:
            return False
        return (now - spec.renew_time).total_seconds() > spec.lease_duration_seconds


# --- Event (events.k8s.io) ------------------------------------------------------


class ObjectReference(_Model):
    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None


class KubeEvent(_Resource):
    """A Kubernetes Event about one of ucim's objects (``kubectl describe`` and ``kubectl events`` show it)."""

    KIND: ClassVar[str] = "Event"
    PLURAL: ClassVar[str] = "events"
    GROUP: ClassVar[str] = "events.k8s.io"
    VERSION: ClassVar[str] = "v1"

    regarding: ObjectReference
    reason: str = Field(max_length=128)
    note: str = Field(max_length=1024)
    type: Literal["Normal", "Warning"] = "Normal"
    action: str = Field(max_length=128)
    event_time: str
    reporting_controller: str
    reporting_instance: str = Field(max_length=128)


# --- labels -------------------------------------------------------------------

# Every UCloudJob, UserInstance and UserConnection carries its cluster as a label, so that a
# bridge lists and watches only its own cluster's objects (the apiserver filters them).
CLUSTER_LABEL: Final = "ucim.io/cluster"


def cluster_labels(cluster: str) -> dict[str, str]:
    return {CLUSTER_LABEL: cluster}


def cluster_selector(cluster: str) -> str:
    return f"{CLUSTER_LABEL}={cluster}"


# --- names --------------------------------------------------------------------

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(prefix: str, key: str) -> str:
    """A valid, stable object name for any string key.

    UCloud usernames and job ids may hold characters (``#``, ``@``, upper case)
    that object names cannot, and two keys may clean up to the same text, so a
    short hash of the exact key is always appended.
    """
    readable = _NOT_DNS.sub("-", f"{prefix}-{key}".lower()).strip("-")[:50].rstrip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"

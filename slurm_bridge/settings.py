"""Settings of the slurm_bridge, loaded once from UCIM_BRIDGE_* variables.

Secrets: the ingress token is best given as a file (``UCIM_BRIDGE_INGRESS_TOKEN_FILE``,
e.g. a systemd credential), which is read only after the fork server started, so no
user instance ever had it in memory. ``UCIM_BRIDGE_INGRESS_TOKEN`` works too (tests,
development); the fork server is started with a filtered environment, so it does not
inherit that variable either.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from ucim.common.drives import check_root_pattern
from ucim.common.settings import ComponentSettings
from ucim.slurm_bridge.account_mapper import AccountMapperSettings
from ucim.slurm_bridge.audit import AuditSettings
from ucim.slurm_bridge.mapping import MappingSettings
from ucim.slurm_bridge.unix_groups import GroupSettings


class AccountingSettings(BaseModel):
    """Core's workspaces on this frontend: Unix groups, Slurm accounts, usage (the operator's stream feeds them)."""

    enabled: bool = False
    groups: GroupSettings = Field(default_factory=GroupSettings)
    accounts: AccountMapperSettings = Field(default_factory=AccountMapperSettings)
    # Usage is read from Slurm (one sshare call) this often; the anchor's cycle is 30 s too.
    usage_interval_seconds: float = Field(default=30.0, gt=0)
    # Each drive of a workspace with a storage wallet is measured (du) this often; the anchor's is 5 min too.
    storage_interval_seconds: float = Field(default=300.0, gt=0)


class HookSettings(BaseModel):
    """The Slurm hook's listener (slurm_bridge/slurm_hook.py; docs/operations.md, "The Slurm hook")."""

    enabled: bool = False
    # UDP address the hook's datagrams come to: one the controller host reaches (its `targets`).
    host: str = "127.0.0.1"
    port: int = Field(default=8891, ge=1, le=65535)
    # Local users (or uids) whose MUNGE credentials are taken: slurmctld runs the hook as SlurmUser.
    senders: list[str] = Field(default_factory=lambda: ["slurm"])
    # munged's socket, if not libmunge's default.
    munge_socket: Path | None = None
    # A notification waits this long for the others of the same moment, to be asked about together.
    batch_seconds: float = Field(default=0.05, ge=0)
    # Queries for notified jobs start at most this often (on top of the poll's one per interval).
    min_gap_seconds: float = Field(default=0.03, ge=0.01)
    # A job not yet showing what the hook announced is asked about again after this long (three times, then
    # doubling), ...
    followup_seconds: float = Field(default=0.03, gt=0)
    # ... this many times in all; then the poll finds it.
    max_attempts: int = Field(default=10, ge=1)


class BridgeSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_BRIDGE_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9102
    # The cluster this bridge serves: it runs the UserInstances whose spec.cluster is this.
    cluster: str = "local"
    # The namespace of the UserInstances (and UCloudJobs) it watches.
    namespace: str = "ucim"
    kubeconfig: str | None = None
    # Written to status.bridge, so `kubectl get ui -o yaml` tells which host runs an instance.
    bridge_name: str = Field(default_factory=socket.gethostname)

    # --- the ingress: the one authenticated way to the instances ---
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8890
    # The base URL callers use; status.endpoint is <this>/instances/<UserInstance name>.
    ingress_public_url: str | None = None
    ingress_token: SecretStr | None = None
    ingress_token_file: Path | None = None
    # Serve the ingress over TLS when both are set.
    ingress_tls_cert_file: Path | None = None
    ingress_tls_key_file: Path | None = None

    # --- Core's accounting: projects, Unix groups, Slurm accounts, usage ---
    accounting: AccountingSettings = Field(default_factory=AccountingSettings)

    # --- the audit trail of every action taken as a user (slurm_bridge/audit.py) ---
    audit: AuditSettings = Field(default_factory=AuditSettings)

    # --- user instances ---
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    # Where the instances' unix sockets live: created 0700 root, so only the bridge can connect.
    socket_dir: Path = Path("/run/ucim/instances")
    # Options of the instances (SidecarSettings fields: jobs_folder, catalogue_file, slurm_bin_dir, ...).
    sidecar: dict[str, Any] = Field(default_factory=dict)
    # SLURM_CONF of the instances; read from SLURM_CONF too.
    slurm_conf: Path | None = Field(
        default=None, validation_alias=AliasChoices("UCIM_BRIDGE_SLURM_CONF", "SLURM_CONF", "slurm_conf")
    )
    # The environment of an instance is HOME, USER, LOGNAME, SHELL, SLURM_CONF and these two.
    instance_path: str = "/usr/local/bin:/usr/bin:/bin"
    instance_lang: str = "C.UTF-8"
    # "module:function" the fork server calls once to preload the instance application.
    app_factory: str = "ucim.user_sidecar.app:for_fork_server"
    # From the spawn request to the first answer of the new instance.
    spawn_timeout_seconds: float = Field(default=10.0, gt=0)
    # SIGTERM, then SIGKILL after this long.
    stop_grace_seconds: float = Field(default=5.0, gt=0)
    # Restarts of an instance that exited: first after this long, doubling up to the maximum.
    restart_backoff_seconds: float = Field(default=0.5, gt=0)
    restart_backoff_max_seconds: float = Field(default=60.0, gt=0)
    # An instance that ran this long before exiting is restarted without delay.
    stable_after_seconds: float = Field(default=60.0, gt=0)
    # status.lastActivityAt is written at most this often.
    activity_write_interval_seconds: float = Field(default=30.0, gt=0)
    # Each watch asks the apiserver to end it after this long; the next one resumes where it ended.
    watch_timeout_seconds: int = Field(default=120, ge=1)
    # The bridge's Lease (its heartbeat) is renewed every third of this; the gateway takes the instances of a
    # bridge whose Lease is older than this as not ready.
    lease_duration_seconds: int = Field(default=30, ge=3)
    # The running instances' memory (ucim_instances_memory_bytes) is measured this often.
    memory_interval_seconds: float = Field(default=15.0, gt=0)

    # --- the Slurm monitor (slurm_bridge/monitor.py, slurm_bridge/poll_interval.py) ---
    monitor_enabled: bool = True
    # The poll: one batched Slurm query for all jobs, this often while jobs change (never more than once a second).
    monitor_interval_seconds: float = Field(default=1.0, ge=1.0)
    # With the hook listening, the interval doubles after each poll that found nothing new, up to this.
    monitor_idle_interval_seconds: float = Field(default=10.0, ge=1.0)
    # While jobs wait, Slurm's pending queue (their positions and estimated starts) is listed at most this often.
    monitor_queue_interval_seconds: float = Field(default=5.0, gt=0)
    # The Slurm hook: slurmctld tells the bridge when a job starts or ends.
    hook: HookSettings = Field(default_factory=HookSettings)

    @field_validator("ingress_public_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url

    @field_validator("sidecar")
    @classmethod
    def _decoded_and_checked(cls, sidecar: dict[str, Any]) -> dict[str, Any]:
        """Options given one by one (``UCIM_BRIDGE_SIDECAR__DRIVE_ROOTS='{...}'``) arrive as JSON text: decoded."""
        decoded = {key: _json_or_text(key, value) for key, value in sidecar.items()}
        pattern = project_pattern(decoded)
        if pattern is not None:
            check_project_pattern(pattern)
        return decoded

    @property
    def project_folder_pattern(self) -> str | None:
        """Where project folders are: the instances' ``drive_roots["project"]``, one setting for both sides."""
        return project_pattern(self.sidecar)

    @property
    def public_url(self) -> str:
        if self.ingress_public_url:
            return self.ingress_public_url
        scheme = "https" if self.ingress_tls_cert_file else "http"
        return f"{scheme}://{self.ingress_host}:{self.ingress_port}"

    def endpoint(self, name: str) -> str:
        """status.endpoint of the UserInstance ``name``."""
        return f"{self.public_url}/instances/{name}"

    @property
    def ingress_configured(self) -> bool:
        return self.ingress_token is not None or self.ingress_token_file is not None

    def read_ingress_token(self) -> SecretStr:
        """The ingress token, from the file if one is set; ValueError when there is none."""
        if self.ingress_token_file is not None:
            token = self.ingress_token_file.read_text().strip()
        elif self.ingress_token is not None:
            token = self.ingress_token.get_secret_value().strip()
        else:
            raise ValueError("no ingress token: set UCIM_BRIDGE_INGRESS_TOKEN_FILE (or UCIM_BRIDGE_INGRESS_TOKEN)")
        if len(token) < 16:
            raise ValueError("the ingress token must be at least 16 characters long")
        return SecretStr(token)


def _json_or_text(key: str, value: Any) -> Any:
    if not (isinstance(value, str) and value.lstrip().startswith(("{", "["))):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"sidecar option {key} is not valid JSON: {error}") from error


def project_pattern(sidecar: dict[str, Any]) -> str | None:
    """``drive_roots["project"]`` of the instances' options."""
    roots = sidecar.get("drive_roots") or {}
    pattern = roots.get("project") if isinstance(roots, dict) else None
    if pattern is not None and not isinstance(pattern, str):
        raise ValueError(f'drive_roots["project"] must be a text: {pattern!r}')
    return pattern


def check_project_pattern(pattern: str) -> str:
    """A project folder pattern the bridge can make folders from: absolute, with {name} (the group)."""
    if not pattern.startswith("/") or "{name}" not in pattern:
        raise ValueError(f'drive_roots["project"] must be an absolute path with {{name}} (the group): {pattern!r}')
    return check_root_pattern(pattern)

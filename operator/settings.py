"""Settings of the operator, loaded once from UCIM_OPERATOR_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ucim.common.products import DEFAULT_MACHINE_TYPES, MachineType
from ucim.common.settings import ComponentSettings


class OperatorSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_OPERATOR_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9101
    # The namespace that holds our resources; the operator watches only it.
    namespace: str = "ucim"
    # The provider id Core knows us by; products are registered under it.
    provider_id: str = "ucim"
    # UCloud/Core's base URL and the refresh token Core handed out when the provider was registered.
    core_url: str = "http://127.0.0.1:8080"
    core_refresh_token: SecretStr = SecretStr("")
    # The bearer token of the slurm_bridge ingress, through which user instances are reached.
    ingress_token: SecretStr = SecretStr("")
    # The compute products registered with Core at start-up (the gateway serves the same list).
    machine_types: list[MachineType] = Field(default_factory=lambda: list(DEFAULT_MACHINE_TYPES))
    register_products: bool = True
    # Core's accounting: keep its event stream open (UCloudProjects: members, wallets), run jobs under
    # their workspace's Slurm account and report usage. Off: every job runs under its product's account.
    accounting_enabled: bool = False
    # The cluster (slurm_bridge) whose frontend applies the workspaces: the gateway's and the bridge's.
    cluster: str = "local"
    # Storage is granted by Core and its usage reported (each drive measured by the bridge every few minutes);
    # off: the storage category is free to use. Choose before the first start: Core keeps a category's terms.
    storage_accounted: bool = False
    # The title of a project's drive in UCloud (its folder is the bridge's drive_roots["project"]).
    project_drive_title: str = Field(default="Work", min_length=1, max_length=256)
    # At most one request to Core starts per this interval: a lone update goes at once, updates of several
    # jobs arriving within it are gathered and sent together when it ends.
    delivery_batch_interval_seconds: float = Field(default=0.1, ge=0.0, le=5.0)
    # At most this many updates per request to Core (the anchor sends 100).
    delivery_batch_size: int = Field(default=100, ge=1, le=100)
    # Longest wait between two delivery attempts while Core is failing.
    delivery_retry_max_seconds: float = Field(default=30.0, gt=0.0)
    # The HTTP timeout of a submit or cancel call to a user's instance (sbatch can be slow on a busy frontend).
    submit_timeout_seconds: float = Field(default=30.0, gt=0.0)
    # Idle timeout given to the UserInstances the operator creates (the chart gives it the gateway's value).
    idle_timeout_seconds: int = Field(default=1800, ge=0)
    # Longest wait between two attempts to reach a user's instance.
    instance_retry_max_seconds: float = Field(default=10.0, gt=0.0)
    # A deleted job's cancellation is tried this often before its finalizer is removed anyway.
    delete_attempts: int = Field(default=10, ge=1)

"""Settings of the gateway, loaded once from UCIM_GATEWAY_* variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from yarl import URL

from ucim.common.products import DEFAULT_MACHINE_TYPES, MachineType
from ucim.common.settings import ComponentSettings
from ucim.gateway.extension_policy import ExtensionPolicy


class GatewaySettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_GATEWAY_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = 8889
    # The provider id UCloud/Core knows us by; every route lives under /ucloud/<provider_id>/.
    provider_id: str = "ucim"
    # The namespace that holds our UCloudJob and UserInstance resources.
    namespace: str = "ucim"
    # The cluster (slurm_bridge) new jobs and instances go to.
    cluster: str = "local"
    kubeconfig: str | None = None

    # Core's public key: a file holding PEM or the `ucloud_key.pub` form (base64 DER, no headers).
    core_public_key_file: Path | None = None
    core_public_key: SecretStr | None = Field(default=None, description="the key itself, instead of a file")
    core_issuer: str = "cloud.sdu.dk"
    # Seconds of clock difference tolerated when checking exp/iat.
    jwt_leeway_seconds: int = 30

    machine_types: list[MachineType] = Field(default_factory=lambda: list(DEFAULT_MACHINE_TYPES))
    # How long integration/init waits for an instance to become Ready (Core retries 5 x 500 ms).
    init_wait_seconds: float = 2.0
    # Core gives a provider call about 5 s before it records a failure: job creation answers within this.
    core_call_budget_seconds: float = Field(default=4.0, gt=0.0)
    # How long job creation waits (within that budget) for the submission, so an sbatch rejection comes back as
    # a 400; a later rejection reaches Core as a FAILURE job update.
    submit_wait_seconds: float = Field(default=3.0, ge=0.0)
    idle_timeout_seconds: int = 1800
    # Walltime extensions (jobs/extend): how far a user may extend a job (UCIM_GATEWAY_EXTENSION__*).
    extension: ExtensionPolicy = Field(default_factory=ExtensionPolicy)
    # Core's accounting decides what may run: a job of a workspace whose wallet is locked (or absent) is
    # refused with 402. Needs the operator's accounting event stream (UCIM_OPERATOR_ACCOUNTING_ENABLED).
    accounting_enabled: bool = False

    # Connections (integration/connect, unlinked). Core's URL and the provider's refresh token, to call
    # approveConnection/clearConnection; without them integration/connect answers 503.
    core_url: str | None = None
    core_refresh_token: SecretStr | None = None
    # Where Core sends the user after connecting (integration/connect's redirectTo): UCloud's public URL.
    ucloud_url: str = "https://cloud.sdu.dk"
    # retrieveManifest's expireAfterMs: a connection ends this long after it was made; None: never.
    connection_expire_after_ms: int | None = Field(default=None, ge=1)
    # integration/init connects a user who is not connected (IM2 connects users automatically); off: 403.
    auto_connect: bool = True
    # How long integration/connect waits for the bridge to map the user.
    connect_wait_seconds: float = 10.0

    # The slurm_bridge ingress's bearer token: user instances are reached only through the ingress.
    ingress_token: SecretStr = SecretStr("")
    # The gateway's URL as browsers reach it: uploads and downloads go to <public_url>/ucloud/<provider_id>/...
    public_url: str = "http://127.0.0.1:8889"
    # Connecting to the bridge ingress; and the longest silence while a request or answer streams.
    instance_connect_timeout_seconds: float = Field(default=5.0, gt=0.0)
    instance_read_timeout_seconds: float = Field(default=300.0, gt=0.0)
    # Web interfaces and remote desktops of jobs (interactiveSession WEB and VNC). Rank r of job j serves its web
    # interface at <web_prefix><j>-<r>[-<target>]<web_suffix> (the wildcard domain: DNS and a certificate for
    # *<web_suffix> lead to the gateway), with public_url's scheme and port; None: no web interfaces.
    web_prefix: str = Field(default="app-", pattern=r"^[a-z0-9-]{0,20}$")
    web_suffix: str | None = Field(default=None, pattern=r"^\.[a-z0-9.-]{1,200}$")
    # Signs web session cookies and VNC URLs; every replica needs the same (the chart's Secret). Empty: neither.
    web_session_key: SecretStr = SecretStr("")
    # How long a web session's cookie and a VNC URL stay usable; never beyond the job's end.
    web_session_seconds: int = Field(default=7 * 86_400, ge=60)

    @model_validator(mode="after")
    def _web_needs_a_key(self) -> GatewaySettings:
        if self.web_suffix is not None and not self.vnc_enabled:
            raise ValueError(
                "UCIM_GATEWAY_WEB_SUFFIX is set: UCIM_GATEWAY_WEB_SESSION_KEY must be 32 characters or more"
            )
        return self

    @cached_property
    def public_scheme(self) -> str:
        """``public_url``'s scheme: what browsers reach the gateway, and jobs' interfaces, with."""
        return URL(self.public_url).scheme

    @property
    def vnc_enabled(self) -> bool:
        return len(self.web_session_key.get_secret_value()) >= 32

    @property
    def web_interfaces_enabled(self) -> bool:
        return self.vnc_enabled and self.web_suffix is not None

    # How long an upload chunk or a download waits for a stopped (idle) instance to start again.
    transfer_wait_seconds: float = Field(default=15.0, ge=0.0)

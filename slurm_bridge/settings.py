"""Settings of the slurm_bridge, loaded once from UCIM_BRIDGE_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from ucim.common.settings import ComponentSettings


class BridgeSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_BRIDGE_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9102
    # The cluster this bridge serves; UserInstances and UCloudJobs name it.
    cluster: str = "local"
    namespace: str = "ucim"

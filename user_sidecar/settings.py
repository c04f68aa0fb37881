"""Settings of the user_sidecar, loaded once from UCIM_SIDECAR_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from ucim.common.settings import ComponentSettings


class SidecarSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_SIDECAR_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9103
    # When set, serve on this unix socket instead of TCP (how the bridge runs us).
    socket_path: str | None = None

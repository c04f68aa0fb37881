"""Settings of the gateway, loaded once from UCIM_GATEWAY_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from ucim.common.settings import ComponentSettings


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

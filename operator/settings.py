"""Settings of the operator, loaded once from UCIM_OPERATOR_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from ucim.common.settings import ComponentSettings


class OperatorSettings(ComponentSettings):
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_OPERATOR_", env_nested_delimiter="__", extra="ignore"
    )

    metrics_port: int = 9101
    # The namespace that holds our resources; the operator watches only it.
    namespace: str = "ucim"

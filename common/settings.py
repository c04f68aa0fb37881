"""The base of every component's settings.

Each component has one pydantic-settings class (``GatewaySettings``, ...) that is
loaded once at start-up and passed down; nothing reads ``os.environ`` later.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import BaseSettings, SettingsConfigDict

# Group and version of the custom resources; fixed once, kept stable.
API_GROUP = "ucim.io"
API_VERSION = "v1alpha1"


class ComponentSettings(BaseSettings):
    """Settings common to all components. Subclasses set their own env prefix."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="UCIM_", env_nested_delimiter="__", extra="ignore"
    )

    log_level: str = "INFO"
    log_format: str = "json"
    # /healthz, /readyz and /metrics are served here.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100

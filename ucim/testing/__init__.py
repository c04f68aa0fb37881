"""Test and demo tooling for ucim, in the spirit of ``kopf.testing``; never deployed.

``CoreStandIn`` plays UCloud/Core for a provider: it mints the JWTs Core would,
serves the Core endpoints a provider calls (recording what it receives), and calls
the provider the way Core does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ucim.testing.core_standin import (
        CORE_STANDIN,
        CoreKeys,
        CoreRecord,
        CoreStandIn,
        ProviderCall,
        ProviderCallError,
        ProviderResponse,
        init_app,
        make_job,
        token_claims,
        unsigned_token,
    )

__all__ = [
    "CORE_STANDIN",
    "CoreKeys",
    "CoreRecord",
    "CoreStandIn",
    "ProviderCall",
    "ProviderCallError",
    "ProviderResponse",
    "init_app",
    "make_job",
    "token_claims",
    "unsigned_token",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m ucim.testing.core_standin` does not
    # load the module twice (runpy warns when the package already imported it).
    if name in __all__:
        return getattr(importlib.import_module("ucim.testing.core_standin"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

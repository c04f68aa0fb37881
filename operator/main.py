"""``ucim-operator``: run the kopf operator for UCloudJob and UserInstance."""

from __future__ import annotations

import asyncio

import kopf

from ucim.common.logs import setup_logging
from ucim.operator import handlers  # noqa: F401  (registers the handlers)
from ucim.operator.settings import OperatorSettings


def main() -> None:
    settings = OperatorSettings()
    setup_logging(settings.log_level, settings.log_format)
    # One replica, no peering: kopf has no leader election (the chart uses Recreate).
    asyncio.run(kopf.operator(standalone=True, namespaces=[settings.namespace]))


if __name__ == "__main__":
    main()

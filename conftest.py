"""Options shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.platform import Platform, platform_session


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--platform",
        choices=("local", "kind"),
        default="local",
        help="where the e2e tests run: the local platform (processes) or a kind cluster (Docker)",
    )


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    """The real local platform: apiserver, controller-manager, Slurm, users."""
    yield from platform_session()

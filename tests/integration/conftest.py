"""The integration tier runs against the real local platform."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.platform import Platform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def namespace(platform: Platform) -> Iterator[str]:
    """A fresh namespace, deleted (with everything in it) after the test."""
    name = f"ucim-test-{uuid.uuid4().hex[:8]}"
    platform.kubectl("create", "namespace", name)
    yield name
    platform.kubectl("delete", "namespace", name, "--wait=false", check=False)

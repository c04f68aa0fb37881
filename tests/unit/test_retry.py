"""The one retry policy: doubling waits with a cap."""

from __future__ import annotations

import logging

import pytest

from ucim.common.retry import delay_after, retrying


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.5), (2, 1.0), (4, 4.0), (6, 10.0), (1000, 10.0)])
def test_the_delay_doubles_up_to_a_cap(failures: int, expected: float) -> None:
    assert delay_after(failures, first=0.5, cap=10.0) == expected


async def test_a_loop_retries_with_the_same_curve_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    failures = iter([ConnectionError("away"), ConnectionError("away"), None])
    async for attempt in retrying(first=0.5, cap=10.0, log=logging.getLogger("t"), what="the thing", sleep=sleep):
        with attempt:
            if (error := next(failures)) is not None:
                raise error
    assert waits == [0.5, 1.0]
    assert "the thing failed; retrying in 0.5 s" in caplog.text

"""The one retry policy of ucim: doubling waits with a cap, from tenacity.

Loops that retry by themselves (a watch that failed, a registration Core refused for
now) use :func:`retrying`; retries that something else schedules (kopf's
``TemporaryError(delay=…)``, the bridge's restart of an instance that died) take
their delay from :func:`delay_after`, so both follow the same curve.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_exponential,
)
from tenacity.wait import wait_base

Sleep = Callable[[float], Awaitable[None]]


def backoff(first: float, cap: float) -> wait_base:
    """Wait ``first`` seconds after the first failure, doubling after each further one, never more than ``cap``."""
    return wait_exponential(multiplier=first, min=first, max=cap)


def delay_after(failures: int, *, first: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row (the first failure waits ``first``)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, failures)
    return float(backoff(first, cap)(state))


def retrying(
    *,
    first: float,
    cap: float,
    log: logging.Logger,
    what: str,
    retry_on: Callable[[BaseException], bool] = lambda error: isinstance(error, Exception),
    sleep: Sleep | None = None,
) -> AsyncRetrying:
    """Retry for ever, with the backoff above, logging each failure as ``what`` failed (with its traceback)."""

    def log_failure(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed; retrying in %.1f s", what, wait, exc_info=error, extra={"retry_in": wait})

    options = {"sleep": sleep} if sleep is not None else {}
    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        wait=backoff(first, cap),
        stop=stop_never,
        before_sleep=log_failure,
        reraise=True,
        **options,  # type: ignore[arg-type]
    )

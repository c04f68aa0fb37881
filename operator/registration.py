"""Registering the provider's products with UCloud/Core, in the background at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_random_exponential

from ucim.common.core_client import CoreClient, CoreRejectedError, CoreUnavailableError
from ucim.common.products import MachineType, storage_products
from ucim.common.protocol import ProductV2

logger = logging.getLogger(__name__)


def products_of(
    machine_types: Sequence[MachineType], provider_id: str, *, storage_accounted: bool = False
) -> list[ProductV2]:
    """The machine types and the storage products: Core shows a drive whose product it lacks with no support."""
    storage = storage_products(provider_id, accounted=storage_accounted)
    return [machine.product(provider_id) for machine in machine_types] + storage


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0
    logger.warning("registering products with Core failed (%s); retrying in %.1f s", error, wait)


async def register_products(
    core: CoreClient,
    products: Sequence[ProductV2],
    *,
    max_wait: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Register ``products``, retrying for as long as Core is unreachable; False if Core refused them."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(CoreUnavailableError),
        wait=wait_random_exponential(multiplier=1, max=max_wait),
        stop=stop_never,
        sleep=sleep,
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await core.register_products(products)
    except CoreRejectedError as rejection:
        # A configuration error (a product Core cannot take); retrying would not change the answer.
        logger.error("Core refused the products: %s", rejection.why)  # noqa: TRY400 - no traceback needed
        return False
    logger.info("registered %d products with Core", len(products))
    return True

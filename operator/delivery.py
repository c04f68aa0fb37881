"""Job updates of many jobs, sent to UCloud/Core together.

Each job's delivery handler hands its pending updates to the ``DeliveryQueue``
and waits; a background task (started at operator start-up) sends them in
requests of at most 100 items, starting at most one request per interval
(~100 ms): an update that finds the sender idle goes at once (no added latency
for a lone state change), what arrives while the interval since the last
request runs is collected and sent together when it ends (a burst of changes,
one monitor cycle's worth, becomes few requests). A job's updates always travel
together and in order, in one request, so Core either has all of them or none.

The queue holds nothing durable: the truth is each UCloudJob's status
(``transitions[reportedTransitions:]`` is what Core has not acknowledged), so a
crash loses nothing; the handler that waited simply runs again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ucim.common.core_client import CoreError, CoreRejectedError
from ucim.common.protocol import JobUpdateItem, now_ms
from ucim.operator.metrics import (
    CORE_DELIVERY_BACKLOG,
    CORE_DELIVERY_LATENCY,
    CORE_UPDATE_FAILURES,
    CORE_UPDATES_DELIVERED,
)

logger = logging.getLogger(__name__)

Send = Callable[[list[JobUpdateItem]], Awaitable[None]]


@dataclass
class _Group:
    """One job's updates, in order, and the caller waiting for them."""

    items: list[JobUpdateItem]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def pack(groups: Sequence[_Group], max_items: int) -> tuple[list[_Group], list[_Group]]:
    """Whole groups from the front, in order, up to ``max_items`` updates; (the batch, the rest).

    A group larger than ``max_items`` goes alone (the client splits it, in order).
    """
    batch: list[_Group] = []
    count = 0
    for index, group in enumerate(groups):
        if batch and count + len(group.items) > max_items:
            return batch, list(groups[index:])
        batch.append(group)
        count += len(group.items)
    return batch, []


class DeliveryQueue:
    """Sends job updates in batches of at most ``max_items``, starting at most one batch per ``interval`` seconds.

    Batches of more than ``max_items`` updates waiting at once go back to back.
    """

    def __init__(self, send: Send, *, interval: float = 0.1, max_items: int = 100) -> None:
        self._send = send
        self._interval = interval
        self._max_items = max_items
        self._groups: deque[_Group] = deque()
        self._arrived = asyncio.Event()

    async def deliver(self, items: Sequence[JobUpdateItem]) -> None:
        """Send one job's updates with the next batch; returns when Core has them, raises ``CoreError`` if not."""
        if not items:
            return
        group = _Group(list(items))
        self._groups.append(group)
        self._arrived.set()
        await group.done

    async def run(self) -> None:
        """The background sender; runs until cancelled."""
        loop = asyncio.get_running_loop()
        last_sent = -math.inf
        while True:
            await self._arrived.wait()
            # Idle for an interval: send now. Otherwise gather until the interval is over.
            if (wait := last_sent + self._interval - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._arrived.clear()
            last_sent = loop.time()
            # What waits now goes now; what arrives while it is being sent goes in the next round.
            waiting = [group for group in self._groups if not group.done.done()]  # callers may have gone
            self._groups.clear()
            while waiting:
                batch, waiting = pack(waiting, self._max_items)
                await self._send_batch(batch)

    async def _send_batch(self, batch: list[_Group]) -> None:
        try:
            await self._send([item for group in batch for item in group.items])
        except CoreRejectedError as rejection:
            if len(batch) == 1:
                _fail(batch, rejection, "rejected")
                return
            # Core refuses the request as a whole when one item is wrong: find it, deliver the others.
            for group in batch:
                await self._send_batch([group])
        except CoreError as error:
            _fail(batch, error, "unavailable")
        except Exception as error:
            # Never let one bad batch stop the sender; the callers see the error and retry.
            logger.exception("sending job updates failed")
            _fail(batch, error, "error")
        else:
            _succeed(batch)


def _succeed(batch: list[_Group]) -> None:
    now = now_ms()
    for group in batch:
        for item in group.items:
            CORE_DELIVERY_LATENCY.observe(max(0, now - item.update.timestamp) / 1000)
        CORE_UPDATES_DELIVERED.inc(len(group.items))
        if not group.done.done():
            group.done.set_result(None)


def _fail(batch: list[_Group], error: BaseException, reason: str) -> None:
    for group in batch:
        CORE_UPDATE_FAILURES.labels(reason=reason).inc(len(group.items))
        if not group.done.done():
            group.done.set_exception(error)


class Backlog:
    """Job state changes not yet acknowledged by Core, per job, behind the backlog gauge."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def set(self, job_uid: str, pending: int) -> None:
        self._total += pending - self._pending.get(job_uid, 0)
        if pending:
            self._pending[job_uid] = pending
        else:
            self._pending.pop(job_uid, None)
        CORE_DELIVERY_BACKLOG.set(self._total)

    def forget(self, job_uid: str) -> None:
        self.set(job_uid, 0)

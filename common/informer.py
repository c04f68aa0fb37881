"""The one list-and-watch loop: a cache of one kind's objects, kept current by a watch.

What controller-runtime's informers and kopf's watchers do, at the size ucim needs:

1. **list** the objects the label selector picks (the apiserver filters them), replace
   the cache with them and hand each change to ``on_event`` (an object gone since the
   last list is a DELETED event);
2. **watch** from the list's resourceVersion, applying each event to the cache and
   handing it on; bookmarks and events move the version forward, so a watch that ends
   (its timeout) resumes where it was, without listing again;
3. a version too old to resume from (410 Gone) lists again at once; any other error
   is retried with the one backoff of :mod:`ucim.common.retry`.

``on_event`` runs in the loop and must not block: it records the change and wakes
whoever works on it. Errors in that work are the worker's to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from ucim.common.kube import GoneError, Kube
from ucim.common.resources import _Resource
from ucim.common.retry import retrying

R = TypeVar("R", bound=_Resource)
Change = Literal["ADDED", "MODIFIED", "DELETED"]
OnEvent = Callable[[Change, R], None]

log = logging.getLogger(__name__)


def fan_out(*handlers: OnEvent[R]) -> OnEvent[R]:
    """One ``on_event`` that hands each change to several workers sharing the informer's cache."""

    def on_event(change: Change, obj: R) -> None:
        for handler in handlers:
            handler(change, obj)

    return on_event


FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


def synced(informer: Informer[R] | None) -> Informer[R] | None:
    """``informer`` while its cache is current, else None: read the apiserver instead."""
    return informer if informer is not None and informer.synced.is_set() else None


class Informer(Generic[R]):
    """The objects of ``kind`` in ``namespace`` that ``label_selector`` picks, by name."""

    def __init__(
        self,
        kube: Kube,
        kind: type[R],
        namespace: str,
        *,
        label_selector: str | None = None,
        on_event: OnEvent[R] | None = None,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_event = on_event
        self.watch_timeout_seconds = watch_timeout_seconds
        self.objects: dict[str, R] = {}
        # Set while the cache is current: after a list, or while a watch resumes; cleared when a watch breaks.
        self.synced = asyncio.Event()
        self._version: str | None = None
        self._changed: dict[str, asyncio.Event] = {}  # name -> set at that object's next change (wait_for)

    async def run(self) -> None:
        """List and watch until cancelled."""
        what = f"{self.kind.KIND} watch"
        while True:
            async for attempt in retrying(
                first=FIRST_RETRY_SECONDS, cap=MAX_RETRY_SECONDS, log=log, what=what, retry_on=self._broken
            ):
                with attempt:
                    await self._list_and_watch()

    def _broken(self, error: BaseException) -> bool:
        """Any error but a cancellation is retried; until then the cache may be behind."""
        if not isinstance(error, Exception):
            return False
        self.synced.clear()
        return True

    async def _list_and_watch(self) -> None:
        if self._version is None:
            objects, self._version = await self.kube.list_versioned(self.kind, self.namespace, self.label_selector)
            self._replace(objects)
        # The cache holds every change up to the version the watch goes on from.
        self.synced.set()
        try:
            async for event in self.kube.watch(
                self.kind,
                self.namespace,
                resource_version=self._version,
                label_selector=self.label_selector,
                timeout_seconds=self.watch_timeout_seconds,
            ):
                self._version = event.resource_version
                if event.obj is not None and event.type != "BOOKMARK":
                    self._apply(event.type, event.obj)
        except GoneError:
            log.info("resourceVersion too old; listing again", extra={"kind": self.kind.KIND})
            self._version = None

    def _replace(self, objects: list[R]) -> None:
        present = {obj.metadata.name: obj for obj in objects}
        for name in [name for name in self.objects if name not in present]:
            self._apply("DELETED", self.objects[name])
        for name, obj in present.items():
            known = self.objects.get(name)
            if known is None:
                self._apply("ADDED", obj)
            elif known.metadata.resource_version != obj.metadata.resource_version:
                self._apply("MODIFIED", obj)

    def _apply(self, change: Change, obj: R) -> None:
        if change == "DELETED":
            self.objects.pop(obj.metadata.name, None)
        elif (known := self.objects.get(obj.metadata.name)) is None or not older(obj, known):
            self.objects[obj.metadata.name] = obj
        if self.on_event is not None:
            self.on_event(change, obj)
        if (changed := self._changed.pop(obj.metadata.name, None)) is not None:
            changed.set()

    def get(self, name: str) -> R | None:
        return self.objects.get(name)

    def remember(self, obj: R) -> R:
        """An object this process has just written, as the apiserver answered: the cache holds it until the
        watch brings it or a newer copy (client-go's mutation cache). Without it, a second call for the same
        user during a login storm, whose watch events come a second late, wrote everything a second time."""
        known = self.objects.get(obj.metadata.name)
        if known is None or older(known, obj):
            self.objects[obj.metadata.name] = obj
        return obj

    async def wait_for(self, name: str, predicate: Callable[[R | None], bool]) -> R | None:
        """The cached object once ``predicate`` holds for it (None: absent); callers bound the wait.

        What ``Kube.wait_for`` does with a watch of its own, on the watch this informer already
        has: a thousand waiters cost the apiserver nothing. The predicate may raise to end the
        wait early (a refusal).
        """
        while True:
            current = self.objects.get(name)
            if predicate(current):
                return current
            changed = self._changed.setdefault(name, asyncio.Event())
            await changed.wait()


def older(obj: _Resource, than: _Resource) -> bool:
    """Whether ``obj`` is an older copy than ``than``: resourceVersions are etcd's revisions, compared as
    numbers as client-go's mutation cache does; versions that are not numbers are never taken as older."""
    mine, theirs = obj.metadata.resource_version, than.metadata.resource_version
    return bool(mine and theirs and mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs))

"""The one list-and-watch loop: resumes from where it was, lists again on 410, backs off on errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ucim.common.informer import Change, Informer
from ucim.common.kube import GoneError, WatchEvent
from ucim.common.resources import UserInstance


def instance(name: str, version: str) -> UserInstance:
    return UserInstance.from_obj(
        {"metadata": {"name": name, "resourceVersion": version}, "spec": {"ucloudUsername": name, "cluster": "c"}}
    )


class ScriptedKube:
    """Answers each list and watch from a script; records what was asked."""

    def __init__(self, lists: list[tuple[list[UserInstance], str]], watches: list[list[Any]]) -> None:
        self.lists, self.watches = lists, watches
        self.listed: list[str | None] = []
        self.watched_from: list[str | None] = []
        self.done = asyncio.Event()

    async def list_versioned(
        self, kind: object, namespace: str, label_selector: str | None = None
    ) -> tuple[list[UserInstance], str]:
        self.listed.append(label_selector)
        return self.lists.pop(0)

    async def watch(self, kind: object, namespace: str, **options: Any) -> AsyncIterator[WatchEvent[UserInstance]]:
        self.watched_from.append(options["resource_version"])
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()
        for step in self.watches.pop(0):
            if isinstance(step, Exception):
                raise step
            yield step


async def run_until_done(informer: Informer[UserInstance], kube: ScriptedKube) -> None:
    task = asyncio.create_task(informer.run())
    async with asyncio.timeout(10):
        await kube.done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_it_lists_then_resumes_each_watch_where_the_last_one_ended() -> None:
    kube = ScriptedKube(
        lists=[([instance("a", "5")], "7")],
        watches=[
            [WatchEvent("ADDED", instance("b", "8"), "8"), WatchEvent("BOOKMARK", None, "12")],
            [WatchEvent("DELETED", instance("a", "13"), "13")],
        ],
    )
    seen: list[tuple[Change, str]] = []
    informer = Informer(kube, UserInstance, "ns", label_selector="ucim.io/cluster=c",  # type: ignore[arg-type]
                        on_event=lambda change, obj: seen.append((change, obj.metadata.name)))  # fmt: skip
    await run_until_done(informer, kube)
    assert kube.listed == ["ucim.io/cluster=c"]  # listed once, with the selector
    assert kube.watched_from == ["7", "12", "13"]  # each watch resumed where the last one was
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert set(informer.objects) == {"b"} and informer.synced.is_set()


async def test_a_version_too_old_lists_again_and_finds_what_was_deleted_meanwhile() -> None:
    kube = ScriptedKube(
        lists=[([instance("a", "5"), instance("b", "5")], "7"), ([instance("b", "9"), instance("c", "9")], "20")],
        watches=[[GoneError("too old")]],
    )
    seen: list[tuple[Change, str]] = []
    informer = Informer(kube, UserInstance, "ns",  # type: ignore[arg-type]
                        on_event=lambda change, obj: seen.append((change, obj.metadata.name)))  # fmt: skip
    await run_until_done(informer, kube)
    assert kube.watched_from == ["7", "20"]
    assert seen[2:] == [("DELETED", "a"), ("MODIFIED", "b"), ("ADDED", "c")]
    assert set(informer.objects) == {"b", "c"}


async def test_an_error_is_retried_with_backoff_from_the_same_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ucim.common.informer.FIRST_RETRY_SECONDS", 0.01)
    kube = ScriptedKube(lists=[([], "7")], watches=[[ConnectionError("apiserver away")]])
    informer = Informer(kube, UserInstance, "ns")  # type: ignore[arg-type]
    await run_until_done(informer, kube)
    assert kube.listed == [None]  # no second list: the watch resumes from its version
    assert kube.watched_from == ["7", "7"]


async def test_wait_for_wakes_on_that_objects_changes_only() -> None:
    """Waiters are woken by the watch they share, each by its own object's changes."""
    kube = ScriptedKube(lists=[([instance("a", "1")], "1")], watches=[])
    informer = Informer(kube, UserInstance, "ns")  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    assert await informer.wait_for("a", lambda found: found is not None) is not None  # holds already: no wait
    checked: list[str | None] = []

    def version_3(found: UserInstance | None) -> bool:
        checked.append(found.metadata.resource_version if found else None)
        return found is not None and found.metadata.resource_version == "3"

    waiting = asyncio.create_task(informer.wait_for("b", version_3))
    await asyncio.sleep(0)
    informer._apply("MODIFIED", instance("a", "2"))  # another object: the waiter sleeps on
    informer._apply("ADDED", instance("b", "2"))
    informer._apply("MODIFIED", instance("b", "3"))
    found = await asyncio.wait_for(waiting, 5)
    assert found is not None and found.metadata.resource_version == "3"
    assert checked[0] is None and checked[-1] == "3" and len(checked) <= 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_remembered_write_is_not_undone_by_an_older_event() -> None:
    """Our own write's answer stays until the watch brings it or something newer (a mutation cache)."""
    informer = Informer(ScriptedKube([], []), UserInstance, "ns")  # type: ignore[arg-type]
    informer._apply("ADDED", instance("a", "5"))
    informer.remember(instance("a", "9"))
    informer._apply("MODIFIED", instance("a", "7"))  # the watch is behind our write
    assert informer.objects["a"].metadata.resource_version == "9"
    informer._apply("MODIFIED", instance("a", "11"))
    informer.remember(instance("a", "10"))  # an answer older than what the watch has by now
    assert informer.objects["a"].metadata.resource_version == "11"
    informer._apply("DELETED", instance("a", "12"))
    assert informer.get("a") is None

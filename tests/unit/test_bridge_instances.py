"""The UserInstance loop's decisions, with the apiserver and the fork server replaced by stand-ins.

The stand-in fork server serves a tiny app on the requested unix socket in this very loop,
so the loop's whole path (spawn, first answer, ingress route) runs without processes.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ucim.common.resources import UserInstance
from ucim.slurm_bridge.ingress import Routes
from ucim.slurm_bridge.instances import InstanceManager
from ucim.slurm_bridge.mapping import LocalAccount, Mapper, MappingRefusedError, MappingSettings
from ucim.slurm_bridge.settings import BridgeSettings
from ucim.slurm_bridge.spawner import SpawnError, SpawnRequest

ALICE = LocalAccount(name="alice", uid=1101, gid=1101, groups=(1101, 1200), home="/home/alice", login_shell="/bin/bash")


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)

    def add(self, name: str, username: str = "alice#1", idle: int = 0) -> UserInstance:
        self.objects[name] = {
            "apiVersion": "ucim.io/v1alpha1",
            "kind": "UserInstance",
            "metadata": {"name": name, "namespace": "ns", "generation": 1, "uid": f"uid-{name}"},
            "spec": {"ucloudUsername": username, "cluster": "local", "idleTimeoutSeconds": idle},
        }
        return self._bump(name)

    def _bump(self, name: str) -> UserInstance:
        self.objects[name]["metadata"]["resourceVersion"] = str(next(self.versions))
        return UserInstance.from_obj(copy.deepcopy(self.objects[name]))

    def current(self, name: str) -> UserInstance:
        return UserInstance.from_obj(copy.deepcopy(self.objects[name]))

    def annotate(self, name: str, value: str) -> UserInstance:
        merge(self.objects[name]["metadata"], {"annotations": {"ucim.io/requested-at": value}})
        return self._bump(name)

    async def patch(self, kind: type[UserInstance], namespace: str, name: str, body: dict[str, Any]) -> UserInstance:
        merge(self.objects[name], body)
        self.objects[name]["metadata"]["generation"] += 1
        return self._bump(name)

    async def patch_status(
        self, kind: type[UserInstance], namespace: str, name: str, status: dict[str, Any]
    ) -> UserInstance:
        merge(self.objects[name], {"status": status})
        return self._bump(name)

    async def get(self, kind: type[UserInstance], namespace: str, name: str) -> UserInstance | None:
        return UserInstance.from_obj(copy.deepcopy(self.objects[name])) if name in self.objects else None

    def ready(self, name: str) -> tuple[str, str] | None:
        for condition in self.objects[name].get("status", {}).get("conditions", []):
            if condition["type"] == "Ready":
                return condition["status"], condition["reason"]
        return None


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class FakeForkServer:
    """Serves a health route on the socket it is asked for; "exits" when stopped or crashed."""

    def __init__(self) -> None:
        self.pids = itertools.count(5000)
        self.running: dict[int, web.AppRunner] = {}
        self.on_exit: Callable[[int, int, float], None] = lambda *_: None
        self.fail_next = False
        self.spawned: list[SpawnRequest] = []

    async def spawn(self, request: SpawnRequest) -> int:
        if self.fail_next:
            self.fail_next = False
            raise SpawnError("no more processes")
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, request.socket_path).start()
        pid = next(self.pids)
        self.running[pid] = runner
        self.spawned.append(request)
        return pid

    async def exit(self, pid: int, status: int) -> None:
        await self.running.pop(pid).cleanup()
        self.on_exit(pid, status, 0.01)

    async def stop(self, pid: int) -> None:
        if pid in self.running:
            asyncio.get_running_loop().create_task(self.exit(pid, 0))


class FakeMapper(Mapper):
    def __init__(self) -> None:
        super().__init__(MappingSettings())
        self.refuse: str | None = None

    async def map(self, ucloud_username: str) -> LocalAccount:
        if self.refuse:
            raise MappingRefusedError(self.refuse)
        return ALICE

    def resolve(self, uid: int, local_user: str | None) -> LocalAccount:
        return ALICE


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[InstanceManager, FakeKube, FakeForkServer, FakeMapper]]:
    kube, forks, mapper, routes = FakeKube(), FakeForkServer(), FakeMapper(), Routes()
    settings = BridgeSettings(
        namespace="ns",
        cluster="local",
        socket_dir=tmp_path,
        bridge_name="bridge-1",
        ingress_public_url="https://bridge.example:8890/",
        restart_backoff_seconds=0.05,
        activity_write_interval_seconds=0.1,
    )
    manager = InstanceManager(
        kube=kube,  # type: ignore[arg-type]
        settings=settings,
        mapper=mapper,
        fork_server=forks,  # type: ignore[arg-type]
        routes=routes,
    )
    forks.on_exit = manager.on_child_exit
    yield manager, kube, forks, mapper
    await manager.shutdown(wait_seconds=1)
    for pid in list(forks.running):
        await forks.running.pop(pid).cleanup()


async def eventually(check: Callable[[], bool], seconds: float = 3.0) -> None:
    """Poll ``check``: the state lives in the stand-ins, which signal nothing."""
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


World = tuple[InstanceManager, FakeKube, FakeForkServer, FakeMapper]


async def test_a_new_instance_is_mapped_then_served(world: World) -> None:
    manager, kube, forks, _ = world
    manager.observe("ADDED", kube.add("ui-a"))
    await eventually(lambda: kube.ready("ui-a") == ("True", "InstanceServing"))
    obj = kube.objects["ui-a"]
    assert (obj["spec"]["localUser"], obj["spec"]["uid"]) == ("alice", 1101)
    status = obj["status"]
    assert status["endpoint"] == "https://bridge.example:8890/instances/ui-a"
    assert (status["bridge"], status["pid"]) == ("bridge-1", 5000)
    assert status["spawnDurationSeconds"] < 1
    assert status["observedGeneration"] == 2
    request = forks.spawned[0]
    assert (request.uid, request.gid, request.groups, request.key) == (1101, 1101, [1101, 1200], "ns/ui-a")
    assert Path(request.socket_path).parent == manager.settings.socket_dir
    route = manager.routes.get("ui-a")
    assert route is not None and route.running


async def test_only_this_clusters_instances_are_watched(world: World) -> None:
    manager, *_ = world
    # The apiserver filters them: the watch asks only for objects labelled with our cluster.
    assert manager.informer.label_selector == "ucim.io/cluster=local"


async def test_a_refused_user_waits_for_a_new_request(world: World) -> None:
    manager, kube, forks, mapper = world
    mapper.refuse = "local user x may not log in (shell /usr/sbin/nologin)"
    manager.observe("ADDED", kube.add("ui-r"))
    await eventually(lambda: kube.ready("ui-r") == ("False", "MappingRefused"))
    mapped = kube.objects["ui-r"]["status"]["conditions"][0]
    assert (mapped["type"], mapped["status"], mapped["message"]) == ("Mapped", "False", mapper.refuse)
    mapper.refuse = None
    manager.observe("MODIFIED", kube.current("ui-r"))
    await asyncio.sleep(0.1)
    assert forks.spawned == [], "no retry without a new request"
    manager.observe("MODIFIED", kube.annotate("ui-r", "2026-11-25T10:00:00Z"))
    await eventually(lambda: kube.ready("ui-r") == ("True", "InstanceServing"))


async def test_an_instance_that_exits_is_restarted_after_a_backoff(world: World) -> None:
    manager, kube, forks, _ = world
    manager.observe("ADDED", kube.add("ui-c"))
    await eventually(lambda: kube.ready("ui-c") == ("True", "InstanceServing"))
    await forks.exit(5000, -9)
    await eventually(lambda: kube.ready("ui-c") == ("False", "InstanceExited"))
    message = kube.objects["ui-c"]["status"]["conditions"][1]["message"]
    assert message == "instance (pid 5000) exited with status -9; restarting in 0.05 s"
    assert "pid" not in kube.objects["ui-c"]["status"]
    await eventually(lambda: kube.ready("ui-c") == ("True", "InstanceServing"))
    assert kube.objects["ui-c"]["status"]["pid"] == 5001
    # Each further crash waits twice as long.
    await forks.exit(5001, 1)
    await eventually(lambda: kube.ready("ui-c") == ("False", "InstanceExited"))
    assert "restarting in 0.1 s" in kube.objects["ui-c"]["status"]["conditions"][1]["message"]


async def test_a_failed_spawn_is_retried(world: World) -> None:
    manager, kube, forks, _ = world
    forks.fail_next = True
    manager.observe("ADDED", kube.add("ui-f"))
    await eventually(lambda: kube.ready("ui-f") == ("False", "SpawnFailed"))
    assert "no more processes" in kube.objects["ui-f"]["status"]["conditions"][1]["message"]
    await eventually(lambda: kube.ready("ui-f") == ("True", "InstanceServing"))


async def test_an_idle_instance_stops_and_a_request_starts_it_again(world: World) -> None:
    manager, kube, forks, _ = world
    manager.observe("ADDED", kube.add("ui-i", idle=1))
    await eventually(lambda: kube.ready("ui-i") == ("True", "InstanceServing"))
    await eventually(lambda: kube.ready("ui-i") == ("False", "IdleStopped"), seconds=3)
    assert forks.running == {}
    route = manager.routes.get("ui-i")
    assert route is not None and not route.running
    await asyncio.sleep(0.2)
    assert len(forks.spawned) == 1, "stays stopped until asked"
    manager.observe("MODIFIED", kube.annotate("ui-i", "now"))
    await eventually(lambda: kube.ready("ui-i") == ("True", "InstanceServing"))
    assert len(forks.spawned) == 2


async def test_activity_postpones_the_idle_stop_and_is_written(world: World) -> None:
    manager, kube, _, _ = world
    manager.observe("ADDED", kube.add("ui-busy", idle=1))
    await eventually(lambda: kube.ready("ui-busy") == ("True", "InstanceServing"))
    first = kube.objects["ui-busy"]["status"]["lastActivityAt"]
    route = manager.routes.get("ui-busy")
    assert route is not None
    for _ in range(8):
        await asyncio.sleep(0.25)
        route.touch()
    assert kube.ready("ui-busy") == ("True", "InstanceServing")
    await eventually(lambda: kube.objects["ui-busy"]["status"]["lastActivityAt"] > first)


async def test_a_deleted_instance_is_stopped_and_forgotten(world: World) -> None:
    manager, kube, forks, _ = world
    obj = kube.add("ui-d")
    manager.observe("ADDED", obj)
    await eventually(lambda: kube.ready("ui-d") == ("True", "InstanceServing"))
    manager.observe("DELETED", obj)
    await eventually(lambda: "ui-d" not in manager.instances and forks.running == {})
    assert manager.routes.get("ui-d") is None


async def test_an_older_event_does_not_undo_a_newer_object(world: World) -> None:
    manager, kube, _, _ = world
    old = kube.add("ui-o")
    manager.observe("ADDED", old)
    await eventually(lambda: kube.ready("ui-o") == ("True", "InstanceServing"))
    manager.observe("MODIFIED", old)
    assert manager.instances["ui-o"].obj.spec.uid == 1101


async def test_an_instance_whose_users_groups_changed_restarts_between_requests(world: World) -> None:
    manager, kube, forks, _ = world
    manager.observe("ADDED", kube.add("ui-g"))
    await eventually(lambda: kube.ready("ui-g") == ("True", "InstanceServing"))
    route = manager.routes.get("ui-g")
    assert route is not None
    route.in_flight = 1  # a request is being served: the restart waits for it
    manager.refresh_groups({"alice"})
    await asyncio.sleep(0.3)
    assert len(forks.spawned) == 1
    route.in_flight = 0
    await eventually(lambda: len(forks.spawned) == 2, seconds=3)
    await eventually(lambda: kube.ready("ui-g") == ("True", "InstanceServing"))
    manager.refresh_groups({"bob"})  # someone else's groups: nothing to do here
    await asyncio.sleep(0.3)
    assert len(forks.spawned) == 2

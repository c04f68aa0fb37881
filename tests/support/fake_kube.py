"""An in-memory stand-in for ucim.common.kube.Kube, for unit tests only.

Integration tests use the real apiserver; this fake keeps the gateway's unit
tests free of processes. It stores manifests as the apiserver would return them.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ucim.common.conditions import ConditionUpdate, updated_condition
from ucim.common.kube import ConflictError, NotFoundError
from ucim.common.resources import Condition, UserInstance, _Resource
from ucim.common.times import now_utc, rfc3339

R = TypeVar("R", bound=_Resource)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _merge_conditions(target: dict[str, Any], applied: list[dict[str, Any]]) -> None:
    """Server-side apply of a list keyed by type: the applied entries replace theirs, the others stay."""
    by_type = {c["type"]: c for c in target.get("conditions") or []}
    by_type.update({c["type"]: copy.deepcopy(c) for c in applied})
    target["conditions"] = list(by_type.values())


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._versions = itertools.count(1)
        # Notified on every write, for wait_for (the real one watches).
        self._changed = asyncio.Condition()

    async def _written(self, obj: dict[str, Any] | None) -> None:
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(next(self._versions))
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, kind: type[R], namespace: str, name: str, predicate: Callable[[R | None], bool]
    ) -> R | None:
        async with self._changed:
            while True:
                current = await self.get(kind, namespace, name)
                if predicate(current):
                    return current
                await self._changed.wait()

    async def apply_condition(
        self,
        kind: type[R],
        namespace: str,
        name: str,
        conditions: Sequence[Condition],
        condition: ConditionUpdate,
        *,
        observed_generation: int | None,
        now: datetime | None = None,
    ) -> R:
        return await self.apply_conditions(
            kind, namespace, name, conditions, [condition], observed_generation=observed_generation, now=now
        )

    async def apply_conditions(
        self,
        kind: type[R],
        namespace: str,
        name: str,
        conditions: Sequence[Condition],
        updates: Sequence[ConditionUpdate],
        *,
        observed_generation: int | None,
        now: datetime | None = None,
    ) -> R:
        written = [updated_condition(conditions, u, observed_generation=observed_generation, now=now) for u in updates]
        return await self.apply_status(
            kind, namespace, name, {"conditions": [c.to_dict() for c in written]}, field_manager=""
        )

    async def list(self, kind: type[R], namespace: str, label_selector: str | None = None) -> list[R]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",")) if label_selector else {}
        return [
            kind.from_obj(obj)
            for (plural, ns, _), obj in self.objects.items()
            if plural == kind.PLURAL
            and ns == namespace
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def apply_status(
        self, kind: type[R], namespace: str, name: str, status: dict[str, Any], *, field_manager: str
    ) -> R:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFoundError(name)
        target = obj.setdefault("status", {})
        _merge(target, {k: v for k, v in status.items() if k != "conditions"})
        if "conditions" in status:
            _merge_conditions(target, status["conditions"])
        await self._written(obj)
        return kind.from_obj(obj)

    def _key(self, kind: type[_Resource], namespace: str, name: str) -> tuple[str, str, str]:
        return (kind.PLURAL, namespace, name)

    async def create(self, obj: R, namespace: str) -> R:
        key = self._key(type(obj), namespace, obj.metadata.name)
        if key in self.objects:
            raise ConflictError("already exists")
        manifest = obj.to_manifest()
        manifest["metadata"].update(namespace=namespace, uid=f"uid-{obj.metadata.name}", generation=1)
        self.objects[key] = manifest
        await self._written(manifest)
        return type(obj).from_obj(manifest)

    async def get(self, kind: type[R], namespace: str, name: str) -> R | None:
        obj = self.objects.get(self._key(kind, namespace, name))
        return kind.from_obj(obj) if obj is not None else None

    async def patch(self, kind: type[R], namespace: str, name: str, body: dict[str, Any]) -> R:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFoundError(name)
        # A resourceVersion in the patch is a precondition, as the apiserver makes it.
        version = (body.get("metadata") or {}).get("resourceVersion")
        if version is not None and version != obj["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified")
        _merge(obj, {k: v for k, v in body.items() if k != "status"})
        await self._written(obj)
        return kind.from_obj(obj)

    async def patch_status(
        self, kind: type[R], namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> R:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFoundError(name)
        if resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified")
        _merge(obj.setdefault("status", {}), status)
        await self._written(obj)
        return kind.from_obj(obj)

    async def delete(self, kind: type[R], namespace: str, name: str) -> None:
        self.objects.pop(self._key(kind, namespace, name), None)
        await self._written(None)

    async def close(self) -> None:
        pass


async def play_instance_bridge(kube: FakeKube, namespace: str, name: str, endpoint: str = "http://bridge/x") -> None:
    """What the bridge does for a UserInstance: once it exists, it serves (Ready, with an endpoint)."""
    await kube.wait_for(UserInstance, namespace, name, lambda instance: instance is not None)
    ready = {"type": "Ready", "status": "True", "reason": "InstanceServing", "message": "serving",
             "lastTransitionTime": rfc3339(now_utc())}  # fmt: skip
    await kube.patch_status(UserInstance, namespace, name, {"conditions": [ready], "endpoint": endpoint})

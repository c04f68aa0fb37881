"""An in-memory stand-in for ucim.common.kube.Kube, for unit tests only.

Integration tests use the real apiserver; this fake keeps the gateway's unit
tests free of processes. It stores manifests as the apiserver would return them.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, TypeVar

from ucim.common.kube import ConflictError, NotFoundError
from ucim.common.resources import _Resource

R = TypeVar("R", bound=_Resource)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._versions = itertools.count(1)

    def _key(self, kind: type[_Resource], namespace: str, name: str) -> tuple[str, str, str]:
        return (kind.PLURAL, namespace, name)

    async def create(self, obj: R, namespace: str) -> R:
        key = self._key(type(obj), namespace, obj.metadata.name)
        if key in self.objects:
            raise ConflictError("already exists")
        manifest = obj.to_manifest()
        manifest["metadata"].update(namespace=namespace, uid=f"uid-{obj.metadata.name}", generation=1)
        manifest["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = manifest
        return type(obj).from_obj(manifest)

    async def get(self, kind: type[R], namespace: str, name: str) -> R | None:
        obj = self.objects.get(self._key(kind, namespace, name))
        return kind.from_obj(obj) if obj is not None else None

    async def patch(self, kind: type[R], namespace: str, name: str, body: dict[str, Any]) -> R:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFoundError(name)
        _merge(obj, {k: v for k, v in body.items() if k != "status"})
        return kind.from_obj(obj)

    async def patch_status(self, kind: type[R], namespace: str, name: str, status: dict[str, Any]) -> R:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFoundError(name)
        _merge(obj.setdefault("status", {}), status)
        return kind.from_obj(obj)

    async def delete(self, kind: type[R], namespace: str, name: str) -> None:
        self.objects.pop(self._key(kind, namespace, name), None)

    async def close(self) -> None:
        pass

"""The one place that talks to the Kubernetes API (kubernetes_asyncio).

Components get a ``Kube`` and deal only in the typed models of
``ucim.common.resources``; nobody else imports the client library, so the
choice of client stays a detail of this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ucim.common.resources import _Resource

R = TypeVar("R", bound=_Resource)

# The client guesses a patch's content type from the body; a dict must be a merge patch.
_AS_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
# The client sets no timeout of its own: over a connection that died silently (a host gone, a
# dropped flow) a call would wait forever. A call fails after this long instead...
REQUEST_TIMEOUT_SECONDS: Final = 30.0
# ...and a watch this long after the end the apiserver was asked for (a quiet watch may
# rightly carry nothing until then).
WATCH_GRACE_SECONDS: Final = 30.0


class ConflictError(Exception):
    """The object already exists, or changed since it was read."""


class NotFoundError(Exception):
    """The object does not exist."""


class InvalidError(Exception):
    """The apiserver rejected the object; the message is its readable reason."""


def _translate(error: ApiException) -> Exception:
    if error.status == 404:
        return NotFoundError(error.reason)
    if error.status == 409:
        return ConflictError(error.reason)
    if error.status == 422:
        return InvalidError(_api_message(error))
    return error


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or b"").get("message", error.reason))
    except (TypeError, ValueError):
        return str(error.reason)


class Kube:
    """Typed CRUD, status patches and watches on ucim's custom resources."""

    def __init__(
        self,
        api_client: client.ApiClient,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        watch_grace: float = WATCH_GRACE_SECONDS,
    ) -> None:
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._request_timeout = request_timeout
        self._watch_grace = watch_grace

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> Self:
        """In a pod, the service account; elsewhere the kubeconfig (or $KUBECONFIG)."""
        configuration = client.Configuration()
        in_cluster = kubeconfig is None and "KUBECONFIG" not in os.environ and "KUBERNETES_SERVICE_HOST" in os.environ
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api_client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    def _where(self, kind: type[R], namespace: str) -> dict[str, Any]:
        """A call's target, and how long it may take."""
        return {
            "group": kind.GROUP,
            "version": kind.VERSION,
            "namespace": namespace,
            "plural": kind.PLURAL,
            "_request_timeout": self._request_timeout,
        }

    async def create(self, obj: R, namespace: str) -> R:
        try:
            created = await self._custom.create_namespaced_custom_object(
                **self._where(type(obj), namespace), body=obj.to_manifest()
            )
        except ApiException as error:
            raise _translate(error) from error
        return type(obj).from_obj(created)

    async def get(self, kind: type[R], namespace: str, name: str) -> R | None:
        try:
            obj = await self._custom.get_namespaced_custom_object(**self._where(kind, namespace), name=name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _translate(error) from error
        return kind.from_obj(obj)

    async def list(self, kind: type[R], namespace: str, label_selector: str | None = None) -> list[R]:
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        result = await self._custom.list_namespaced_custom_object(**self._where(kind, namespace), **kwargs)
        return [kind.from_obj(item) for item in result["items"]]

    async def patch(self, kind: type[R], namespace: str, name: str, body: dict[str, Any]) -> R:
        """A JSON merge patch of the main resource (spec, metadata)."""
        try:
            obj = await self._custom.patch_namespaced_custom_object(
                **self._where(kind, namespace), name=name, body=body, **_AS_MERGE_PATCH
            )
        except ApiException as error:
            raise _translate(error) from error
        return kind.from_obj(obj)

    async def patch_status(self, kind: type[R], namespace: str, name: str, status: dict[str, Any]) -> R:
        """A JSON merge patch of the status subresource; ``status`` is the status' own fields."""
        try:
            obj = await self._custom.patch_namespaced_custom_object_status(
                **self._where(kind, namespace), name=name, body={"status": status}, **_AS_MERGE_PATCH
            )
        except ApiException as error:
            raise _translate(error) from error
        return kind.from_obj(obj)

    async def delete(self, kind: type[R], namespace: str, name: str) -> None:
        try:
            await self._custom.delete_namespaced_custom_object(**self._where(kind, namespace), name=name)
        except ApiException as error:
            if error.status != 404:
                raise _translate(error) from error

    async def watch(self, kind: type[R], namespace: str, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, R]]:
        """Events (ADDED, MODIFIED, DELETED) on every object of a kind; ends after the timeout.

        Raises TimeoutError when the apiserver has not ended it ``watch_grace`` seconds after that.
        """
        stream = watch.Watch()
        where = self._where(kind, namespace) | {"_request_timeout": timeout_seconds + self._watch_grace}
        async with stream.stream(
            self._custom.list_namespaced_custom_object, **where, timeout_seconds=timeout_seconds
        ) as events:
            async for event in events:
                yield event["type"], kind.from_obj(event["object"])

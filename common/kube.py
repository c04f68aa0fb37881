"""The one place that talks to the Kubernetes API (kubernetes_asyncio).

Components get a ``Kube`` and deal only in the typed models of
``ucim.common.resources``; nobody else imports the client library, so the
choice of client stays a detail of this module.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from ucim.common.conditions import ConditionUpdate, updated_condition
from ucim.common.ownership import FIELD_MANAGERS, Component, OwnershipError, check_writer
from ucim.common.resources import Condition, _Resource

R = TypeVar("R", bound=_Resource)

# The client guesses a patch's content type from the body; a dict must be a merge patch.
_AS_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
# Server-side apply (JSON is YAML): the apiserver merges lists keyed by their map keys
# (conditions by type) and records which field manager owns each entry.
_AS_APPLY_PATCH: dict[str, Any] = {"_content_type": "application/apply-patch+yaml", "force": True}
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


class UnavailableError(Exception):
    """The apiserver could not be reached (connection refused, reset or dropped) or cannot serve now: try again."""


def _unavailable(error: aiohttp.ClientError) -> UnavailableError:
    return UnavailableError(f"the Kubernetes API cannot be reached: {error}")


class GoneError(Exception):
    """A watch asked to resume from a resourceVersion the apiserver no longer keeps (410): list again."""


def _translate(error: ApiException) -> Exception:
    if error.status == 404:
        return NotFoundError(error.reason)
    if error.status == 409:
        return ConflictError(error.reason)
    if error.status == 410:
        return GoneError(error.reason)
    if error.status in (400, 422):
        # A body the apiserver cannot take (422: invalid; 400: e.g. a field of the wrong type): its words say why.
        return InvalidError(_api_message(error))
    if error.status == 429 or error.status >= 500:
        # Not now: a starting apiserver ("before all known HTTP paths have been installed"), etcd away, throttling.
        return UnavailableError(f"the Kubernetes API cannot serve now ({error.status}): {_api_message(error)}")
    return error


@contextmanager
def _api_errors() -> Iterator[None]:
    """The client's errors as ucim's: NotFound, Conflict, Gone, Invalid or Unavailable (try again)."""
    try:
        yield
    except ApiException as error:
        raise _translate(error) from error
    except aiohttp.ClientError as error:
        raise _unavailable(error) from error


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


@dataclass(frozen=True)
class WatchEvent(Generic[R]):
    """One event of a watch; a BOOKMARK carries only the resourceVersion to resume from."""

    type: EventType
    obj: R | None
    resource_version: str


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or b"").get("message", error.reason))
    except (TypeError, ValueError):
        return str(error.reason)


def _watch_event(kind: type[R], event: dict[str, Any]) -> WatchEvent[R]:
    """One line of a watch; an ERROR event (410 Gone: the version is too old) is raised."""
    obj = event["object"]
    if event["type"] == "ERROR":
        raise _translate(ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"))
    version = str(obj["metadata"]["resourceVersion"])
    if event["type"] == "BOOKMARK":
        return WatchEvent("BOOKMARK", None, version)
    return WatchEvent(event["type"], kind.from_obj(obj), version)


class Kube:
    """Typed CRUD, status patches and watches on ucim's custom resources."""

    def __init__(
        self,
        api_client: client.ApiClient,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        watch_grace: float = WATCH_GRACE_SECONDS,
        component: Component | None = None,
    ) -> None:
        self._api_client = api_client
        # Whose writes these are: a status field the component does not own is refused (ucim.common.ownership).
        self._component = component
        self._custom = client.CustomObjectsApi(api_client)
        self._request_timeout = request_timeout
        self._watch_grace = watch_grace

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, component: Component | None = None) -> Self:
        """In a pod, the service account; elsewhere the kubeconfig (or $KUBECONFIG)."""
        configuration = client.Configuration()
        in_cluster = kubeconfig is None and "KUBECONFIG" not in os.environ and "KUBERNETES_SERVICE_HOST" in os.environ
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(client.ApiClient(configuration), component=component)

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
        with _api_errors():
            created = await self._custom.create_namespaced_custom_object(
                **self._where(type(obj), namespace), body=obj.to_manifest()
            )
        return type(obj).from_obj(created)

    async def get(self, kind: type[R], namespace: str, name: str) -> R | None:
        try:
            with _api_errors():
                obj = await self._custom.get_namespaced_custom_object(**self._where(kind, namespace), name=name)
        except NotFoundError:
            return None
        return kind.from_obj(obj)

    async def list(self, kind: type[R], namespace: str, label_selector: str | None = None) -> list[R]:
        return (await self.list_versioned(kind, namespace, label_selector))[0]

    async def list_versioned(
        self, kind: type[R], namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[builtins.list[R], str]:
        """The objects (filtered by the apiserver) and the list's resourceVersion, where a watch resumes."""
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        with _api_errors():
            result = await self._custom.list_namespaced_custom_object(**self._where(kind, namespace), **kwargs)
        return [kind.from_obj(item) for item in result["items"]], str(result["metadata"]["resourceVersion"])

    async def patch(self, kind: type[R], namespace: str, name: str, body: dict[str, Any]) -> R:
        """A JSON merge patch of the main resource (spec, metadata)."""
        with _api_errors():
            obj = await self._custom.patch_namespaced_custom_object(
                **self._where(kind, namespace), name=name, body=body, **_AS_MERGE_PATCH
            )
        return kind.from_obj(obj)

    async def patch_status(
        self, kind: type[R], namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> R:
        """A JSON merge patch of the status subresource; ``status`` is the status' own fields.

        With ``resource_version`` the patch applies only to that version of the object
        (ConflictError otherwise): the way to replace a list another component may have
        changed since it was read.
        """
        self._check_writer(kind, status)
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        with _api_errors():
            obj = await self._custom.patch_namespaced_custom_object_status(
                **self._where(kind, namespace), name=name, body=body, **_AS_MERGE_PATCH
            )
        return kind.from_obj(obj)

    async def apply_status(
        self, kind: type[R], namespace: str, name: str, status: dict[str, Any], *, field_manager: str
    ) -> R:
        """Server-side apply of the status fields ``field_manager`` owns; the other managers' stay.

        For a list with map keys, such as ``conditions`` (keyed by type), only the entries
        sent are this manager's: two components can each own one condition of the same
        object without reading it first and without overwriting each other.
        """
        self._check_writer(kind, status)
        body = {"apiVersion": kind.api_version(), "kind": kind.KIND, "metadata": {"name": name}, "status": status}
        with _api_errors():
            obj = await self._custom.patch_namespaced_custom_object_status(
                **self._where(kind, namespace), name=name, body=body, field_manager=field_manager, **_AS_APPLY_PATCH
            )
        return kind.from_obj(obj)

    def _check_writer(self, kind: type[R], status: dict[str, Any]) -> None:
        if self._component is not None:
            check_writer(self._component, kind.KIND, status)

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
        """Apply this component's conditions (its field manager); ``conditions`` are the ones read.

        Every condition the component owns on the object goes in each apply: server-side apply
        removes an entry its manager applied before and leaves out now. ``lastTransitionTime``
        moves only if a condition's status flips from what was read.
        """
        if self._component is None:
            raise OwnershipError("a Kube without a component owns no condition")
        written = [updated_condition(conditions, u, observed_generation=observed_generation, now=now) for u in updates]
        return await self.apply_status(
            kind,
            namespace,
            name,
            {"conditions": [c.to_dict() for c in written]},
            field_manager=FIELD_MANAGERS[self._component],
        )

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
        """Apply the one condition this component owns on the object (see apply_conditions)."""
        return await self.apply_conditions(
            kind, namespace, name, conditions, [condition], observed_generation=observed_generation, now=now
        )

    async def delete(self, kind: type[R], namespace: str, name: str) -> None:
        with suppress(NotFoundError), _api_errors():
            await self._custom.delete_namespaced_custom_object(**self._where(kind, namespace), name=name)

    async def watch(
        self,
        kind: type[R],
        namespace: str,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent[R]]:
        """Events on the objects of a kind (those the selectors pick), from ``resource_version`` on.

        Without a version the apiserver starts with an ADDED event per existing object.
        Bookmarks are asked for, so a quiet watch still learns where to resume. Ends after
        the timeout; raises GoneError when ``resource_version`` is too old, and TimeoutError
        when the apiserver has not ended the watch ``watch_grace`` seconds after its timeout.
        """
        where = self._where(kind, namespace) | {"_request_timeout": timeout_seconds + self._watch_grace}
        options: dict[str, Any] = {"timeout_seconds": timeout_seconds, "allow_watch_bookmarks": True}
        for key, value in (
            ("resource_version", resource_version),
            ("label_selector", label_selector),
            ("field_selector", field_selector),
        ):
            if value:
                options[key] = value
        # The stream is read here, line by line, rather than through the client's Watch helper: that
        # builds a new ApiClient (an SSL context and an HTTP session, ~34 ms of CPU, and leaves the
        # session open) for every watch, and a watch of one object is made for every wait_for.
        with _api_errors():
            response = await self._custom.list_namespaced_custom_object(
                **where, **options, watch=True, _preload_content=False
            )
        try:
            with _api_errors():
                async for line in response.content:
                    if line.strip():
                        yield _watch_event(kind, json.loads(line))
        finally:
            response.release()

    async def wait_for(
        self, kind: type[R], namespace: str, name: str, predicate: Callable[[R | None], bool]
    ) -> R | None:
        """The object once ``predicate`` holds for it (None: it does not exist); callers bound the wait.

        One read, then a watch of that one object (field selector on its name) from the
        version read: a change is seen the moment the apiserver has it, and nothing is
        read on a timer. The predicate may raise to end the wait early (a refusal).
        """
        field_selector = f"metadata.name={name}"
        while True:
            # A list of that one name gives the object (if any) and the version to watch from, in one call.
            found, version = await self.list_versioned(kind, namespace, field_selector=field_selector)
            current = found[0] if found else None
            if predicate(current):
                return current
            try:
                while True:
                    async for event in self.watch(
                        kind, namespace, resource_version=version, field_selector=field_selector
                    ):
                        version = event.resource_version
                        if event.type == "BOOKMARK":
                            continue
                        current = None if event.type == "DELETED" else event.obj
                        if predicate(current):
                            return current
            except GoneError:
                continue  # the version is too old to resume from: read the object again

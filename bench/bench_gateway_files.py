#!/usr/bin/env python3
"""What the gateway adds to a file call, and what a large transfer costs it in memory.

A stand-in instance behind a stand-in bridge ingress (one aiohttp server on loopback:
``/instances/<name>/...`` with the bearer token) answers ``files/browse`` with a page of
100 entries (about 20 kB of JSON, as the real instance does); the real gateway
(``init_app``) serves on loopback in front of it. Measured, sequentially:

* **direct**: ``POST <ingress>/instances/<name>/files/browse``, as if Core could call the
  instance itself;
* **gateway, cached**: ``POST /ucloud/<p>/files/browse`` with Core's JWT and the
  UCloud-Username header: JWT check, the endpoint from memory (in production the watched
  UserInstances, here a Kubernetes stand-in), the streamed forward;
* **gateway, uncached** (``--real-kube``, needs the local platform): the same without the
  watch, so each call also GETs the UserInstance from the real
  kube-apiserver;

and then the resident memory of this process while ``--transfer-mib`` MiB are uploaded
(in CHUNKED chunks of 32 MB) and downloaded (one response) through the gateway.

    python3 -m bench.bench_gateway_files                       # 2000 rounds, 2 GiB transfers
    python3 -m bench.bench_gateway_files --real-kube --json out.json

The table goes to stdout, followed by the JSON document (also written to --json if given).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bench.report import bench_parser, run_bench
from tests.support.fake_kube import FakeKube
from ucim.common import instance_api as api
from ucim.common.kube import Kube
from ucim.common.protocol import encode_username
from ucim.common.resources import UserInstance, cluster_labels
from ucim.common.transfer_contract import MAX_CHUNK_BYTES
from ucim.gateway.app import init_app
from ucim.gateway.settings import GatewaySettings
from ucim.testing import CoreStandIn
from ucim.testing.memory import ResidentPeaks
from ucim.testing.stack import free_port, read_platform_env

TOKEN = "bench-ingress-token-0123456789"  # noqa: S105 - a loopback bench's own token
PROVIDER = "ucim"
USER = "alice"
CHUNK = 1 << 16
MIB = 1 << 20
READY = {"type": "Ready", "status": "True", "reason": "InstanceServing", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip


def browse_page() -> bytes:
    status = {"type": "FILE", "sizeInBytes": 4096, "modifiedAt": 1767225600000, "accessedAt": 1767225600000,
              "unixMode": 0o644, "unixOwner": 1101, "unixGroup": 1101, "icon": None}  # fmt: skip
    items = [{"id": f"/42/data/file-{i:06d}.dat", "status": status, "createdAt": 1767225600000} for i in range(100)]
    return json.dumps({"items": items, "itemsPerPage": 100, "next": "file-000099.dat"}).encode()


def ingress_app(page: bytes, download_bytes: int) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"why": "token"}, status=401)
        path = "/" + request.match_info["tail"]
        async for _ in request.content.iter_chunked(CHUNK):
            pass  # the instance writes to disk; here the bytes are dropped
        if path == api.DOWNLOAD_FILE_PATH:
            response = web.StreamResponse()
            response.content_length = download_bytes
            await response.prepare(request)
            block = b"x" * CHUNK
            for start in range(0, download_bytes, CHUNK):
                await response.write(block[: min(CHUNK, download_bytes - start)])
            await response.write_eof()
            return response
        if path == api.UPLOAD_CHUNK_PATH:
            return web.json_response({"offset": 0})
        return web.Response(body=page, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/instances/{name}/{tail:.*}", handle)
    return app


async def serve(app: web.Application, stack: AsyncExitStack) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
    }


async def timed(rounds: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(50):
        await call()  # warm: connections, caches, the JIT-less interpreter's own caches
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def peak_rss_during(work: Awaitable[None]) -> tuple[float, float, float]:
    """(RSS before, peak RSS while ``work`` runs, in MiB; seconds it took)."""
    async with ResidentPeaks({"self": "self"}) as peaks:
        start = time.perf_counter()
        await work
        seconds = time.perf_counter() - start
    return peaks.before["self"] / MIB, peaks.peak["self"] / MIB, seconds


async def gateway_for(core: CoreStandIn, kube: Any, namespace: str, stack: AsyncExitStack) -> str:
    settings = GatewaySettings(
        core_public_key=SecretStr(core.keys.public_key_b64()),
        provider_id=PROVIDER,
        namespace=namespace,
        ingress_token=SecretStr(TOKEN),
    )
    return await serve(init_app(settings, kube=typing.cast(Kube, kube)), stack)


async def place_instance(kube: Any, namespace: str, name: str, endpoint: str) -> None:
    manifest = {
        "metadata": {"name": name, "labels": cluster_labels("local")},
        "spec": {"ucloudUsername": USER, "cluster": "local"},
    }
    await kube.create(UserInstance.from_obj(manifest), namespace)
    await kube.patch_status(UserInstance, namespace, name, {"conditions": [READY], "endpoint": endpoint})


async def run(rounds: int, transfer_mib: int, real_kube: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": rounds, "cases": {}}
    name = UserInstance.name_for(USER, "local")
    async with AsyncExitStack() as stack:
        ingress = await serve(ingress_app(browse_page(), transfer_mib << 20), stack)
        endpoint = f"{ingress}/instances/{name}"
        fake = FakeKube()
        await place_instance(fake, "ucim", name, endpoint)
        core = CoreStandIn(PROVIDER, "unused")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        core_headers = {"UCloud-Username": encode_username(USER), "Content-Type": "application/json"}
        body = json.dumps({"resolvedCollection": {"id": "42"}, "Browse": {"flags": {"path": "/42/data"}}}).encode()

        async def call(url: str, headers: dict[str, str]) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()

        direct_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        samples = await timed(rounds, lambda: call(endpoint + api.FILES_BROWSE_PATH, direct_headers))
        results["cases"]["direct"] = summary(samples)

        cached = await gateway_for(core, fake, "ucim", stack)
        # A fresh JWT per call, as Core sends; minted outside the timing (Core's cost, not ours).
        tokens = [core.mint_service_token() for _ in range(rounds + 50)]

        def via(gateway: str) -> Callable[[], Awaitable[None]]:
            token_iter = iter(tokens * 2)
            url = f"{gateway}/ucloud/{PROVIDER}/files/browse"
            return lambda: call(url, {**core_headers, "Authorization": f"Bearer {next(token_iter)}"})

        results["cases"]["gateway_cached"] = summary(await timed(rounds, via(cached)))

        if real_kube:
            env = read_platform_env()
            kube = await Kube.connect(env["KUBECONFIG"])
            stack.push_async_callback(kube.close)
            namespace, real_name = "default", f"bench-{uuid.uuid4().hex[:8]}"
            await place_instance(kube, namespace, real_name, endpoint)
            stack.push_async_callback(kube.delete, UserInstance, namespace, real_name)
            uncached = await gateway_for(core, _RenamingKube(kube, name, real_name), namespace, stack)
            results["cases"]["gateway_uncached_real_kube"] = summary(await timed(rounds, via(uncached)))

        base = results["cases"]["direct"]["p50_ms"]
        for case in results["cases"].values():
            case["added_p50_ms"] = round(case["p50_ms"] - base, 3)

        results["transfer_mib"] = transfer_mib
        results["memory"] = await transfers(session, cached, transfer_mib)
    return results


class _RenamingKube:
    """The real Kube, with the user's instance found under the bench's own object name."""

    def __init__(self, kube: Kube, name: str, real_name: str) -> None:
        self._kube, self._name, self._real = kube, name, real_name

    async def get(self, kind: Any, namespace: str, name: str) -> Any:
        return await self._kube.get(kind, namespace, self._real if name == self._name else name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._kube, attribute)


async def transfers(session: aiohttp.ClientSession, gateway: str, mib: int) -> dict[str, Any]:
    total = mib << 20
    hint = encode_username(USER)

    async def chunk_body(size: int) -> AsyncIterator[bytes]:
        block = b"u" * CHUNK
        for start in range(0, size, CHUNK):
            yield block[: min(CHUNK, size - start)]

    async def upload() -> None:
        for offset in range(0, total, MAX_CHUNK_BYTES):
            size = min(MAX_CHUNK_BYTES, total - offset)
            headers = {
                api.CHUNKED_TOKEN_HEADER: "t",
                api.CHUNKED_OFFSET_HEADER: str(offset),
                api.CHUNKED_TOTAL_SIZE_HEADER: str(total),
                "UCloud-Username": hint,
                "Content-Length": str(size),
            }
            async with session.post(f"{gateway}/ucloud/{PROVIDER}/upload", data=chunk_body(size), headers=headers) as r:
                assert r.status == 200, await r.text()

    async def download() -> None:
        received = 0
        url = f"{gateway}/ucloud/{PROVIDER}/download"
        async with session.get(url, params={"token": "t", "usernameHint": hint}) as response:
            assert response.status == 200, await response.text()
            async for piece in response.content.iter_chunked(CHUNK):
                received += len(piece)
        assert received == total, (received, total)

    result = {}
    for label, work in (("upload", upload()), ("download", download())):
        before, peak, seconds = await peak_rss_during(work)
        result[label] = {
            "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak, 1),
            "growth_mib": round(peak - before, 1),
            "mib_per_s": round(mib / seconds, 1),
        }
    return result


def table(document: dict[str, Any]) -> str:
    lines = [f"{'case':<30} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'added p50':>10}"]
    for case, numbers in document["cases"].items():
        p50, p90, p99, added = (numbers[k] for k in ("p50_ms", "p90_ms", "p99_ms", "added_p50_ms"))
        lines.append(f"{case:<30} {p50:>8} {p90:>8} {p99:>8} {added:>10}")
    for label, numbers in document["memory"].items():
        lines.append(
            f"{label} of {document['transfer_mib']} MiB: RSS {numbers['rss_before_mib']} -> peak "
            f"{numbers['rss_peak_mib']} MiB (+{numbers['growth_mib']}), {numbers['mib_per_s']} MiB/s"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--transfer-mib", type=int, default=2048)
    parser.add_argument("--real-kube", action="store_true", help="also measure without the watch, on the platform")
    opts = parser.parse_args(argv)
    return run_bench(
        "gateway_files", opts, lambda: asyncio.run(run(opts.rounds, opts.transfer_mib, opts.real_kube)), table
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

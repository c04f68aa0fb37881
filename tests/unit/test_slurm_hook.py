"""The Slurm hook's listener: what it takes, what it refuses, what it drops (no munged: a stand-in decoder)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import REGISTRY

from ucim.slurm_bridge.munge import Credential, CredentialError
from ucim.slurm_bridge.slurm_hook import MAX_DATAGRAM, QUEUE_LIMIT, HookListener, parse_payload, sender_uids

SLURM_UID = 64030


class _Munged:
    """Stands in for munged: ``MUNGE:<uid>:<payload>`` decodes to that; ``MUNGE:bad`` is refused."""

    def decode(self, credential: bytes) -> Credential:
        _, uid, payload = credential.split(b":", 2) if credential.count(b":") >= 2 else (b"", b"", b"")
        if not uid.isdigit():
            raise CredentialError("Invalid credential")
        return Credential(payload, int(uid), int(uid))


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("ucim_slurm_hook_notifications_total", {"result": result}) or 0.0


def _listener(seen: list[tuple[int, str]]) -> HookListener:
    return HookListener(_Munged(), frozenset({SLURM_UID}), lambda job, context: seen.append((job, context)))


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b"ucim-job 42 prolog_slurmctld", (42, "prolog_slurmctld")),
        (b"ucim-job 42 epilog_slurmctld\n", (42, "epilog_slurmctld")),
        (b"ucim-job 42", (42, "")),  # a site's own hook that calls ours without SLURM_SCRIPT_CONTEXT
        (b"ucim-job 42 ;rm", (42, "")),  # a context that is not a word is not kept
        (b"ucim-job -1 prolog_slurmctld", None),
        (b"ucim-job 1234567890123 x", None),
        (b"ucim-job", None),
        (b"other 42", None),
        (b"ucim-job 42 a b", None),
        (b"\xff\xfe", None),
    ],
)
def test_payloads(payload: bytes, parsed: tuple[int, str] | None) -> None:
    assert parse_payload(payload) == parsed


def test_what_cannot_be_a_credential_is_dropped_on_arrival() -> None:
    listener, before = _listener([]), _count("garbage")
    listener.datagram_received(b"GET / HTTP/1.1\r\n", ("10.0.0.9", 1))
    listener.datagram_received(b"MUNGE:" + b"A" * MAX_DATAGRAM, ("10.0.0.9", 1))
    assert listener.queue.empty()
    assert _count("garbage") - before == 2


def test_a_flood_is_dropped_past_the_queue_limit() -> None:
    listener, before = _listener([]), _count("dropped")
    for _ in range(QUEUE_LIMIT + 5):
        listener.datagram_received(b"MUNGE:1:x", ("10.0.0.9", 1))
    assert listener.queue.qsize() == QUEUE_LIMIT
    assert _count("dropped") - before == 5


def test_credentials_are_checked_for_munged_and_the_sender() -> None:
    listener = _listener([])
    refused, garbage, accepted = _count("refused"), _count("garbage"), _count("accepted")
    assert listener.check(b"MUNGE:bad") is None  # munged refused it (replayed, expired, another key)
    assert listener.check(b"MUNGE:1101:ucim-job 42 prolog_slurmctld") is None  # alice, not SlurmUser
    assert listener.check(f"MUNGE:{SLURM_UID}:hello".encode()) is None  # SlurmUser's, but not ours
    assert listener.check(f"MUNGE:{SLURM_UID}:ucim-job 42 epilog_slurmctld\n".encode()) == (42, "epilog_slurmctld")
    assert (_count("refused") - refused, _count("garbage") - garbage, _count("accepted") - accepted) == (2, 1, 1)


def test_senders_are_users_or_uids() -> None:
    assert sender_uids(["root", "64030"]) == frozenset({0, 64030})
    with pytest.raises(KeyError):
        sender_uids(["no-such-user-here"])


async def test_datagrams_on_the_socket_reach_the_monitor_and_garbage_does_not() -> None:
    seen: list[tuple[int, str]] = []
    listener = _listener(seen)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    task = asyncio.create_task(listener.run())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in (b"\x00garbage", b"MUNGE:bad", f"MUNGE:{SLURM_UID}:ucim-job 7 prolog_slurmctld".encode()):
            sender.sendto(datagram, ("127.0.0.1", port))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [(7, "prolog_slurmctld")]
    assert transport.is_closing()  # the listener closes its socket when it ends

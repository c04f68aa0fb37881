"""The bridge's end of the Slurm hook: UDP datagrams that say "Slurm job N changed".

slurmctld runs ``deploy/controller/ucim-slurm-hook`` when a job starts and ends (PrologSlurmctld,
EpilogSlurmctld), possibly on another host. It sends one datagram: a MUNGE credential whose payload
is ``ucim-job <id> <context>``. Here:

1. a datagram that cannot be a credential (too long, no ``MUNGE:`` prefix) is dropped on arrival,
   costing nothing more (``garbage``); at most ``QUEUE_LIMIT`` wait to be decoded, more are dropped
   (``dropped``): a flood cannot grow memory or delay the monitor;
2. one worker decodes them one at a time in a thread (munged checks the key, the time to live and
   refuses a replay, ~0.2 ms each); a credential munged refuses, or one made by a uid other than the
   configured senders' (SlurmUser's), is ``refused``; a payload that does not parse is ``garbage``;
3. the job id and context go to the monitor (``accepted``), which asks Slurm about the jobs named
   together in one query (slurm_bridge/hook_batches.py).

Why MUNGE and not a shared secret: munge is on every Slurm host with the cluster's key already, so
nothing new is distributed or rotated; munged attests the sender's uid (only SlurmUser's processes
can say a job changed, not any user on the controller); its credentials expire (the hook asks for
10 s) and munged refuses a replayed one. Why UDP: the hook must never wait for the bridge: a datagram
is sent without a connection, and a bridge that is down loses nothing the poll does not find.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from prometheus_client import Counter

from ucim.slurm_bridge.munge import Credential, CredentialError

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter(
    "ucim_slurm_hook_notifications_total",
    "Datagrams from the Slurm hook, by result (accepted, refused, garbage, dropped).",
    ["result"],
)
for _result in ("accepted", "refused", "garbage", "dropped"):
    NOTIFICATIONS.labels(_result)

MAX_DATAGRAM: Final = 1024  # a credential of the hook's payload is ~190 bytes
QUEUE_LIMIT: Final = 4096
PREFIX: Final = b"MUNGE:"
PAYLOAD_WORD: Final = "ucim-job"
MAX_CONTEXT: Final = 32


class Decoder(Protocol):
    def decode(self, credential: bytes) -> Credential: ...


OnJob = Callable[[int, str], None]


def parse_payload(payload: bytes) -> tuple[int, str] | None:
    """``b"ucim-job 42 epilog_slurmctld"`` → ``(42, "epilog_slurmctld")``; None if it is not one."""
    try:
        words = payload.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if len(words) not in (2, 3) or words[0] != PAYLOAD_WORD or not words[1].isdigit() or len(words[1]) > 12:
        return None
    context = words[2] if len(words) == 3 else ""
    if len(context) > MAX_CONTEXT or not context.replace("_", "").isalnum():
        context = ""
    return int(words[1]), context


def sender_uids(users: Iterable[str]) -> frozenset[int]:
    """The uids of the local users whose credentials are accepted (SlurmUser; a number is taken as a uid)."""
    uids = set()
    for user in users:
        uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
    return frozenset(uids)


class HookListener(asyncio.DatagramProtocol):
    """Receives the hook's datagrams, checks them, hands each job id to ``on_job``."""

    def __init__(self, decoder: Decoder, senders: frozenset[int], on_job: OnJob) -> None:
        self.decoder = decoder
        self.senders = senders
        self.on_job = on_job
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) > MAX_DATAGRAM or not data.startswith(PREFIX):
            NOTIFICATIONS.labels("garbage").inc()
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            NOTIFICATIONS.labels("dropped").inc()

    def error_received(self, exc: Exception) -> None:
        log.warning("Slurm hook socket error: %s", exc)

    def check(self, data: bytes) -> tuple[int, str] | None:
        """The job id and context of a datagram, or None (counted) if it is refused or garbage."""
        try:
            credential = self.decoder.decode(data.strip())
        except CredentialError as error:
            NOTIFICATIONS.labels("refused").inc()
            log.debug("Slurm hook credential refused: %s", error)
            return None
        if credential.uid not in self.senders:
            NOTIFICATIONS.labels("refused").inc()
            log.warning("Slurm hook credential of uid %d, who is not a configured sender", credential.uid)
            return None
        parsed = parse_payload(credential.payload)
        NOTIFICATIONS.labels("garbage" if parsed is None else "accepted").inc()
        return parsed

    async def run(self) -> None:
        """Decode the queued datagrams one at a time (munged's calls block: a thread); closes the socket at the end."""
        try:
            while True:
                data = await self.queue.get()
                parsed = await asyncio.to_thread(self.check, data)
                if parsed is not None:
                    self.on_job(*parsed)
        finally:
            if self.transport is not None:
                self.transport.close()

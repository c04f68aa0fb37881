"""The fork server: starts user instances as their users, in milliseconds.

Why a fork server
=================
Python and its packages live where a user cannot read them (``/root/.pyenv``, mode
0700), and a fresh interpreter needs ~160 ms and ~37 MB before it serves anything. So
the bridge runs one **fork server**: a root process that imports the instance
application (aiohttp, the sidecar, its Jinja2 templates and catalogue) once, and then
forks one child per instance. A child drops to its user and serves without ever
calling ``exec``; it shares the imported code with the fork server (copy-on-write), so
it starts in a few milliseconds and costs a few MB of its own memory.

How it is started
=================
:meth:`ForkServer.start` runs ``python -m ucim.slurm_bridge.spawner <fd>`` with an
environment of PATH and LANG only (plus PYTHONPATH when set), before the bridge reads
any secret, and talks to it over a ``SOCK_SEQPACKET`` socketpair. The fork server is
thus a fresh ``exec`` rather than a bare ``fork()`` of the bridge: it holds nothing of
the bridge's memory (no environment variable, no Kubernetes client, no event loop), so
no secret can leak into a child whatever way the bridge got it, and the fork server
imports exactly what the instances need and nothing else (no kopf, no Kubernetes
client). The fork server itself runs no event loop at all: a plain ``selectors`` loop,
so a child has no loop state to inherit.

What a child does (:func:`_become_instance`)
============================================
1. ``setsid``; every signal back to its default disposition (SIGPIPE/SIGXFSZ ignored,
   as Python starts), no signal wakeup fd, an empty signal mask;
2. fds: 0 and 1 are ``/dev/null``, 2 a pipe whose lines the fork server relays into
   the bridge's log (tagged with the instance), 3 the listening socket; every other
   inherited fd is closed;
3. ``setgroups`` (the account's groups), ``setresgid``, ``setresuid``; it checks all
   three took effect and that ``setuid(0)`` now fails, else it exits;
4. a new environment: HOME, USER, LOGNAME, SHELL, PATH, LANG and SLURM_CONF;
5. umask 0007, ``chdir`` to the home directory;
6. a **new** event loop, SIGTERM/SIGINT handlers on it, and the app on its socket.
   SIGTERM stops it within ``stop_grace_seconds`` (in-flight requests may finish).

The socket: the fork server (root) binds it in the socket directory (0700 root, made by
the bridge) and hands the listening fd to the child, so the child never needs to
reach the path, and no other local user can connect: there is no per-user TCP port.

Protocol (JSON, one message per packet)
=======================================
bridge → server: ``{"op": "config", ...ForkServerConfig}`` first, then
``{"op": "spawn", "id", ...SpawnRequest}``, ``{"op": "stop", "id", "pid"}``.
server → bridge: ``{"event": "ready"}``, ``{"reply": id, "pid"}`` or
``{"reply": id, "error"}``, ``{"event": "exited", "pid", "status", "cpu_seconds"}`` (status:
exit code, or minus the signal number). When the bridge's end closes, the server stops every child
(SIGTERM, then SIGKILL after the grace time) and exits: instances do not outlive their
bridge, and a restarted bridge starts them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final

from aiohttp import web
from pydantic import BaseModel, Field

from ucim.common.logs import setup_logging

# Named explicitly: the fork server runs this module as __main__.
log = logging.getLogger("ucim.slurm_bridge.spawner")

MAX_MESSAGE: Final = 1 << 16
LISTEN_FD: Final = 3
_MAX_LOG_LINE: Final = 16_384
_CLOSE_ABOVE: Final = 1 << 30
# Standard modules that are imported on first use deep inside libraries, too late for a child
# (which cannot read the installation): the executor aiohttp compresses large answers in, and the
# codec getaddrinfo encodes a host name with (a job's web server on a node, by name).
PRELOAD: Final = ("concurrent.futures.thread", "encodings.idna")


class SpawnError(Exception):
    """The fork server could not start an instance; the message says why."""


class ForkServerGoneError(SpawnError):
    """The fork server exited; the bridge cannot start instances any more."""


class ForkServerConfig(BaseModel):
    """What the fork server needs; sent as its first message (no secrets in here)."""

    socket_dir: str
    # "module:function": function(app_options) -> (account -> web.Application); called once, before any fork.
    app_factory: str
    app_options: dict[str, Any] = Field(default_factory=dict)
    min_uid: int = Field(default=1000, ge=1)
    stop_grace_seconds: float = 5.0
    path: str = "/usr/local/bin:/usr/bin:/bin"
    lang: str = "C.UTF-8"
    slurm_conf: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"


class SpawnRequest(BaseModel):
    """One instance to start: who it runs as and where it listens."""

    key: str = Field(description="namespace/name of the UserInstance, for logs")
    socket_path: str
    user: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    shell: str


# =============================================================================== bridge side


@dataclass
class ForkServer:
    """The bridge's handle on its fork server."""

    process: subprocess.Popen[bytes]
    channel: socket.socket
    _next_id: int = 0
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _on_exit: Callable[[int, int, float], None] | None = None
    _reader: asyncio.Task[None] | None = None
    gone: asyncio.Event | None = None
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def start(
        cls,
        config: ForkServerConfig,
        *,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        stderr: IO[bytes] | None = None,
    ) -> ForkServer:
        """Start the fork server and wait until it has preloaded the application (blocking).

        Its log, and its instances' (relayed), go to ``stderr`` (default: ours).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": config.path, "LANG": config.lang, **(extra_env or {})}
        try:
            process = subprocess.Popen(
                [python, "-m", "ucim.slurm_bridge.spawner", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                cwd="/",
            )
        finally:
            theirs.close()
        server = cls(process=process, channel=ours)
        try:
            ours.settimeout(timeout)
            ours.sendall(json.dumps({"op": "config", **config.model_dump(mode="json")}).encode())
            answer = _decode(ours.recv(MAX_MESSAGE))
        except (OSError, ValueError, TypeError) as error:
            server.kill()
            raise SpawnError(f"the fork server did not start: {error}") from error
        if answer.get("event") != "ready":
            server.kill()
            raise SpawnError(f"the fork server did not start: {answer.get('error', answer)}")
        ours.setblocking(False)
        log.info("fork server ready", extra={"pid": process.pid, "seconds": answer.get("seconds")})
        return server

    @property
    def pid(self) -> int:
        return self.process.pid

    def attach(self, on_exit: Callable[[int, int, float], None]) -> None:
        """Start reading answers and exit events in the running loop.

        ``on_exit(pid, status, cpu_seconds)``: a child ended; status is its exit code or minus the
        signal that killed it, cpu_seconds the CPU time it used in its whole life.
        """
        self._on_exit = on_exit
        self.gone = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="fork-server-reader")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.channel, MAX_MESSAGE)
                if not data:
                    break
                message = _decode(data)
                if "reply" in message:
                    future = self._pending.pop(int(message["reply"]), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("event") == "exited" and self._on_exit is not None:
                    self._on_exit(int(message["pid"]), int(message["status"]), float(message["cpu_seconds"]))
        except (OSError, ValueError, TypeError):
            log.exception("lost the fork server")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ForkServerGoneError("the fork server exited"))
            self._pending.clear()
            if self.gone is not None:
                self.gone.set()

    async def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.gone is None:
            raise SpawnError("the fork server is not attached to an event loop")
        if self.gone.is_set():
            raise ForkServerGoneError("the fork server exited")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        payload = json.dumps({"op": op, "id": request_id, **fields}).encode()
        try:
            async with self._send_lock:
                await asyncio.get_running_loop().sock_sendall(self.channel, payload)
        except OSError as error:
            self._pending.pop(request_id, None)
            raise ForkServerGoneError(f"the fork server is gone: {error}") from error
        answer = await future
        if "error" in answer:
            raise SpawnError(str(answer["error"]))
        return answer

    async def spawn(self, request: SpawnRequest) -> int:
        """Start an instance; its pid. It may not serve yet: the caller waits for its first answer."""
        answer = await self._call("spawn", **request.model_dump(mode="json"))
        return int(answer["pid"])

    async def stop(self, pid: int) -> None:
        """SIGTERM, then SIGKILL after the grace time; the exit arrives as an event."""
        await self._call("stop", pid=pid)

    async def close(self, wait_seconds: float = 15.0) -> None:
        """Stop every instance and the fork server."""
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), wait_seconds)
        except TimeoutError:
            log.warning("the fork server did not stop in time: killing it")
            self.kill()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.channel.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self.channel.close()


def prepare_socket_dir(path: Path) -> None:
    """Make ``path`` a directory only its owner (root) can enter, without stale sockets.

    One bridge per directory: a second one would remove the first one's sockets.
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SpawnError(f"{path} must be a directory owned by the bridge's user")
    path.chmod(0o700)
    for stale in path.glob("*.sock"):
        stale.unlink()


def _decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise TypeError("a fork server message must be a JSON object")
    return message


def uss_bytes(pid: int) -> int:
    """A process's unique set size (memory no other process shares) from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            total += int(value.split()[0]) * 1024
    return total


# =============================================================================== server side

AppMaker = Callable[[Mapping[str, Any]], web.Application]


@dataclass
class _Child:
    pid: int
    key: str
    pidfd: int
    log_fd: int | None
    socket_path: str
    socket_inode: tuple[int, int]
    kill_at: float | None = None
    buffer: bytes = b""


class _Shutdown(Exception):  # noqa: N818  (a control-flow signal, not an error)
    pass


def _raise_shutdown(signum: int, _frame: object) -> None:
    raise _Shutdown(signum)


class _Server:
    def __init__(self, channel: socket.socket, config: ForkServerConfig, make_app: AppMaker) -> None:
        self.channel = channel
        self.config = config
        self.make_app = make_app
        self.socket_dir = Path(config.socket_dir)
        self.children: dict[int, _Child] = {}
        self.selector = selectors.DefaultSelector()
        self.as_json = config.log_format == "json"

    def send(self, message: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.channel.send(json.dumps(message).encode())

    def serve(self) -> None:
        self.selector.register(self.channel, selectors.EVENT_READ, "control")
        try:
            while True:
                for key, _ in self.selector.select(self._timeout()):
                    if key.data == "control":
                        data = self.channel.recv(MAX_MESSAGE)
                        if not data:
                            return
                        try:
                            message = _decode(data)
                        except (ValueError, TypeError):
                            log.warning("fork server ignored a malformed message")
                            continue
                        self._handle(message)
                    elif isinstance(key.data, tuple) and key.data[0] == "exit":
                        self._reap(key.data[1])
                    elif isinstance(key.data, tuple) and key.data[0] == "log":
                        self._relay(key.data[1])
                self._kill_overdue()
        except _Shutdown:
            log.info("fork server stopping on a signal")
        finally:
            self._stop_all()

    def _timeout(self) -> float | None:
        deadlines = [child.kill_at for child in self.children.values() if child.kill_at is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _handle(self, message: dict[str, Any]) -> None:
        op, request_id = message.get("op"), message.get("id")
        try:
            if op == "spawn":
                pid = self._spawn(SpawnRequest.model_validate(message))
                self.send({"reply": request_id, "pid": pid})
            elif op == "stop":
                self._terminate(int(message["pid"]))
                self.send({"reply": request_id})
            else:
                self.send({"reply": request_id, "error": f"unknown operation {op!r}"})
        except (SpawnError, OSError, ValueError, TypeError) as error:
            log.warning("fork server request failed", extra={"op": op, "error": str(error)})
            self.send({"reply": request_id, "error": str(error)})

    def _check(self, request: SpawnRequest) -> None:
        path = Path(request.socket_path)
        if path.parent != self.socket_dir or not path.name.endswith(".sock"):
            raise SpawnError(f"socket {path} is not in {self.socket_dir}")
        if request.uid < self.config.min_uid or request.gid == 0 or 0 in request.groups:
            raise SpawnError(f"refusing to run an instance as uid {request.uid} / gid {request.gid}")
        if not request.home.startswith("/"):
            raise SpawnError(f"home {request.home!r} is not an absolute path")

    def _spawn(self, request: SpawnRequest) -> int:
        self._check(request)
        with contextlib.suppress(FileNotFoundError):
            Path(request.socket_path).unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        log_read, log_write = os.pipe()
        try:
            listener.bind(request.socket_path)
            Path(request.socket_path).chmod(0o600)
            listener.listen(128)
            info = Path(request.socket_path).stat()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                _become_instance(listener.fileno(), log_write, request, self.config, self.make_app)
        except BaseException:
            os.close(log_read)
            raise
        finally:
            listener.close()
            os.close(log_write)
        os.set_blocking(log_read, False)
        child = _Child(
            pid=pid,
            key=request.key,
            pidfd=os.pidfd_open(pid),
            log_fd=log_read,
            socket_path=request.socket_path,
            socket_inode=(info.st_dev, info.st_ino),
        )
        self.children[pid] = child
        self.selector.register(child.pidfd, selectors.EVENT_READ, ("exit", pid))
        self.selector.register(log_read, selectors.EVENT_READ, ("log", pid))
        log.info("instance started", extra={"instance": request.key, "pid": pid, "uid": request.uid})
        return pid

    def _terminate(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None:
            return  # already gone: its exit event is on its way or was sent
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(child.pidfd, signal.SIGTERM)
        if child.kill_at is None:
            child.kill_at = time.monotonic() + self.config.stop_grace_seconds

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.kill_at is not None and now >= child.kill_at:
                log.warning("instance did not stop in time: killing it", extra={"instance": child.key})
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                child.kill_at = None

    def _reap(self, pid: int) -> None:
        child = self.children.pop(pid)
        _, wait_status, usage = os.wait4(pid, 0)
        status = os.waitstatus_to_exitcode(wait_status)
        cpu = round(usage.ru_utime + usage.ru_stime, 4)
        self.selector.unregister(child.pidfd)
        os.close(child.pidfd)
        if child.log_fd is not None:
            self._drain(child)
        with contextlib.suppress(OSError):
            info = Path(child.socket_path).stat()
            if (info.st_dev, info.st_ino) == child.socket_inode:
                Path(child.socket_path).unlink()
        log.info("instance exited", extra={"instance": child.key, "pid": pid, "status": status, "cpu_seconds": cpu})
        self.send({"event": "exited", "pid": pid, "status": status, "cpu_seconds": cpu})

    def _relay(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None or child.log_fd is None:
            return
        try:
            data = os.read(child.log_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._drain(child)
            return
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            _relay_line(child, line, self.as_json)
        if len(child.buffer) > _MAX_LOG_LINE:
            _relay_line(child, child.buffer, self.as_json)
            child.buffer = b""

    def _drain(self, child: _Child) -> None:
        """Relay what is left of a child's log and close the pipe."""
        if child.log_fd is None:
            return
        with contextlib.suppress(OSError):
            while data := os.read(child.log_fd, 65536):
                child.buffer += data
        for line in child.buffer.split(b"\n"):
            if line:
                _relay_line(child, line, self.as_json)
        child.buffer = b""
        self.selector.unregister(child.log_fd)
        os.close(child.log_fd)
        child.log_fd = None

    def _stop_all(self) -> None:
        for pid in list(self.children):
            self._terminate(pid)
        deadline = time.monotonic() + self.config.stop_grace_seconds
        while self.children:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for child in self.children.values():
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                remaining = 5.0
                deadline = time.monotonic() + remaining
            for key, _ in self.selector.select(remaining):
                if isinstance(key.data, tuple) and key.data[0] == "exit":
                    self._reap(key.data[1])
                elif isinstance(key.data, tuple) and key.data[0] == "log":
                    self._relay(key.data[1])


def _relay_line(child: _Child, raw: bytes, as_json: bool) -> None:
    """One line of a child's stderr into our log, tagged with the instance; never trusted as is."""
    text = raw[:_MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
    if not as_json:
        sys.stderr.write(f"[{child.key} {child.pid}] {text}\n")
        sys.stderr.flush()
        return
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        entry = {"message": text, "severity": "info", "logger": "ucim.instance"}
    entry.update(instance=child.key, pid=child.pid)
    sys.stderr.write(json.dumps(entry, default=str) + "\n")
    sys.stderr.flush()


# =============================================================================== the child


def _become_instance(
    listen_fd: int, log_fd: int, request: SpawnRequest, config: ForkServerConfig, make_app: AppMaker
) -> None:
    """Runs in the forked child: drop to the user, serve, ``_exit``. Never returns."""
    status = 70  # EX_SOFTWARE: anything below failed before serving
    try:
        os.setsid()
        _reset_signals()
        _arrange_fds(listen_fd, log_fd)
        _drop_privileges(request)
        os.environ.clear()
        os.environ.update(instance_environment(request, config))
        os.umask(0o007)
        os.chdir(request.home)
        sys.meta_path.insert(0, _LateImportReporter())
        status = _serve(make_app, request, config)
    except BaseException as error:  # whatever happens, the child must not return
        with contextlib.suppress(BaseException):
            logging.getLogger("ucim.instance").critical(
                "instance failed", exc_info=error, extra={"instance": request.key}
            )
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(status)


def _reset_signals() -> None:
    """Forget the fork server's signal handling: default dispositions, nothing blocked."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    # What the interpreter itself sets at start-up: writes to closed sockets raise instead of killing us.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _arrange_fds(listen_fd: int, log_fd: int) -> None:
    """0, 1 → /dev/null; 2 → the log pipe; 3 → the listening socket; nothing else stays open."""
    devnull = os.open("/dev/null", os.O_RDWR)
    # Out of the way of 0-3 first, so that no dup2 below overwrites a source.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (devnull, log_fd, listen_fd)]
    os.dup2(high[0], 0)
    os.dup2(high[0], 1)
    os.dup2(high[1], 2)
    os.dup2(high[2], LISTEN_FD)
    os.closerange(LISTEN_FD + 1, _CLOSE_ABOVE)


def _drop_privileges(request: SpawnRequest) -> None:
    uid, gid, groups = request.uid, request.gid, sorted(set(request.groups))
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or sorted(os.getgroups()) != groups:
        raise SpawnError("the privilege drop did not take effect")
    for regain in (os.setuid, os.setgid, os.seteuid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise SpawnError(f"{regain.__name__}(0) succeeded after dropping privileges")


def instance_environment(request: SpawnRequest, config: ForkServerConfig) -> dict[str, str]:
    env = {
        "HOME": request.home,
        "USER": request.user,
        "LOGNAME": request.user,
        "SHELL": request.shell or "/bin/sh",
        "PATH": config.path,
        "LANG": config.lang,
    }
    if config.slurm_conf:
        env["SLURM_CONF"] = config.slurm_conf
    return env


def _serve(make_app: AppMaker, request: SpawnRequest, config: ForkServerConfig) -> int:
    listener = socket.socket(fileno=LISTEN_FD)
    # A fresh loop: nothing of the fork server's (it has none) or the bridge's is reused.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = make_app({"user": request.user, "home": request.home, "uid": request.uid, "gid": request.gid})
        loop.run_until_complete(_run_app(app, listener, config.stop_grace_seconds))
    finally:
        loop.close()
    return 0


async def _run_app(app: web.Application, listener: socket.socket, grace: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    # aiohttp may wait for in-flight requests more than once while it stops; bound the whole.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace * 0.4)
    await runner.setup()
    try:
        await web.SockSite(runner, listener).start()
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(runner.cleanup(), grace * 0.8)
        except TimeoutError:
            logging.getLogger("ucim.instance").warning("in-flight requests cut short at stop")


class _LateImportReporter(MetaPathFinder):
    """In a child, every import should have happened in the fork server: report those that did not."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        logging.getLogger("ucim.instance").warning(
            "module %s imported after the fork; preload it in the fork server", fullname
        )
        return None


# =============================================================================== entry point


def load_app_maker(config: ForkServerConfig) -> AppMaker:
    module_name, _, function = config.app_factory.partition(":")
    hook = getattr(importlib.import_module(module_name), function)
    maker: AppMaker = hook(config.app_options)
    return maker


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    started = time.perf_counter()
    channel = socket.socket(fileno=int(argv[0]))
    try:
        config = ForkServerConfig.model_validate(_decode(channel.recv(MAX_MESSAGE)))
        setup_logging(config.log_level, config.log_format)
        for module in PRELOAD:
            importlib.import_module(module)
        make_app = load_app_maker(config)
    except Exception as error:
        channel.send(json.dumps({"event": "failed", "error": f"{type(error).__name__}: {error}"}).encode())
        raise
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)
    # Everything loaded so far is shared with every child; keep the collector off those pages.
    gc.collect()
    gc.freeze()
    server = _Server(channel, config, make_app)
    server.send({"event": "ready", "seconds": round(time.perf_counter() - started, 3)})
    server.serve()


if __name__ == "__main__":
    main()

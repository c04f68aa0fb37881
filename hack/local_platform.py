#!/usr/bin/env python3
"""The real local platform for ucim: Kubernetes control plane + Slurm, as plain processes.

Usage (as root, from the repository root)::

    python3 hack/local_platform.py up            # start (or top up) everything; idempotent
    python3 hack/local_platform.py status        # one line per component; exit 0 iff all run
    python3 hack/local_platform.py env           # print the shell-sourceable platform.env
    python3 hack/local_platform.py down          # cancel Slurm jobs, stop every daemon, keep data
    python3 hack/local_platform.py down --purge  # ... and remove the run directory
    python3 hack/local_platform.py kill slurmctld   # SIGKILL daemons, as a crash would (fault drills)
    python3 hack/local_platform.py start            # start what is not running (all, or the named ones)

What ``up`` brings up, on 127.0.0.1 (Slurm's daemons listen on all addresses: 22.05 cannot
bind them to one):

* etcd, kube-apiserver (TLS + RBAC) and kube-controller-manager, from the binaries that
  ``hack/build-k8s.sh`` builds or reuses; the CRDs of ``crds/*.yaml`` are applied.
* munged, MariaDB, slurmdbd, slurmctld and two node daemons, ``slurmd -N localhost`` and
  ``slurmd -N localhost2`` (so 2-node jobs run for real), from Debian's Slurm 22.05
  (``hack/install-deps.sh`` installs the packages), cluster ``ucim`` with partitions
  ``normal`` (default) and ``short``, enforcing associations and limits as a UCloud site must
  (account ``ucimproj`` for alice and bob).
* the site's software: an Lmod module tree with the probe module ``ucim-probe`` (versions
  1.0.0, 1.2.3, 2.0.0), its spider JSON (the module picker's ``modulesFile``) and load
  instructions (the anchor's ``applications/`` folder). ``/etc/profile.d/ucim-platform-modules.sh``
  puts the tree on every login shell's MODULEPATH (``down`` removes it), so a job's
  ``module load ucim-probe/1.2.3`` works as at a site.
* users ``alice`` (1101) and ``bob`` (1102) in group ``ucimproj`` (1200), each with a
  private home, and ``nologinuser`` (1103) for negative tests.

Everything lives in ``$UCIM_RUN_DIR`` (default ``/var/tmp/ucim-platform``): configs, PKI,
data, ``pids/`` and ``logs/`` (one log per daemon). Ports are picked once and stored there
(``ports.json``), so a restart keeps the same URLs. The Kubernetes binaries stay in
``$UCIM_CACHE/bin`` (default ``~/.cache/ucim``). Daemons run in their own sessions, so they
outlive the shell that started them.

``<run>/platform.env`` holds ``KEY=value`` lines (use ``set -a; . <run>/platform.env; set +a``):
KUBECONFIG, SLURM_CONF, UCIM_RUN_DIR, UCIM_BIN_DIR (kubectl, etcd, ...), UCIM_KUBE_SERVER,
UCIM_KUBE_CA, UCIM_SA_KEY and UCIM_SA_ISSUER (to mint service-account tokens), UCIM_K8S_VERSION,
UCIM_SLURM_CLUSTER, UCIM_SLURM_ACCOUNT, UCIM_SLURM_NODES (the node names), UCIM_MODULES_DIR (the
module tree, a MODULEPATH entry), UCIM_MODULES_FILE (its spider JSON), UCIM_APPLICATIONS_DIR
(the load instructions), UCIM_SLURM_HOOK_PORT (where slurmctld's PrologSlurmctld/EpilogSlurmctld, ucim's
Slurm hook, send their datagrams: a bridge listens there) and UCIM_MUNGE_SOCKET. Run Slurm commands as a user with
``runuser -u alice -- sbatch ...`` (it keeps SLURM_CONF; ``su -`` drops it).

The script uses the standard library only: it runs before the project is pip-installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import grp
import hashlib
import http.client
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
RUN = Path(os.environ.get("UCIM_RUN_DIR", "/var/tmp/ucim-platform")).absolute()
CACHE = Path(os.environ.get("UCIM_CACHE", str(Path.home() / ".cache" / "ucim")))

CLUSTER = "ucim"
ACCOUNT = "ucimproj"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
DB_NAME = "slurm_acct_db"
# Set in every daemon's environment: `down` finds their leftover children (slurmstepd) by it.
MARKER = "UCIM_PLATFORM_RUN_DIR"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    shell: str
    in_project: bool


PROJECT_GROUP = ("ucimproj", 1200)
USERS = (
    User("alice", 1101, "/bin/bash", True),
    User("bob", 1102, "/bin/bash", True),
    User("nologinuser", 1103, "/usr/sbin/nologin", False),
)


@dataclass(frozen=True)
class Node:
    """One Slurm node: a slurmd of its own on this host (Debian builds Slurm with
    --enable-multiple-slurmd: ``scontrol show config`` says MULTIPLE_SLURMD = Yes)."""

    name: str
    daemon: str  # the name `kill` and `start` take, of its pid file and of its log; also its port's key
    weight: int  # Slurm fills lower weights first: one-node jobs run on localhost, as they always did


NODES = (Node("localhost", "slurmd", 1), Node("localhost2", "slurmd2", 2))


class PlatformError(Exception):
    """A component failed; ``log`` is the file whose tail explains why."""

    def __init__(self, component: str, message: str, log: Path | None = None) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.log = log


# --------------------------------------------------------------------------- small helpers


def say(message: str) -> None:
    print(f"platform: {message}", flush=True)


Arg = str | Path | int


def run(
    argv: Sequence[Arg],
    *,
    input_text: str | None = None,
    check: bool = True,
    timeout: float = 60,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output; raise with its stderr if it fails."""
    result = subprocess.run(
        [str(a) for a in argv],
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,  # never wait on a terminal
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, detail)
    return result


def succeeds(argv: Sequence[Arg], timeout: float = 10, input_text: str | None = None) -> bool:
    """True if the command exits 0 (a readiness probe: any failure is just "not yet")."""
    try:
        return run(argv, check=False, timeout=timeout, input_text=input_text).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def write_if_changed(path: Path, content: str, mode: int = 0o644, owner: str | None = None) -> bool:
    """Write a config file only when its content changes, so warm runs touch nothing."""
    changed = not path.exists() or path.read_text() != content
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        # Created with its final mode: secrets are never readable by others, not even briefly.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:
            f.write(content)
        tmp.replace(path)
    path.chmod(mode)
    if owner:
        shutil.chown(path, owner, owner)
    return changed


def make_dir(path: Path, mode: int = 0o755, owner: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def free_port(taken: set[int]) -> int:
    """A free port below the kernel's ephemeral range, so that no client socket can hold it
    while the platform is down and make the next `up` fail."""
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = range(20000, low) if low > 21000 else range(high + 1, 65536)
    while True:
        port = secrets.choice(candidates)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- layout and ports


@dataclass(frozen=True)
class Paths:
    run: Path = RUN
    pids: Path = RUN / "pids"
    logs: Path = RUN / "logs"
    pki: Path = RUN / "pki"
    kube: Path = RUN / "kube"
    etcd_data: Path = RUN / "etcd"
    mysql: Path = RUN / "mysql"
    munge: Path = RUN / "munge"
    slurm: Path = RUN / "slurm"
    modules: Path = RUN / "modules"
    applications: Path = RUN / "applications"
    env_file: Path = RUN / "platform.env"
    ports_file: Path = RUN / "ports.json"

    @property
    def kubeconfig(self) -> Path:
        return self.kube / "admin.kubeconfig"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def my_cnf(self) -> Path:
        return self.mysql / "my.cnf"

    @property
    def module_path(self) -> Path:
        """The module tree: the MODULEPATH entry."""
        return self.modules / "modulefiles"

    @property
    def software(self) -> Path:
        """What the modules put on PATH: ``<name>/<version>/bin``."""
        return self.modules / "software"

    @property
    def modules_file(self) -> Path:
        """Lmod's spider JSON of the tree (``spider -o jsonSoftwarePage``): the anchor's ``modulesFile``."""
        return self.modules / "modules.json"


P = Paths()

PORT_NAMES = ("etcd", "etcd_peer", "apiserver", "mariadb", "slurmdbd", "slurmctld", "slurmd", "slurmd2", "slurm_hook")


def load_ports() -> dict[str, int]:
    """Ports chosen on the first `up` and reused afterwards (stable URLs across restarts)."""
    ports: dict[str, int] = {}
    if P.ports_file.exists():
        ports = {k: int(v) for k, v in json.loads(P.ports_file.read_text()).items()}
    missing = [n for n in PORT_NAMES if n not in ports]
    for name in missing:
        ports[name] = free_port(set(ports.values()))
    if missing:
        write_if_changed(P.ports_file, json.dumps(ports, indent=2) + "\n")
    return ports


# --------------------------------------------------------------------------- processes


@dataclass
class Daemon:
    """One long-running process of the platform, started in its own session."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    timeout: float = 60
    port: int | None = None
    user: str | None = None  # drop to this user before exec (munged); others drop themselves
    # For probes that old state can satisfy at once: the new process must also live this long.
    min_uptime: float = 0

    @property
    def exe(self) -> str:
        return os.path.realpath(self.argv[0])

    @property
    def pid_file(self) -> Path:
        return P.pids / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return P.logs / f"{self.name}.log"


def pid_exe(pid: int) -> str | None:
    """The executable of a live (non-zombie) process, or None."""
    proc = Path(f"/proc/{pid}")
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        try:
            # A binary rebuilt while running shows as "<path> (deleted)".
            return str((proc / "exe").readlink()).removesuffix(" (deleted)")
        except PermissionError:
            # Not root (`status` as a user): another user's exe link is unreadable, argv[0] is not.
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
            return os.path.realpath(argv0) if argv0.startswith("/") else None
    except (OSError, IndexError):
        return None


def running_pid(name: str, exe: str) -> int | None:
    """The pid recorded for `name` if that process is alive and still runs `exe`."""
    pid_file = P.pids / f"{name}.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_exe(pid) == exe else None


def spawn(daemon: Daemon) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SLURM_CONF": str(P.slurm_conf), MARKER: str(P.run)}
    with daemon.log.open("ab") as log:
        log.write(f"\n=== {time.strftime('%F %T')} {shlex.join(daemon.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            daemon.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlive the calling shell and its Ctrl-C
            env=env,
            cwd="/",
            user=daemon.user,
            group=daemon.user,
            extra_groups=[] if daemon.user else None,
        )
    daemon.pid_file.write_text(f"{proc.pid}\n")
    return proc


def wait_for(
    what: str,
    probe: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `probe` until true; fail early if the process we just started died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not probe():
        if proc is not None and proc.poll() is not None:
            raise PlatformError(what, f"exited with code {proc.returncode} while starting", log)
        if time.monotonic() > deadline:
            raise PlatformError(what, f"not ready after {timeout:.0f} s", log)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def ensure(daemon: Daemon) -> bool:
    """Start `daemon` unless it already runs; wait until ready. True if it was started."""
    start = time.monotonic()
    pid = running_pid(daemon.name, daemon.exe)
    if pid is not None:
        wait_for(daemon.name, daemon.ready, daemon.timeout, log=daemon.log)
        say(f"{daemon.name} already running (pid {pid})")
        return False
    proc = spawn(daemon)
    wait_for(daemon.name, daemon.ready, daemon.timeout, proc, daemon.log)
    time.sleep(max(0.0, start + daemon.min_uptime - time.monotonic()))
    if proc.poll() is not None:
        raise PlatformError(daemon.name, f"exited with code {proc.returncode} after starting", daemon.log)
    say(f"{daemon.name} ready ({time.monotonic() - start:.1f} s)")
    return True


def stop_pid(name: str, pid: int, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    start = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    exe = pid_exe(pid)
    while pid_exe(pid) == exe and exe is not None:
        if time.monotonic() - start > grace:
            say(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f} s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            grace = float("inf")
        time.sleep(0.05)
    say(f"{name} stopped ({time.monotonic() - start:.1f} s)")


def marked_processes() -> Iterator[int]:
    """Pids whose environment carries our marker (daemons and their children)."""
    needle = f"{MARKER}={P.run}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pid = int(entry.name)
            if pid_exe(pid) is not None:
                yield pid


# --------------------------------------------------------------------------- prerequisites


# The commands `up` runs, by the Debian package that has them (hack/install-deps.sh installs these).
REQUIRED_COMMANDS = {
    "slurmctld": ("slurmctld",),
    "slurmd": ("slurmd", "slurmstepd"),
    "slurmdbd": ("slurmdbd",),
    "slurm-client": ("sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel", "sacct", "sacctmgr"),
    "munge": ("munged", "munge", "unmunge", "mungekey"),
    "mariadb-server": ("mariadbd", "mariadb", "mariadb-install-db"),
    "openssl": ("openssl",),
}


def check_prerequisites() -> None:
    missing = [
        f"{cmd} (package {pkg})" for pkg, cmds in REQUIRED_COMMANDS.items() for cmd in cmds if shutil.which(cmd) is None
    ]
    missing += [f"{path} (package lmod)" for path in (LMOD_PROFILE, LMOD_SPIDER) if not path.exists()]
    if missing:
        raise PlatformError("prerequisites", f"{', '.join(missing)} not found: run hack/install-deps.sh")
    for d in P.run.parents:
        if d.exists() and not d.stat().st_mode & 0o001:
            raise PlatformError(
                "prerequisites", f"{d} is not world-traversable (chmod o+x): Slurm daemons run as 'slurm'"
            )


def build_binaries() -> Path:
    """Build or reuse the Kubernetes binaries; build-k8s.sh prints its own progress."""
    result = subprocess.run([str(HACK / "build-k8s.sh")], check=False)
    if result.returncode != 0:
        raise PlatformError("build-k8s", f"hack/build-k8s.sh failed (exit {result.returncode})")
    return (CACHE / "bin" / "current").resolve()


def k8s_version() -> str:
    for line in (HACK / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise PlatformError("build-k8s", "k8s.io/kubernetes not found in hack/k8s/go.mod")


# --------------------------------------------------------------------------- users


def ensure_group(name: str, gid: int) -> list[str]:
    """Create the group if missing; the changes made, for the progress line."""
    try:
        found = grp.getgrnam(name)
    except KeyError:
        run(["groupadd", "-g", gid, name])
        return [f"group {name}"]
    if found.gr_gid != gid:
        raise PlatformError("users", f"group {name} exists with gid {found.gr_gid}, expected {gid}")
    return []


def ensure_user(user: User) -> list[str]:
    """Create the user, or repair its shell, project membership and home mode."""
    changes = ensure_group(user.name, user.uid)
    project = PROJECT_GROUP[0]
    try:
        found = pwd.getpwnam(user.name)
    except KeyError:
        groups = ["-G", project] if user.in_project else []
        run(["useradd", "-m", "-u", user.uid, "-g", user.name, "-s", user.shell, *groups, user.name])
        found = pwd.getpwnam(user.name)
        changes.append(f"user {user.name}")
    if found.pw_uid != user.uid:
        raise PlatformError("users", f"user {user.name} exists with uid {found.pw_uid}, expected {user.uid}")
    if found.pw_shell != user.shell:
        run(["usermod", "-s", user.shell, user.name])
        changes.append(f"{user.name}'s shell")
    if user.in_project and user.name not in grp.getgrnam(project).gr_mem:
        run(["usermod", "-a", "-G", project, user.name])
        changes.append(f"{user.name} in {project}")
    home = Path(found.pw_dir)
    if not home.exists():
        make_dir(home, 0o700)
        os.chown(home, user.uid, user.uid)
        changes.append(f"{home}")
    elif home.stat().st_mode & 0o777 != 0o700:
        home.chmod(0o700)  # private homes are what the permission tests rely on
        changes.append(f"{home} mode 0700")
    return changes


def ensure_users() -> None:
    changes = ensure_group(*PROJECT_GROUP)
    for user in USERS:
        changes += ensure_user(user)
    if changes:
        say(f"users: made {', '.join(changes)}")


# --------------------------------------------------------------------------- PKI


def openssl(command: str, cwd: Path) -> None:
    run(["openssl", *shlex.split(command)], cwd=cwd)


def sign_cert(dir_: Path, name: str, subject: str, extensions: str) -> None:
    """A 2048-bit RSA key and a certificate for it signed by the CA in `dir_`."""
    (dir_ / f"{name}.ext").write_text(extensions)
    openssl(f"req -new -newkey rsa:2048 -nodes -keyout {name}.key -subj {subject} -out {name}.csr", dir_)
    openssl(
        f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 "
        f"-extfile {name}.ext -out {name}.crt",
        dir_,
    )


API_SANS = (
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)
KEY_USAGE = "keyUsage=critical,digitalSignature,keyEncipherment"


def ensure_pki() -> None:
    """CA, apiserver serving cert, admin client cert, service-account keys; made once.

    Built in a temporary directory and renamed into place, so an interrupted run leaves
    no half-made PKI behind.
    """
    if (P.pki / "complete").exists():
        return
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pki.", dir=P.run))
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=ucim-local-ca "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        tmp,
    )
    server_ext = f"subjectAltName={API_SANS}\nextendedKeyUsage=serverAuth\n{KEY_USAGE}\n"
    sign_cert(tmp, "apiserver", "/CN=kube-apiserver", server_ext)
    sign_cert(tmp, "admin", "/O=system:masters/CN=admin", f"extendedKeyUsage=clientAuth\n{KEY_USAGE}\n")
    openssl("genrsa -out sa.key 2048", tmp)
    openssl("rsa -in sa.key -pubout -out sa.pub", tmp)
    for junk in [*tmp.glob("*.csr"), *tmp.glob("*.ext"), *tmp.glob("*.srl")]:
        junk.unlink()
    for key in tmp.glob("*.key"):
        key.chmod(0o600)
    (tmp / "complete").write_text("")
    tmp.chmod(0o755)
    shutil.rmtree(P.pki, ignore_errors=True)
    tmp.rename(P.pki)
    say(f"pki created ({time.monotonic() - start:.1f} s)")


# --------------------------------------------------------------------------- Kubernetes


def http_get(port: int, path: str, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET on 127.0.0.1:port; (0, b"") if it cannot be reached."""
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def apiserver_get(path: str, *, client_cert: bool = False) -> int:
    """HTTP status of a GET against the apiserver, anonymous or as admin."""
    ctx = ssl.create_default_context(cafile=str(P.pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(str(P.pki / "admin.crt"), str(P.pki / "admin.key"))
    return http_get(load_ports()["apiserver"], path, ctx)[0]


def etcd_healthy(port: int) -> bool:
    status, body = http_get(port, "/health")
    try:
        return status == 200 and bool(json.loads(body).get("health") == "true")
    except ValueError:
        return False


def etcd_daemon(bin_dir: Path, ports: Mapping[str, int]) -> Daemon:
    client = f"http://127.0.0.1:{ports['etcd']}"
    peer = f"http://127.0.0.1:{ports['etcd_peer']}"
    return Daemon(
        name="etcd",
        argv=[
            str(bin_dir / "etcd"),
            "--name=ucim",
            f"--data-dir={P.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=ucim={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        ready=lambda: etcd_healthy(ports["etcd"]),
        timeout=30,
        port=ports["etcd"],
    )


def apiserver_daemon(bin_dir: Path, ports: Mapping[str, int]) -> Daemon:
    pki = P.pki
    return Daemon(
        name="kube-apiserver",
        argv=[
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={P.kube / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No kubelet runs pods here, so no pod needs a token mounted.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ],
        ready=lambda: apiserver_get("/readyz") == 200,
        timeout=90,
        port=ports["apiserver"],
    )


def controller_manager_daemon(bin_dir: Path) -> Daemon:
    def default_sa_exists() -> bool:
        # The serviceaccount controller creating "default" proves the manager works.
        path = "/api/v1/namespaces/default/serviceaccounts/default"
        return apiserver_get(path, client_cert=True) == 200

    return Daemon(
        name="kube-controller-manager",
        argv=[
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={P.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            # The few controllers a control plane without kubelets needs (see TESTBED.md);
            # serviceaccount-token fills legacy token Secrets, root-ca-* the kube-root-ca.crt maps.
            "--controllers=garbage-collector-controller,namespace-controller,"
            "serviceaccount-controller,serviceaccount-token-controller,"
            "clusterrole-aggregation-controller,root-ca-certificate-publisher-controller",
            f"--service-account-private-key-file={P.pki / 'sa.key'}",
            f"--root-ca-file={P.pki / 'ca.crt'}",
        ],
        ready=default_sa_exists,
        timeout=60,
        min_uptime=1,  # "default" persists in etcd, so the probe alone proves nothing on a restart
    )


def write_kubeconfig(server: str) -> None:
    """Admin kubeconfig with the certificates inlined, so it can be copied anywhere."""

    def b64(name: str) -> str:
        return base64.b64encode((P.pki / name).read_bytes()).decode()

    content = f"""apiVersion: v1
kind: Config
clusters:
- name: {CLUSTER}
  cluster:
    server: {server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: admin
  user:
    client-certificate-data: {b64("admin.crt")}
    client-key-data: {b64("admin.key")}
contexts:
- name: {CLUSTER}
  context:
    cluster: {CLUSTER}
    user: admin
current-context: {CLUSTER}
"""
    write_if_changed(P.kubeconfig, content, mode=0o600)


def apply_crds(bin_dir: Path) -> None:
    """Apply crds/*.yaml and wait until each CRD is Established; skipped when unchanged."""
    files = sorted((REPO / "crds").glob("*.yaml")) if (REPO / "crds").is_dir() else []
    if not files:
        say("crds: none in crds/ (skipped)")
        return
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = P.kube / "crds.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        say(f"crds: {len(files)} file(s) unchanged")
        return
    start = time.monotonic()
    kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={P.kubeconfig}"]
    args: list[Arg] = [*kubectl, "apply", "--server-side", "--force-conflicts", "-o", "name"]
    for f in files:
        args += ["-f", f]
    try:
        names = run(args).stdout.split()
        crds = [n for n in names if n.startswith("customresourcedefinition")]
        if crds:
            run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s", *crds], timeout=70)
            wait_until_listable(kubectl, [n.split("/", 1)[1] for n in crds])
    except subprocess.CalledProcessError as e:
        raise PlatformError("crds", f"kubectl failed: {e.stderr}") from e
    stamp.write_text(digest)
    say(f"crds: {len(crds)} established ({time.monotonic() - start:.1f} s)")


def wait_until_listable(kubectl: list[str], resources: list[str], timeout: float = 30.0) -> None:
    """Until each new resource can be listed: an Established CRD's storage may still be starting
    ("429 storage is (re)initializing"), and the first test would meet that instead."""
    deadline = time.monotonic() + timeout
    for resource in resources:
        while run([*kubectl, "get", resource, "--all-namespaces", "-o", "name"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise PlatformError("crds", f"{resource} cannot be listed {timeout:.0f} s after it was established")
            time.sleep(0.2)


def up_kubernetes(bin_dir: Path, ports: Mapping[str, int]) -> None:
    make_dir(P.kube)
    make_dir(P.etcd_data, 0o700)
    ensure_pki()
    ensure(etcd_daemon(bin_dir, ports))
    ensure(apiserver_daemon(bin_dir, ports))
    write_kubeconfig(f"https://127.0.0.1:{ports['apiserver']}")
    ensure(controller_manager_daemon(bin_dir))
    apply_crds(bin_dir)


# --------------------------------------------------------------------------- munge


def munge_works() -> bool:
    try:
        cred = run(["munge", "-n", "-S", P.munge_socket], timeout=5).stdout
        return succeeds(["unmunge", "-S", P.munge_socket], input_text=cred)
    except (OSError, subprocess.SubprocessError):
        return False


def prepare_munge() -> None:
    """munged's own directory and key; our own key (made once), not /etc/munge's."""
    make_dir(P.munge, 0o755, "munge")
    key = P.munge / "munge.key"
    if not key.exists():
        run(["mungekey", "--create", f"--keyfile={key}"])
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)


def munge_daemon() -> Daemon:
    # munged drops no privileges itself, so it is started as the munge user.
    return Daemon(
        name="munged",
        argv=[
            "/usr/sbin/munged",
            "--foreground",
            f"--socket={P.munge_socket}",
            f"--key-file={P.munge / 'munge.key'}",
            f"--pid-file={P.munge / 'munged.pid'}",
            f"--seed-file={P.munge / 'munged.seed'}",
            f"--log-file={P.munge / 'munged.log'}",
        ],
        ready=munge_works,
        timeout=20,
        user="munge",
    )


# --------------------------------------------------------------------------- MariaDB


def mysql_cmd() -> list[str]:
    return ["mariadb", f"--defaults-file={P.my_cnf}", "-u", "root"]


def write_my_cnf(port: int) -> None:
    content = f"""# MariaDB for slurmdbd only; written by hack/local_platform.py.
[mysqld]
user=mysql
datadir={P.mysql / "data"}
socket={P.mysql / "mysqld.sock"}
pid-file={P.mysql / "mysqld.pid"}
bind-address=127.0.0.1
port={port}
skip-name-resolve
# Slurm's recommended minimums; durability traded for speed (a test bed).
innodb_buffer_pool_size=256M
innodb_log_file_size=64M
innodb_flush_log_at_trx_commit=0
innodb_lock_wait_timeout=900
max_allowed_packet=16M

[client]
socket={P.mysql / "mysqld.sock"}
"""
    write_if_changed(P.my_cnf, content)


def ensure_mariadb_datadir() -> None:
    """Initialise the datadir once (the marker makes a half-done init start over)."""
    marker = P.mysql / "initialized"
    if marker.exists():
        return
    start = time.monotonic()
    data = P.mysql / "data"
    shutil.rmtree(data, ignore_errors=True)
    make_dir(data, 0o700, "mysql")
    try:
        install = ["mariadb-install-db", f"--defaults-file={P.my_cnf}", "--user=mysql", "--skip-test-db"]
        run([*install, "--auth-root-authentication-method=socket"], timeout=120)
    except subprocess.CalledProcessError as e:
        raise PlatformError("mariadb", f"mariadb-install-db failed: {e.stderr}") from e
    marker.write_text("")
    say(f"mariadb datadir initialised ({time.monotonic() - start:.1f} s)")


def db_password() -> str:
    path = P.slurm / "db.password"
    if not path.exists():
        write_if_changed(path, secrets.token_hex(16), mode=0o600)
    return path.read_text().strip()


def prepare_mariadb(port: int) -> None:
    make_dir(P.mysql, 0o755, "mysql")
    write_my_cnf(port)
    ensure_mariadb_datadir()


def mariadb_daemon(port: int) -> Daemon:
    return Daemon(
        name="mariadbd",
        argv=["/usr/sbin/mariadbd", f"--defaults-file={P.my_cnf}"],
        ready=lambda: succeeds([*mysql_cmd(), "-e", "SELECT 1"]),
        timeout=60,
        port=port,
    )


def ensure_accounting_db() -> None:
    """The slurmdbd database and user; plain idempotent SQL, cheap enough for every up."""
    pw = db_password()
    sql = f"CREATE DATABASE IF NOT EXISTS {DB_NAME};\n"
    for host in ("127.0.0.1", "localhost"):
        sql += (
            f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY '{pw}';\n"
            f"ALTER USER 'slurm'@'{host}' IDENTIFIED BY '{pw}';\n"
            f"GRANT ALL ON {DB_NAME}.* TO 'slurm'@'{host}';\n"
        )
    try:
        run(mysql_cmd(), input_text=sql)
    except subprocess.CalledProcessError as e:
        raise PlatformError("mariadb", f"creating the accounting database failed: {e.stderr}") from e


# --------------------------------------------------------------------------- Slurm


def slurm_conf(ports: Mapping[str, int]) -> str:
    s = P.slurm
    nodes = ",".join(n.name for n in NODES)
    return f"""# Slurm on loopback for ucim, two nodes on this host; written by hack/local_platform.py.
ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=slurm
SlurmctldPort={ports["slurmctld"]}
# Each node's own Port (below) overrides this.
SlurmdPort={ports["slurmd"]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={P.munge_socket}
StateSaveLocation={s / "state"}
# %n: the node's name; every slurmd needs its own spool and pid file.
SlurmdSpoolDir={s / "spool" / "%n"}
SlurmctldPidFile={s / "run" / "slurmctld.pid"}
SlurmdPidFile={s / "run" / "slurmd-%n.pid"}
# No systemd and no cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job takes the node's whole memory and jobs run one at a time.
DefMemPerCPU=100
# Batch jobs start on a 1 s instead of a 3 s cadence.
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MailProg=/bin/true
# ucim's Slurm hook (deploy/controller/ucim-slurm-hook): tells the bridge when a job starts and ends.
PrologSlurmctld={hook_program()}
EpilogSlurmctld={hook_program()}
MinJobAge=300
{first_job_id_line()}KillWait=5
# Refuse at sbatch time a job that breaks a partition limit, instead of leaving it pending forever.
EnforcePartLimits=ALL
PrivateData=jobs,usage
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports["slurmdbd"]}
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass={P.munge_socket}
JobCompType=jobcomp/none
# What a UCloud site needs for ucim's accounting (docs/install.md, "Slurm accounting"): a job
# needs an association; its account's MaxJobs=0 (a locked wallet) and GrpTRESMins=billing=<quota>
# hold; safe starts a job only if it can finish within what is left of the quota.
AccountingStorageEnforce=associations,limits,qos,safe
# multifactor keeps each association's usage (sshare's GrpTRESRaw), which ucim reports to
# UCloud; no decay and no reset: the usage counts against the allocation until UCloud changes it.
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=NONE
PriorityWeightFairshare=10000
# A job starts with its user's groups as Slurm cached them, for GroupUpdateTime (600 s by default): a new
# project member's job could not enter the project's folder for that long. 0: looked up at every launch.
GroupUpdateTime=0
SlurmctldDebug=info
SlurmdDebug=info
# More job slots than the real cores; config_overrides keeps the node from going INVAL.
SlurmdParameters=config_overrides
{node_lines(ports)}# Billing = CPUs, so billing-minutes (GrpTRESMins, GrpTRESRaw) are core-minutes, UCloud's unit.
# billing is one of the TRES Slurm always tracks: AccountingStorageTRES need not name it.
PartitionName=normal Nodes={nodes} Default=YES MaxTime=1-00:00:00 State=UP TRESBillingWeights="CPU=1.0"
PartitionName=short Nodes={nodes} MaxTime=00:01:00 State=UP TRESBillingWeights="CPU=1.0"
"""


def node_lines(ports: Mapping[str, int]) -> str:
    """The NodeName lines: each node as big as the single node was, so every job that fit it fits each.

    localhost comes last: while the one node read so far is named "localhost", Slurm's node lookup
    answers every name with it (``_find_node_record`` in src/common/node_conf.c), so slurmctld would
    refuse the next node as a "Duplicated NodeHostName".
    """
    lines = [
        f"NodeName={n.name} NodeAddr=127.0.0.1 Port={ports[n.daemon]} CPUs=8 RealMemory=2000 "
        f"Weight={n.weight} State=UNKNOWN\n"
        for n in sorted(NODES, key=lambda n: n.name == "localhost")
    ]
    return "".join(lines)


def first_job_id_line() -> str:
    """``FirstJobId=<n>`` once a restart after a crash needed it (see number_past_forgotten_jobs), else nothing."""
    path = P.slurm / "first-job-id"
    return f"FirstJobId={path.read_text().strip()}\n" if path.exists() else ""


def number_past_forgotten_jobs(ports: Mapping[str, int]) -> bool:
    """Before slurmctld starts: make it number new jobs past every job whose files it wrote; True if that changed.

    slurmctld writes a job's script as it accepts the job but saves its job state only a few
    seconds later. Killed in between, it comes back without those jobs and hands their ids out
    again; slurmd, which may still run the forgotten jobs, then refuses the new ones as
    duplicates and slurmctld drains the node ("Duplicate jobid") until an admin resumes it.
    Starting past the highest id in its state directory (``FirstJobId``, which only ever
    raises the next id) is what Slurm's admins do after losing state.
    """
    ids = [int(d.name[4:]) for d in (P.slurm / "state").glob("hash.*/job.*") if d.name[4:].isdigit()]
    record = P.slurm / "first-job-id"
    first = int(record.read_text()) if record.exists() else 0
    if not ids or max(ids) < first:
        return False
    write_if_changed(record, f"{max(ids) + 1}\n")
    write_slurm_configs(ports)
    say(f"slurmctld: new jobs numbered from {max(ids) + 1} (past the jobs it may have forgotten)")
    return True


def end_runs_slurmd_no_longer_has(started_before: float) -> None:
    """After slurmctld started: cancel the jobs it has running since before that which slurmd does not run.

    Killed a moment after a job ended, slurmctld comes back from state saved while the job still
    ran, and it holds the job's CPUs and memory until slurmd's next registration, minutes later,
    says otherwise: every job behind it waits. slurmd runs here, so its batch steps are this
    machine's ``slurmstepd: [<id>.batch]`` processes.
    """
    listing = run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %S"], check=False, timeout=10).stdout.split("\n")
    running = {line.split()[0]: line.split()[1] for line in listing if len(line.split()) == 2}
    steps = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
            if words[0].startswith("slurmstepd: [") and words[0].endswith(".batch]"):
                steps.add(words[0].removeprefix("slurmstepd: [").removesuffix(".batch]"))
    gone = []
    for job_id, start in running.items():
        with contextlib.suppress(ValueError):
            if time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S")) < started_before and job_id not in steps:
                gone.append(job_id)
    if gone:
        run(["scancel", *gone], check=False, timeout=30)
        say(f"slurmctld: cancelled {len(gone)} job(s) it had running from before its start, which slurmd did not run")


def resume_after_duplicates(watch_seconds: float = 10) -> None:
    """For a while after slurmctld started: resume the node if it was drained for a duplicate job, and release its job.

    Killed a moment after it launched a job, slurmctld comes back from state saved while the job
    was pending and launches it again; slurmd refuses the second copy ("already running"),
    slurmctld drains the node ("Duplicate jobid") and holds the job ("launch failed requeued
    held"). Every later job would wait for an admin; this is what the admin does. It happens at
    the scheduler's first passes, so the node is watched for ``watch_seconds``.
    """
    deadline = time.monotonic() + watch_seconds
    while time.monotonic() < deadline:
        for node in run(["sinfo", "-h", "-N", "-o", "%N|%T|%E"], check=False, timeout=10).stdout.splitlines():
            name = node.split("|")[0]
            if "drain" in node and "Duplicate jobid" in node:
                run(["scontrol", "update", f"nodename={name}", "state=resume"], check=False, timeout=10)
                say(f"slurmctld: resumed {name}, which it drained for a job it launched twice")
        pending = run(["squeue", "-h", "-t", "PENDING", "-o", "%i|%r"], check=False, timeout=10).stdout.splitlines()
        held = [line.split("|")[0] for line in pending if "requeued held" in line]
        if held:
            run(["scontrol", "release", ",".join(held)], check=False, timeout=10)
            say(f"slurmctld: released {len(held)} job(s) it held after launching them twice")
        time.sleep(0.5)


def ensure_slurmctld(ports: Mapping[str, int]) -> bool:
    """Start slurmctld unless it runs, setting right what a crash left (the functions above); True if started.

    Both are what an admin does after slurmctld was killed; the fault drills kill it.
    """
    daemon = slurmctld_daemon(ports["slurmctld"])
    began = time.time() - 1  # squeue's times are whole seconds
    # `down` removes the pid file; a pid file of a dead slurmctld means it was killed (a crash, a drill).
    crashed = daemon.pid_file.exists() and running_pid(daemon.name, daemon.exe) is None
    renumbered = running_pid(daemon.name, daemon.exe) is None and number_past_forgotten_jobs(ports)
    started = ensure(daemon)
    if started and (pid := running_pid(daemon.name, daemon.exe)) is not None:
        record_started_with(pid)
    if renumbered and any(running_pid(d.name, d.exe) is not None for d in slurmd_daemons(ports)):
        run(["scontrol", "reconfigure"])  # slurmd reads the same slurm.conf again
    if started:
        end_runs_slurmd_no_longer_has(began)
    if started and crashed:
        resume_after_duplicates()
    return started


def slurmdbd_conf(ports: Mapping[str, int]) -> str:
    return f"""# slurmdbd for ucim; written by hack/local_platform.py. 0600, owned by slurm.
AuthType=auth/munge
AuthInfo=socket={P.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["slurmdbd"]}
SlurmUser=slurm
PidFile={P.slurm / "run" / "slurmdbd.pid"}
DebugLevel=info
# sacct shows users their own jobs only, like squeue with PrivateData in slurm.conf.
PrivateData=jobs,usage
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass={db_password()}
StorageLoc={DB_NAME}
"""


HOOK_SOURCE = REPO / "deploy" / "controller" / "ucim-slurm-hook"


def hook_program() -> Path:
    return P.slurm / "ucim-slurm-hook"


def write_hook(ports: Mapping[str, int]) -> None:
    """ucim's Slurm hook and its settings, as a site installs them on its controller (docs/operations.md).

    Root's, readable by slurmctld's SlurmUser; the bridge of a test stack listens on the platform's hook port.
    """
    write_if_changed(hook_program(), HOOK_SOURCE.read_text(), 0o755)
    targets = f"targets=127.0.0.1:{ports['slurm_hook']}\nmunge_socket={P.munge_socket}\n"
    write_if_changed(Path(f"{hook_program()}.conf"), targets)


def write_slurm_configs(ports: Mapping[str, int]) -> bool:
    """Write slurm.conf and slurmdbd.conf (and the hook slurm.conf names); True if slurm.conf changed."""
    make_dir(P.slurm)
    make_dir(P.slurm / "state", 0o755, "slurm")
    make_dir(P.slurm / "run", 0o755, "slurm")
    make_dir(P.slurm / "spool", 0o755)
    write_hook(ports)
    write_if_changed(P.slurm / "slurmdbd.conf", slurmdbd_conf(ports), mode=0o600, owner="slurm")
    return write_if_changed(P.slurm_conf, slurm_conf(ports))


def slurmdbd_daemon(port: int) -> Daemon:
    # It listens only once its database is usable; sacctmgr (~0.2 s a call) checks the rest.
    return Daemon(
        name="slurmdbd", argv=["/usr/sbin/slurmdbd", "-D"], ready=lambda: port_open(port), timeout=60, port=port
    )


def sacctmgr(*args: str) -> str:
    try:
        return run(["sacctmgr", "-i", "-n", "-P", *args], timeout=30).stdout
    except subprocess.CalledProcessError as e:
        raise PlatformError("slurmdbd", f"sacctmgr {' '.join(args)}: {e.stderr}", P.logs / "slurmdbd.log") from e


def ensure_associations() -> None:
    """Cluster, project account and alice/bob associations.

    AccountingStorageEnforce refuses the jobs of a user without an association, so every user
    who submits needs one: alice and bob (tests, benchmarks, the soak), root (benchmarks; its
    association in account root comes with the cluster). nologinuser never gets as far as Slurm.
    One listing answers all three questions (each sacctmgr call costs ~0.2 s).
    """
    listing = sacctmgr("list", "assoc", "format=cluster,account,user")
    assocs = {tuple(line.split("|")) for line in listing.splitlines()}
    if not any(a[0] == CLUSTER for a in assocs):
        sacctmgr("add", "cluster", CLUSTER)
    if (CLUSTER, ACCOUNT, "") not in assocs:
        sacctmgr("add", "account", ACCOUNT, f"cluster={CLUSTER}", "description=ucim", "organization=ucim")
    users = [u.name for u in USERS if u.in_project and (CLUSTER, ACCOUNT, u.name) not in assocs]
    if users:
        account = f"account={ACCOUNT}"
        sacctmgr("add", "user", ",".join(users), account, f"default{account}", f"cluster={CLUSTER}")


def slurmctld_daemon(port: int) -> Daemon:
    def pings() -> bool:
        try:
            return "UP" in run(["scontrol", "ping"], check=False, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False

    return Daemon(name="slurmctld", argv=["/usr/sbin/slurmctld", "-D"], ready=pings, timeout=60, port=port)


def node_state(node: str) -> str:
    try:
        return run(["sinfo", "-h", "-n", node, "-o", "%T"], check=False, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def slurmd_daemon(node: Node, port: int) -> Daemon:
    # Busy states count: a warm `up` while jobs run is fine.
    return Daemon(
        name=node.daemon,
        argv=["/usr/sbin/slurmd", "-D", "-N", node.name],
        ready=lambda: node_state(node.name) in ("idle", "mixed", "allocated", "completing"),
        timeout=60,
        port=port,
    )


def slurmd_daemons(ports: Mapping[str, int]) -> list[Daemon]:
    return [slurmd_daemon(n, ports[n.daemon]) for n in NODES]


def smoke_test() -> None:
    """A real job as alice on every node: proves auth, scheduling, launch and user switching."""
    start = time.monotonic()
    nodes = str(len(NODES))
    try:
        run(["runuser", "-u", "alice", "--", "srun", "-t", "1", "-N", nodes, "-n", nodes, "true"], cwd="/", timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else "timed out"
        raise PlatformError("slurmd", f"'srun -N {nodes} true' as alice failed: {detail}", P.logs / "slurmd.log") from e
    say(f"srun -N {nodes} true as alice ok ({time.monotonic() - start:.1f} s)")


# Settings slurmctld takes only when it starts, with Slurm's defaults. slurm.conf(5) says so of
# AccountingStorageEnforce; on 22.05 `scontrol reconfigure` makes `scontrol show config` print the
# new values of both while slurmctld goes on without enforcement and with its old priority plugin.
# PrologSlurmctld and EpilogSlurmctld too: 22.05's prep/script plugin reads them when it loads, so after a
# reconfigure `scontrol show config` names the hook while slurmctld never runs it.
RESTART_ONLY = {
    "AccountingStorageEnforce": "none",
    "PriorityType": "priority/basic",
    "PrologSlurmctld": "",
    "EpilogSlurmctld": "",
}
# The nodes too (all NodeName lines as one value), and the slurmd as well: slurm.conf(5), "changes in
# node configuration (e.g. adding nodes ...) require restarting both the slurmctld daemon and the
# slurmd daemons"; a reconfigure that changes the node count kills 22.05's slurmctld ("fatal:
# MaxNodeCount has changed (1->2) during reconfig, slurmctld must be restarted").
NODE_LINES = "NodeName"


def restart_only_settings() -> dict[str, str]:
    """The RESTART_ONLY settings and the NODE_LINES of slurm.conf as it is on disk."""
    pairs = [line.split("=", 1) for line in P.slurm_conf.read_text().splitlines() if "=" in line]
    nodes = "; ".join(v for k, v in pairs if k == NODE_LINES)
    return {**RESTART_ONLY, **{k: v for k, v in pairs if k in RESTART_ONLY}, NODE_LINES: nodes}


def record_started_with(pid: int) -> None:
    """Remember the RESTART_ONLY settings slurmctld (pid) read as it started."""
    write_if_changed(P.slurm / "slurmctld-started-with.json", json.dumps({"pid": pid, **restart_only_settings()}))


def restart_only_changes(ports: Mapping[str, int]) -> list[str]:
    """The RESTART_ONLY settings slurm.conf changed since the running slurmctld started (all if unknown)."""
    daemon = slurmctld_daemon(ports["slurmctld"])
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((P.slurm / "slurmctld-started-with.json").read_text())
        if record.get("pid") == running_pid(daemon.name, daemon.exe):
            return [k for k, v in restart_only_settings().items() if record.get(k) != v]
    return [*RESTART_ONLY, NODE_LINES]  # started by an older `up` or by hand: what it read is unknown


def restart_slurmctld(ports: Mapping[str, int], settings: Sequence[str]) -> None:
    """Stop slurmctld (it saves its state; running jobs go on under slurmd) and start it again.

    When the nodes changed, the slurmd are stopped too; ``up`` starts them again after this.
    """
    stop_daemon(slurmctld_daemon(ports["slurmctld"]))  # removes the pid file: a stop, not a crash
    if NODE_LINES in settings:
        for slurmd in slurmd_daemons(ports):
            stop_daemon(slurmd)
    ensure_slurmctld(ports)
    say(f"slurmctld restarted: only a restart applies slurm.conf's {', '.join(settings)}")


def up_slurm(ports: Mapping[str, int]) -> None:
    conf_changed = write_slurm_configs(ports)
    prepare_munge()
    started = ensure(munge_daemon())
    prepare_mariadb(ports["mariadb"])
    started |= ensure(mariadb_daemon(ports["mariadb"]))
    ensure_accounting_db()
    started |= ensure(slurmdbd_daemon(ports["slurmdbd"]))
    ensure_associations()  # before slurmctld, so it registers with a known cluster
    ctld_started = ensure_slurmctld(ports)
    # Against what slurmctld read, not the old file: an `up` stopped before the restart is caught too.
    if not ctld_started and (stale := restart_only_changes(ports)):
        restart_slurmctld(ports, stale)
        started = True  # the smoke test proves jobs still run under the new settings
    if conf_changed and not ctld_started:
        run(["scontrol", "reconfigure"])  # a running slurmctld and slurmd re-read the new slurm.conf
        say("slurm.conf changed: scontrol reconfigure")
    started |= ctld_started
    for slurmd in slurmd_daemons(ports):
        started |= ensure(slurmd)
    if started:
        smoke_test()


# --------------------------------------------------------------------------- modules and applications
#
# The site's software, as a UCloud provider's load instructions and module picker see it. Debian's
# lmod (hack/install-deps.sh) defines `module` in every login shell through its profile script, and a
# UCloud job's script is one (`#!/usr/bin/env -S bash --login`). That script builds MODULEPATH from
# /etc/lmod/modulespath (a conffile of the package, left alone) unless the shell inherited one (a job
# inherits its submitter's environment); PROFILE_HOOK, a profile script of the platform's own, adds the
# platform's tree in both cases, the way a site sets its MODULEPATH in /etc/profile.d.

LMOD_PROFILE = Path("/etc/profile.d/lmod.sh")
LMOD_SPIDER = Path("/usr/share/lmod/lmod/libexec/spider")
PROFILE_HOOK = Path("/etc/profile.d/ucim-platform-modules.sh")
PROBE = "ucim-probe"
PROBE_VERSIONS = ("1.0.0", "1.2.3", "2.0.0")


def probe_modulefile(version: str) -> str:
    """The Lua modulefile of one version: its variable, and its bin directory on PATH."""
    return f"""-- {PROBE} {version}: the local platform's probe module (written by hack/local_platform.py).
help([[{PROBE} {version} prints its version: a job proves which version `module load` gave it.]])
whatis("Description: ucim's probe module, which prints the version a job loaded.")
whatis("URL: https://lmod.readthedocs.io/en/latest/015_writing_modules.html")
setenv("UCIM_PROBE_VERSION", "{version}")
prepend_path("PATH", "{P.software / PROBE / version / "bin"}")
"""


def probe_program(version: str) -> str:
    return f'#!/bin/sh\necho "{PROBE} {version}"\n'


# The load instructions, in the anchor's applications/ format (PROTOCOL-APPS §1), by file name.
# Rendered, {{ appVersion }} prints bash-quoted (`module load ucim-probe/'1.2.3'`): bash removes the quotes
# before `module` sees its argument.
APPLICATIONS = {
    "ucim-probe.yml": """# Load instructions of the platform's probe module (written by hack/local_platform.py).
name: ucim-probe
configurations:
  - versions: ["1.0.0", "1.2.3"]
    load: |
      module load ucim-probe/{{ appVersion }}
    unload: |
      module unload ucim-probe/{{ appVersion }}
    readme: |
      ucim-probe 1 from the platform's Lmod tree: `ucim-probe` prints the version loaded, and so does
      $UCIM_PROBE_VERSION.
  - versions: ["2.0.0"]
    load: |
      module load ucim-probe/{{ appVersion }}
    unload: |
      module unload ucim-probe/{{ appVersion }}
    readme: |
      ucim-probe 2 from the platform's Lmod tree, a major version apart from 1.x.
""",
    "python.yml": """# Load instructions of python, for PROTOCOL-APPS §11's example (written by hack/local_platform.py).
# No module: the platform's own python3 (Debian's) is on every node's PATH.
name: python
configurations:
  - versions: ["3.11.4", "3.12.1"]
    load: |
      echo Using python {{ appVersion }}: $(python3 --version) >&2
    readme: |
      Python is the platform's own python3, on every node's PATH.
""",
    "ucim-testing.yml": f"""# Load instructions of ucim's own test programs (written by hack/local_platform.py):
# the catalogue's web-echo runs `python3 -m ucim.testing.web_app` from this repository,
# on Debian's python3 and python3-aiohttp.
name: ucim-testing
configurations:
  - versions: ["1"]
    load: |
      export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}
    readme: |
      ucim's test programs (ucim.testing), from the repository the local platform runs.
""",
}


def profile_hook() -> str:
    tree = shlex.quote(str(P.module_path))
    return f"""# The local platform's module tree on MODULEPATH, for login shells (a Slurm job's is one).
# Written by `hack/local_platform.py up` for {P.run}; its `down` removes it.
ucim_modules={tree}
if [ -d "$ucim_modules" ]; then
  case ":${{MODULEPATH:-}}:" in
    *":$ucim_modules:"*) ;;
    *) export MODULEPATH="${{MODULEPATH:+$MODULEPATH:}}$ucim_modules" ;;
  esac
fi
unset ucim_modules
"""


def install_profile_hook() -> None:
    if write_if_changed(PROFILE_HOOK, profile_hook()):
        say(f"modules: {PROFILE_HOOK} puts {P.module_path} on login shells' MODULEPATH")


def remove_profile_hook() -> None:
    """Remove PROFILE_HOOK if this run directory wrote it."""
    with contextlib.suppress(FileNotFoundError):
        if str(P.module_path) in PROFILE_HOOK.read_text():
            PROFILE_HOOK.unlink()
            say(f"modules: removed {PROFILE_HOOK}")


def write_spider_json() -> None:
    """Lmod's spider JSON of the tree; sorted, since spider prints keys and packages in hash order."""
    result = run([LMOD_SPIDER, "-o", "jsonSoftwarePage", P.module_path], timeout=30)
    groups = sorted(json.loads(result.stdout), key=lambda group: str(group["package"]))
    write_if_changed(P.modules_file, json.dumps(groups, indent=2, sort_keys=True) + "\n")


def up_modules() -> None:
    """The module tree, its spider JSON, the load instructions and the profile hook; writes only what changed."""
    changed = False
    for d in (P.modules, P.module_path, P.module_path / PROBE, P.software, P.software / PROBE):
        make_dir(d)
    for version in PROBE_VERSIONS:
        bin_dir = make_dir(make_dir(P.software / PROBE / version) / "bin")
        changed |= write_if_changed(bin_dir / PROBE, probe_program(version), mode=0o755)
        changed |= write_if_changed(P.module_path / PROBE / f"{version}.lua", probe_modulefile(version))
    if changed or not P.modules_file.exists():
        write_spider_json()
        say(f"modules: {PROBE} {', '.join(PROBE_VERSIONS)} in {P.module_path}; spider JSON in {P.modules_file}")
    make_dir(P.applications)
    for name, content in APPLICATIONS.items():
        if write_if_changed(P.applications / name, content):
            say(f"applications: {P.applications / name}")
    install_profile_hook()


# --------------------------------------------------------------------------- env file


def write_env(bin_dir: Path, ports: Mapping[str, int]) -> None:
    values = {
        "KUBECONFIG": str(P.kubeconfig),
        "SLURM_CONF": str(P.slurm_conf),
        "UCIM_RUN_DIR": str(P.run),
        "UCIM_BIN_DIR": str(bin_dir),
        "UCIM_KUBE_SERVER": f"https://127.0.0.1:{ports['apiserver']}",
        "UCIM_KUBE_CA": str(P.pki / "ca.crt"),
        "UCIM_SA_KEY": str(P.pki / "sa.key"),
        "UCIM_SA_ISSUER": SA_ISSUER,
        "UCIM_K8S_VERSION": k8s_version(),
        "UCIM_SLURM_CLUSTER": CLUSTER,
        "UCIM_SLURM_ACCOUNT": ACCOUNT,
        "UCIM_SLURM_NODES": ",".join(n.name for n in NODES),
        "UCIM_MODULES_DIR": str(P.module_path),
        "UCIM_MODULES_FILE": str(P.modules_file),
        "UCIM_APPLICATIONS_DIR": str(P.applications),
        "UCIM_SLURM_HOOK_PORT": str(ports["slurm_hook"]),
        "UCIM_MUNGE_SOCKET": str(P.munge_socket),
    }
    content = "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    write_if_changed(P.env_file, content)


# --------------------------------------------------------------------------- commands


def all_daemons() -> list[Daemon]:
    """Every daemon in start order, as recorded by the last `up` (for status and down)."""
    bin_dir, ports = recorded_bin_dir(), load_ports()
    return [
        etcd_daemon(bin_dir, ports),
        apiserver_daemon(bin_dir, ports),
        controller_manager_daemon(bin_dir),
        munge_daemon(),
        mariadb_daemon(ports["mariadb"]),
        slurmdbd_daemon(ports["slurmdbd"]),
        slurmctld_daemon(ports["slurmctld"]),
        *slurmd_daemons(ports),
    ]


def recorded_bin_dir() -> Path:
    """The binaries `up` started: pids are checked against these paths, not a newer build."""
    record = P.run / "bin-dir"
    return Path(record.read_text().strip()) if record.exists() else (CACHE / "bin" / "current").resolve()


def cmd_up() -> int:
    start = time.monotonic()
    check_prerequisites()
    for d in (P.run, P.pids, P.logs):
        make_dir(d)
    with exclusive():
        return up_everything(start)


def up_everything(start: float) -> int:
    bin_dir = build_binaries()
    write_if_changed(P.run / "bin-dir", f"{bin_dir}\n")
    ports = load_ports()
    ensure_users()
    os.environ["SLURM_CONF"] = str(P.slurm_conf)
    up_kubernetes(bin_dir, ports)
    up_modules()
    up_slurm(ports)
    write_env(bin_dir, ports)
    say(f"ready in {time.monotonic() - start:.1f} s; env in {P.env_file}")
    return 0


def cancel_jobs() -> None:
    """Cancel every job and wait (bounded) for an empty queue: running steps would outlive slurmd."""
    try:
        jobs = run(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return  # slurmctld is not answering: nothing to cancel through it
    if not jobs:
        return
    start = time.monotonic()
    run(["scancel", *jobs], check=False, timeout=30)
    deadline = start + 30
    while time.monotonic() < deadline:
        if not run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split():
            say(f"cancelled {len(jobs)} job(s) ({time.monotonic() - start:.1f} s)")
            return
        time.sleep(0.5)
    say("queue still not empty after 30 s; stopping anyway")


def stop_daemon(daemon: Daemon) -> int | None:
    """Stop the daemon if its pid file names a live process of its executable; its pid if so."""
    pid = running_pid(daemon.name, daemon.exe)
    daemon.pid_file.unlink(missing_ok=True)
    if pid is not None:
        stop_pid(daemon.name, pid)
    return pid


def wait_reaped(pids: Sequence[int], timeout: float = 3) -> None:
    """Give init a moment to reap the dead daemons, so `ps` right after shows no zombies."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_all() -> None:
    """Cancel jobs, stop daemons in reverse start order, then whatever they left behind."""
    os.environ["SLURM_CONF"] = str(P.slurm_conf)
    daemons = all_daemons()
    slurmctld = next(d for d in daemons if d.name == "slurmctld")
    if running_pid(slurmctld.name, slurmctld.exe):
        cancel_jobs()
    stopped = [pid for d in reversed(daemons) if (pid := stop_daemon(d)) is not None]
    # slurmstepd of steps that did not end, or anything else carrying our marker.
    for pid in marked_processes():
        stop_pid(f"leftover {pid_exe(pid)}", pid, grace=5)
        stopped.append(pid)
    if stopped:
        wait_reaped(stopped)
    else:
        say("nothing was running")


def cmd_down(purge: bool) -> int:
    if not P.run.exists():
        say(f"nothing to stop ({P.run} does not exist)")
        return 0
    with exclusive():
        if P.ports_file.exists():
            stop_all()
        else:
            say(f"nothing to stop ({P.run} was never set up)")
        remove_profile_hook()  # the one thing `up` writes outside the run directory
    if purge:
        shutil.rmtree(P.run)
        say(f"removed {P.run}")
    return 0


def cmd_status() -> int:
    if not P.ports_file.exists():
        say(f"not set up ({P.ports_file} missing)")
        return 1
    ok = True
    for d in all_daemons():
        pid = running_pid(d.name, d.exe)
        ok &= pid is not None
        state = f"running  pid {pid:<7}" if pid else "stopped           "
        port = f"port {d.port}" if d.port else ""
        print(f"{d.name:<24} {state} {port}".rstrip())
    return 0 if ok else 1


# Daemons by the names `kill` and `start` take; `all_daemons()` gives their start order.
def daemons_named(names: Sequence[str]) -> list[Daemon]:
    """The named daemons in start order (all of them for no names); PlatformError for an unknown name."""
    daemons = all_daemons()
    known = {d.name for d in daemons}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlatformError(unknown[0], f"no such daemon; the daemons are {', '.join(d.name for d in daemons)}")
    return [d for d in daemons if not names or d.name in names]


def dead(pid: int) -> bool:
    return pid_exe(pid) is None


def cmd_kill(names: Sequence[str], timeout: float = 10) -> int:
    """SIGKILL the named daemons, as a crash would, and wait (bounded) until they are gone; idempotent.

    Nothing else is touched: the pid files stay (they name dead processes, which `status` shows
    as stopped), and a later `start` or `up` starts the daemons again the way `up` does.
    """
    if not P.ports_file.exists():
        raise PlatformError("kill", f"not set up ({P.ports_file} missing)")
    with exclusive():
        for daemon in reversed(daemons_named(names)):
            pid = running_pid(daemon.name, daemon.exe)
            if pid is None:
                say(f"{daemon.name} not running")
                continue
            start = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(f"{daemon.name} (pid {pid}) to die", partial(dead, pid), timeout)
            say(f"{daemon.name} killed (pid {pid}, {time.monotonic() - start:.1f} s)")
    return 0


def cmd_start(names: Sequence[str]) -> int:
    """Start the named daemons (all for none) that are not running, in `up`'s order, each until it is ready.

    Only the daemons: the binaries, users, PKI, configs and CRDs are `up`'s (it must have run once).
    """
    if not P.ports_file.exists() or not (P.run / "bin-dir").exists():
        raise PlatformError("start", "the platform was never brought up: run `make platform-up` first")
    os.environ["SLURM_CONF"] = str(P.slurm_conf)
    start = time.monotonic()
    ports = load_ports()
    with exclusive():
        if P.module_path.exists():
            install_profile_hook()  # `down` removed it
        for daemon in daemons_named(names):
            if daemon.name == "slurmctld":
                ensure_slurmctld(ports)
            else:
                ensure(daemon)
    say(f"started in {time.monotonic() - start:.1f} s")
    return 0


def cmd_env() -> int:
    if not P.env_file.exists():
        print(f"platform: {P.env_file} missing: run `make platform-up` first", file=sys.stderr)
        return 1
    sys.stdout.write(P.env_file.read_text())
    return 0


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise PlatformError(command, "run as root (it creates users and starts Slurm)")


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """One `up`/`down` at a time: parallel test sessions may all call `make platform-up`."""
    with (P.run / "lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another local_platform.py up/down to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything that is not running; idempotent")
    down = sub.add_parser("down", help="cancel jobs and stop every daemon")
    down.add_argument("--purge", action="store_true", help="also remove the run directory")
    sub.add_parser("status", help="one line per component; exit 0 iff all run")
    sub.add_parser("env", help="print platform.env")
    kill = sub.add_parser("kill", help="SIGKILL daemons (as a crash would) and wait until they are gone")
    kill.add_argument("daemons", nargs="+", metavar="DAEMON", help="etcd, kube-apiserver, slurmctld, ...")
    start = sub.add_parser("start", help="start daemons that are not running (all of them without names)")
    start.add_argument("daemons", nargs="*", metavar="DAEMON")
    args = parser.parse_args(argv)
    # Daemons and admin tools live in sbin, which a non-login root shell may lack.
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])
    commands: dict[str, Callable[[], int]] = {
        "up": cmd_up,
        "down": lambda: cmd_down(args.purge),
        "kill": lambda: cmd_kill(args.daemons),
        "start": lambda: cmd_start(args.daemons),
        "status": cmd_status,
        "env": cmd_env,
    }
    try:
        if args.command in ("up", "down", "kill", "start"):
            require_root(args.command)
        return commands[args.command]()
    except PlatformError as e:
        print(f"platform: FAILED: {e}", file=sys.stderr)
        if e.log is not None:
            print(f"--- last lines of {e.log}:\n{tail(e.log)}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"platform: FAILED: {shlex.join(e.cmd)} exited {e.returncode}: {e.stderr}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

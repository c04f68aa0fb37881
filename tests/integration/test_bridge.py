"""``ucim-bridge`` against the real apiserver, Slurm and users: UserInstance → Ready → jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.platform import Platform
from ucim.common.resources import cluster_labels
from ucim.slurm_bridge.mapping import Mapper, MappingRefusedError, MappingSettings
from ucim.testing.core_standin import instance_application
from ucim.testing.stack import free_port

pytestmark = pytest.mark.integration

TOKEN = "it-" + uuid.uuid4().hex


def http(
    url: str, *, token: str | None = TOKEN, body: dict[str, Any] | None = None, auth: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    except (urllib.error.URLError, ConnectionError):
        return 0, None  # nothing listens (yet)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@dataclass
class Bridge:
    platform: Platform
    namespace: str
    env: dict[str, str]
    log: Path
    ingress: str
    metrics: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ucim.slurm_bridge.main"], env=self.env, stdout=log, stderr=log
            )
        wait_until(lambda: http(f"{self.metrics}/readyz", token=None)[0] == 200, 30, "the bridge to be ready")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def create(self, name: str, username: str, idle: int = 0) -> None:
        manifest = {
            "apiVersion": "ucim.io/v1alpha1",
            "kind": "UserInstance",
            "metadata": {"name": name, "labels": cluster_labels(self.env["UCIM_BRIDGE_CLUSTER"])},
            "spec": {
                "ucloudUsername": username,
                "cluster": self.env["UCIM_BRIDGE_CLUSTER"],
                "idleTimeoutSeconds": idle,
            },
        }
        self.platform.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(manifest))

    def get(self, name: str) -> dict[str, Any]:
        return self.platform.get(self.namespace, f"userinstance/{name}")

    def wait_condition(self, name: str, status: str, reason: str, seconds: float = 15) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.get(name))
            ready = condition(found, "Ready")
            return ready is not None and (ready["status"], ready["reason"]) == (status, reason)

        wait_until(check, seconds, f"{name} to be Ready={status} ({reason}); last: {found.get('status')}")
        return found


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def bridge(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    tag = uuid.uuid4().hex[:8]
    namespace = f"ucim-bridge-{tag}"
    platform.kubectl("create", "namespace", namespace)
    folder = tmp_path_factory.mktemp("ucim-bridge")  # pytest keeps the last few runs' folders
    token_file = folder / "ingress-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ingress_port, metrics_port = free_port(), free_port()
    env = {
        **platform.process_env(),
        "UCIM_BRIDGE_NAMESPACE": namespace,
        "UCIM_BRIDGE_CLUSTER": f"it-{tag}",
        "UCIM_BRIDGE_INGRESS_PORT": str(ingress_port),
        "UCIM_BRIDGE_METRICS_PORT": str(metrics_port),
        "UCIM_BRIDGE_INGRESS_TOKEN_FILE": str(token_file),
        "UCIM_BRIDGE_SOCKET_DIR": f"/run/ucim/it-{tag}",
        "UCIM_BRIDGE_MONITOR_ENABLED": "false",
        "UCIM_BRIDGE_RESTART_BACKOFF_SECONDS": "1",
        "UCIM_BRIDGE_ACTIVITY_WRITE_INTERVAL_SECONDS": "1",
        "UCIM_BRIDGE_STOP_GRACE_SECONDS": "3",
        "UCIM_BRIDGE_MEMORY_INTERVAL_SECONDS": "0.2",
    }
    env.pop("UCIM_BRIDGE_INGRESS_TOKEN", None)
    started = Bridge(
        platform=platform,
        namespace=namespace,
        env=env,
        log=folder / "bridge.log",
        ingress=f"http://127.0.0.1:{ingress_port}",
        metrics=f"http://127.0.0.1:{metrics_port}",
    )
    try:
        started.start()
        yield started
    finally:
        if started.process is not None and started.process.poll() is None:
            code = started.stop()
            assert code == 0, started.log.read_text()[-5000:]
        print(started.log.read_text()[-20000:])
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        Path(env["UCIM_BRIDGE_SOCKET_DIR"]).rmdir()


def instance(bridge: Bridge, username: str, idle: int = 0) -> tuple[str, dict[str, Any]]:
    name = f"ui-{uuid.uuid4().hex[:8]}"
    bridge.create(name, username, idle)
    return name, bridge.wait_condition(name, "True", "InstanceServing")


def run_job(bridge: Bridge, endpoint: str, command: str, partition: str = "normal") -> tuple[int, Any, str]:
    job_id = f"br-{uuid.uuid4().hex[:10]}"
    body = {
        "jobId": job_id,
        "slurmJobName": f"ucloud-{job_id}",
        "application": instance_application("run-command"),
        "parameters": {"command": {"type": "text", "value": command}},
        "product": {"id": "cpu-1", "category": "cpu"},
        "resources": {"nodes": 1, "cpusPerNode": 1, "memoryMegabytesPerNode": 100, "timeLimitMinutes": 5},
        "slurm": {"partition": partition},
    }
    status, answer = http(f"{endpoint}/jobs/submit", body=body)
    return status, answer, job_id


def test_a_user_instance_becomes_ready_as_the_mapped_user(bridge: Bridge) -> None:
    created = time.monotonic()
    name, obj = instance(bridge, "alice#1234")
    took = time.monotonic() - created
    assert (obj["spec"]["localUser"], obj["spec"]["uid"]) == ("alice", 1101)
    status = obj["status"]
    assert status["endpoint"] == f"{bridge.ingress}/instances/{name}"
    assert condition(obj, "Mapped")["reason"] == "UserMapped"  # type: ignore[index]
    assert status["bridge"] and status["startedAt"] and status["lastActivityAt"]
    assert 0 < status["spawnDurationSeconds"] < 1
    assert "Uid:\t1101\t1101\t1101\t1101" in Path(f"/proc/{status['pid']}/status").read_text()
    assert took < 5, f"cold start took {took:.2f} s (polling with kubectl included)"


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of process ``pid`` contains ``needle`` (root reads /proc/pid/mem)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            addresses, perms, *rest = line.split()
            if not perms.startswith("r") or (rest and rest[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(a, 16) for a in addresses.split("-"))
            try:
                if needle in os.pread(fd, end - start, start):
                    return True
            except OSError:
                continue
    finally:
        os.close(fd)
    return False


def test_no_instance_holds_a_secret_of_the_bridge(bridge: Bridge) -> None:
    _, obj = instance(bridge, "alice#99")
    child = obj["status"]["pid"]
    fork_server = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert bridge.process is not None
    assert int(Path(f"/proc/{fork_server}/stat").read_text().rsplit(")", 1)[1].split()[1]) == bridge.process.pid
    # The fork server was started with PATH and LANG (and PYTHONPATH), nothing of the bridge's environment.
    for pid in (fork_server, child):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert {entry.split(b"=", 1)[0] for entry in environ if entry} <= {b"PATH", b"LANG", b"PYTHONPATH"}
    # The bridge holds the ingress token; neither the fork server nor an instance ever had it.
    assert memory_holds(bridge.process.pid, TOKEN.encode())
    assert not memory_holds(fork_server, TOKEN.encode())
    assert not memory_holds(child, TOKEN.encode())


def test_the_ingress_needs_the_token(bridge: Bridge) -> None:
    name, _ = instance(bridge, "bob#1")
    for url in (f"{bridge.ingress}/instances/{name}/healthz", f"{bridge.ingress}/instances/nothing/healthz"):
        for auth in (None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", TOKEN):
            status, body = http(url, token=None, auth=auth)
            assert status == 401, (url, auth)
            assert body["statusCode"] == 401
    assert http(f"{bridge.ingress}/instances/{name}/healthz")[0] == 200
    status, body = http(f"{bridge.ingress}/instances/nothing/healthz")
    assert status == 404
    assert "no instance 'nothing'" in body["why"]


def tunnel_calls(ingress: str, name: str, token: str, paths: list[str]) -> tuple[int, list[tuple[int, Any]]]:
    """Ask the ingress for a tunnel to ``name``; its status, and each GET of ``paths`` over it (one connection)."""
    host, port = ingress.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /instances/{name} HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {token}\r\n"
            "Connection: Upgrade\r\nUpgrade: ucim-instance\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)  # byte by byte: what follows the 101 is the instance's
        status = int(head.split()[1])
        answers = []
        for path in paths if status == 101 else []:
            connection = h11.Connection(h11.CLIENT)
            sock.sendall(connection.send(h11.Request(method="GET", target=path, headers=[("Host", "instance")])))
            sock.sendall(connection.send(h11.EndOfMessage()))
            code, body = 0, b""
            while not isinstance(event := connection.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    connection.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    code = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
            answers.append((code, json.loads(body)))
        return status, answers


def test_a_tunnel_reaches_the_users_instance_and_needs_the_token(bridge: Bridge) -> None:
    name, _ = instance(bridge, "alice#1234")
    status, answers = tunnel_calls(bridge.ingress, name, TOKEN, ["/healthz", "/healthz"])
    assert status == 101
    assert [code for code, _ in answers] == [200, 200]  # two calls, one kept-alive connection
    assert answers[0][1] == http(f"{bridge.ingress}/instances/{name}/healthz")[1]  # the same instance answered
    assert tunnel_calls(bridge.ingress, name, "wrong-token", ["/healthz"]) == (401, [])
    assert tunnel_calls(bridge.ingress, "nothing", TOKEN, ["/healthz"]) == (404, [])


def test_a_job_submitted_through_the_ingress_runs_as_alice(bridge: Bridge, platform: Platform) -> None:
    _, obj = instance(bridge, "alice#77")
    status, answer, job_id = run_job(bridge, obj["status"]["endpoint"], "id -un")
    assert status == 200, answer
    output = Path(f"/home/alice/ucloud-jobs/{job_id}/stdout.txt")
    wait_until(lambda: output.exists() and output.read_text() == "alice\n", 60, "the job's output")
    assert output.stat().st_uid == 1101
    owner = platform.run_as("alice", "squeue", "-h", "-t", "all", "-j", str(answer["slurmJobId"]), "-o", "%u")
    assert owner.stdout.strip() == "alice"


def test_sbatch_rejection_comes_back_as_a_readable_400(bridge: Bridge) -> None:
    _, obj = instance(bridge, "alice#78")
    status, answer, _ = run_job(bridge, obj["status"]["endpoint"], "true", partition="nonexistent")
    assert status == 400
    assert "partition does not exist" in answer["why"]


@pytest.mark.parametrize(
    ("username", "why"),
    [
        ("nologinuser#1", "may not log in"),
        ("ghost-user#9", "there is no local user 'ghost-user'"),
        ("root", "below the minimum 1000"),
        ("#1234", "no local username can be derived"),
    ],
)
def test_users_without_a_usable_account_are_refused(bridge: Bridge, username: str, why: str) -> None:
    name = f"ui-{uuid.uuid4().hex[:8]}"
    bridge.create(name, username)
    obj = bridge.wait_condition(name, "False", "MappingRefused")
    mapped = condition(obj, "Mapped")
    assert mapped is not None and mapped["status"] == "False"
    assert why in mapped["message"]
    assert "uid" not in obj["spec"]
    assert http(f"{bridge.ingress}/instances/{name}/healthz")[0] == 503


def test_an_instance_that_dies_is_restarted(bridge: Bridge) -> None:
    name, obj = instance(bridge, "bob#2")
    old = obj["status"]["pid"]
    os.kill(old, signal.SIGKILL)
    exited = bridge.wait_condition(name, "False", "InstanceExited")
    assert "exited with status -9" in condition(exited, "Ready")["message"]  # type: ignore[index]
    again = bridge.wait_condition(name, "True", "InstanceServing")
    assert again["status"]["pid"] != old
    assert http(f"{again['status']['endpoint']}/healthz")[0] == 200


def test_an_idle_instance_stops_and_starts_again_when_requested(bridge: Bridge) -> None:
    name, obj = instance(bridge, "alice#3", idle=2)
    pid, endpoint = obj["status"]["pid"], obj["status"]["endpoint"]
    stopped = bridge.wait_condition(name, "False", "IdleStopped", seconds=10)
    assert "pid" not in stopped["status"]
    wait_until(lambda: not alive(pid), 10, "the idle instance to exit")
    status, body = http(f"{endpoint}/healthz")
    assert status == 503
    assert "not running" in body["why"]
    bridge.platform.kubectl(
        "annotate", "-n", bridge.namespace, f"userinstance/{name}", f"ucim.io/requested-at={time.time()}"
    )
    again = bridge.wait_condition(name, "True", "InstanceServing")
    assert again["status"]["pid"] != pid
    assert http(f"{endpoint}/healthz")[0] == 200


def test_requests_keep_an_instance_alive_and_are_recorded(bridge: Bridge) -> None:
    name, obj = instance(bridge, "bob#4", idle=3)
    first_activity = obj["status"]["lastActivityAt"]
    for _ in range(6):
        assert http(f"{obj['status']['endpoint']}/healthz")[0] == 200
        time.sleep(1)
    now = bridge.get(name)
    assert condition(now, "Ready")["status"] == "True"  # type: ignore[index]
    assert now["status"]["pid"] == obj["status"]["pid"]
    assert now["status"]["lastActivityAt"] > first_activity


def test_deleting_a_user_instance_stops_its_instance(bridge: Bridge) -> None:
    name, obj = instance(bridge, "alice#5")
    bridge.platform.kubectl("delete", "-n", bridge.namespace, f"userinstance/{name}")
    wait_until(lambda: not alive(obj["status"]["pid"]), 10, "the instance to stop")
    wait_until(lambda: http(f"{bridge.ingress}/instances/{name}/healthz")[0] == 404, 10, "its route to go")


def test_the_bridge_exports_its_metrics(bridge: Bridge) -> None:
    status, text = http(f"{bridge.metrics}/metrics", token=None)
    assert status == 200
    for line in (
        'ucim_instance_spawns_total{result="ok"}',
        'ucim_instance_spawns_total{result="refused"}',
        "ucim_instance_spawn_duration_seconds_bucket",
        "ucim_instances_running ",
        'ucim_ingress_requests_total{code="401"}',
        'ucim_ingress_requests_total{code="200"}',
    ):
        assert line in text, line
    assert "alice" not in text and "bob" not in text


def test_the_bridge_measures_what_its_instances_take(bridge: Bridge) -> None:
    instance(bridge, "alice")
    instance(bridge, "bob")

    def measured() -> tuple[float, float]:
        _, text = http(f"{bridge.metrics}/metrics", token=None)
        values = {
            sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        }
        return values.get("ucim_instances_memory_bytes", 0.0), values.get("ucim_instance_memory_max_bytes", 0.0)

    wait_until(lambda: measured()[1] > 1 << 20, 10, "the instances' memory to be measured")
    together, largest = measured()
    # Two instances or more together; each one's share of the fork server's pages is part of its PSS.
    assert 1 << 20 < largest < together < 1 << 30


def test_a_restarted_bridge_starts_its_instances_again(bridge: Bridge) -> None:
    name, obj = instance(bridge, "alice#6")
    pid = obj["status"]["pid"]
    assert bridge.stop() == 0
    stopped = bridge.get(name)
    assert condition(stopped, "Ready")["reason"] == "InstanceExited"  # type: ignore[index]
    assert "is stopping" in condition(stopped, "Ready")["message"]  # type: ignore[index]
    assert not alive(pid), "instances do not outlive their bridge"
    assert not list(Path(bridge.env["UCIM_BRIDGE_SOCKET_DIR"]).glob("*.sock"))
    bridge.start()
    again = bridge.wait_condition(name, "True", "InstanceServing")
    assert again["status"]["pid"] != pid
    assert http(f"{again['status']['endpoint']}/healthz")[0] == 200


def test_instances_do_not_outlive_a_crashed_bridge(bridge: Bridge) -> None:
    name, obj = instance(bridge, "bob#7")
    child = obj["status"]["pid"]
    fork_server = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert bridge.process is not None
    bridge.process.kill()
    bridge.process.wait(timeout=10)
    # The fork server sees its channel close, stops every instance and exits.
    wait_until(lambda: not alive(child) and not alive(fork_server), 10, "the instances of the dead bridge to stop")
    # Nobody said otherwise: the status still shows the old instance until a bridge runs again.
    assert condition(bridge.get(name), "Ready")["status"] == "True"  # type: ignore[index]
    bridge.start()
    wait_until(lambda: bridge.get(name)["status"].get("pid") not in (None, child), 15, "a new instance")
    assert http(f"{obj['status']['endpoint']}/healthz")[0] == 200


# --- the script mapping policy, with real scripts ---------------------------------


def script(folder: Path, body: str, mode: int = 0o755) -> Path:
    path = folder / f"map-{uuid.uuid4().hex[:6]}.sh"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(mode)
    return path


async def test_a_mapping_script_names_the_local_user(tmp_path: Path) -> None:
    by_name = script(
        tmp_path, 'read -r input\n[[ $input == *\'"Alice Smith#1"\'* ]] && echo \'{"localUser": "alice"}\'\n'
    )
    assert (await Mapper(MappingSettings(policy="script", script=by_name)).map("Alice Smith#1")).uid == 1101
    by_uid = script(tmp_path, "cat >/dev/null; echo '{\"uid\": 1102}'\n")
    account = await Mapper(MappingSettings(policy="script", script=by_uid)).map("whoever")
    assert (account.name, account.groups) == ("bob", (1102, 1200))


@pytest.mark.parametrize(
    ("body", "mode", "why"),
    [
        ('echo "no such person" >&2; exit 3\n', 0o755, "refused 'x#1': no such person"),
        ("sleep 5\n", 0o755, "did not answer within 0.5 s"),
        ("echo not-json\n", 0o755, "printed no JSON"),
        ("echo '{\"uid\": 0}'\n", 0o755, "below the minimum"),
        ('echo \'{"localUser": "nologinuser"}\'\n', 0o755, "may not log in"),
        ('echo \'{"localUser": "alice"}\'\n', 0o775, "writable only by root"),
    ],
)
async def test_a_mapping_script_can_refuse_and_is_held_to_account(
    tmp_path: Path, body: str, mode: int, why: str
) -> None:
    path = script(tmp_path, body, mode)
    mapper = Mapper(MappingSettings(policy="script", script=path, script_timeout_seconds=0.5))
    with pytest.raises(MappingRefusedError, match=why):
        await mapper.map("x#1")

"""The local platform is real: the apiserver enforces our CRDs, Slurm runs jobs as their users and
enforces the accounts, locks and quotas ucim sets."""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.platform import Platform
from ucim.testing.stack import platform_software

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "crds" / "samples"
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def expected_message(sample: Path) -> str:
    first = sample.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{sample.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_crds_are_established(platform: Platform) -> None:
    for crd in ("ucloudjobs.ucim.io", "userinstances.ucim.io", "userconnections.ucim.io", "ucloudprojects.ucim.io"):
        conditions = platform.get("default", f"crd/{crd}")["status"]["conditions"]
        assert {"type": "Established", "status": "True"}.items() <= next(
            c for c in conditions if c["type"] == "Established"
        ).items()


def test_valid_samples_are_accepted(platform: Platform, namespace: str) -> None:
    for sample in sorted((SAMPLES / "valid").glob("*.yaml")):
        platform.kubectl("apply", "-n", namespace, "-f", str(sample))


@pytest.mark.parametrize("sample", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_samples_are_rejected(platform: Platform, namespace: str, sample: Path) -> None:
    result = platform.kubectl("apply", "-n", namespace, "-f", str(sample), check=False)
    assert result.returncode != 0
    assert expected_message(sample) in result.stderr


def test_immutable_fields_cannot_change(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/ucloudjob.yaml"))
    for patch, message in [
        ({"spec": {"jobId": "other"}}, "jobId is immutable"),
        ({"spec": {"owner": "bob"}}, "owner is immutable"),
        ({"spec": {"resources": {"cpusPerNode": 8}}}, "resources are immutable"),
    ]:
        result = platform.patch(namespace, "ucloudjob/ucloud-4711", patch, check=False)
        assert result.returncode != 0
        assert message in result.stderr
    platform.patch(namespace, "ucj/ucloud-4711", {"spec": {"terminate": True}})
    result = platform.patch(namespace, "ucj/ucloud-4711", {"spec": {"terminate": False}}, check=False)
    assert "terminate cannot be withdrawn" in result.stderr


def test_extensions_are_only_appended(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/ucloudjob-extended.yaml"))
    first = {"id": "3f1c2a", "addMinutes": 30, "timeLimitMinutes": 90, "requestedAt": "2026-12-01T12:00:00Z"}
    second = {"id": "9b0d", "addMinutes": 60, "timeLimitMinutes": 150, "requestedAt": "2026-12-01T13:00:00Z"}
    platform.patch(namespace, "ucj/ucloud-4712", {"spec": {"extensions": [first, second]}})
    for extensions in ([second], [{**first, "timeLimitMinutes": 900}, second]):
        result = platform.patch(namespace, "ucj/ucloud-4712", {"spec": {"extensions": extensions}}, check=False)
        assert result.returncode != 0
        assert "extensions can only be appended" in result.stderr


def test_uid_of_a_user_instance_is_set_once(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/userinstance.yaml"))
    result = platform.patch(namespace, "ui/alice-1234-local", {"spec": {"uid": 1102}}, check=False)
    assert "uid cannot change once it is mapped" in result.stderr


def test_a_connection_never_switches_to_another_uid(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/userconnection.yaml"))
    for patch, message in [
        ({"spec": {"uid": 1102}}, "uid cannot change once it is mapped"),
        ({"spec": {"uid": None}}, "uid cannot change once it is mapped"),
        ({"spec": {"localUser": "bob"}}, "localUser cannot change once it is mapped"),
        ({"spec": {"ucloudUsername": "bob"}}, "ucloudUsername is immutable"),
    ]:
        result = platform.patch(namespace, "uconn/local-alice-1234", patch, check=False)
        assert result.returncode != 0
        assert message in result.stderr
    # Expiring (unlinked) and connecting again only move expiresAt; the uid stays.
    platform.patch(namespace, "uconn/local-alice-1234", {"spec": {"expiresAt": None}})
    assert platform.get(namespace, "uconn/local-alice-1234")["spec"]["uid"] == 1101
    header = platform.kubectl("get", "userconnections", "-n", namespace).stdout.splitlines()[0]
    assert header.split() == ["NAME", "USER", "LOCAL-USER", "UID", "CONNECTED", "AGE"]


def test_status_is_written_only_through_the_subresource(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/ucloudjob.yaml"))
    status = {"status": {"state": "RUNNING", "slurmJobId": 17}}
    platform.patch(namespace, "ucj/ucloud-4711", status)
    assert "state" not in platform.get(namespace, "ucj/ucloud-4711").get("status", {}), "status must be ignored"
    platform.patch(namespace, "ucj/ucloud-4711", status, status=True)
    assert platform.get(namespace, "ucj/ucloud-4711")["status"]["state"] == "RUNNING"


def test_kubectl_get_shows_the_columns(platform: Platform, namespace: str) -> None:
    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/ucloudjob.yaml"))
    platform.patch(namespace, "ucj/ucloud-4711", {"status": {"state": "IN_QUEUE", "slurmJobId": 4242}}, status=True)
    lines = platform.kubectl("get", "ucloudjobs", "-A").stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "STATE", "SLURM-ID", "OWNER", "APP", "AGE", "QUEUE", "EST-START"]
    row = next(line.split() for line in lines if namespace in line)
    assert row[2:6] == ["IN_QUEUE", "4242", "alice#1234", "run-command"]

    platform.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "valid/userinstance.yaml"))
    header = platform.kubectl("get", "userinstances", "-n", namespace).stdout.splitlines()[0]
    assert header.split() == ["NAME", "USER", "UID", "READY", "AGE"]
    assert "ucim" in platform.kubectl("api-resources", "--categories=ucim", "-o", "name").stdout


def test_project_columns_show_the_compute_wallet(platform: Platform, namespace: str) -> None:
    """Core sends a storage wallet too when a free-to-use category was granted (seen with core2's replay), and
    it may come first: QUOTA and LOCKED are those of the compute wallet, as USAGE and ACCOUNT are."""
    project = yaml.safe_load((SAMPLES / "valid/ucloudproject.yaml").read_text())
    storage = {"category": "storage", "productType": "STORAGE", "frequency": "ONCE", "quota": 100, "usage": 0,
               "locked": False, "updatedAt": 1765100000000}  # fmt: skip
    project["spec"]["wallets"][0].update(quota=7, locked=True)
    project["spec"]["wallets"].insert(0, storage)
    platform.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(project))
    header, line = platform.kubectl("get", "ucloudprojects", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "TITLE", "GROUP", "GID", "ACCOUNT", "USAGE", "QUOTA", "LOCKED", "AGE"]
    # Cells start where their column's title starts; empty ones (no status yet) are blank.
    starts = [header.index("QUOTA"), header.index("LOCKED"), header.rindex("AGE")]  # USAGE ends in AGE too
    assert [line[a:b].strip() for a, b in itertools.pairwise(starts)] == ["7", "true"]


def test_kubectl_explain_documents_the_spec(platform: Platform) -> None:
    out = platform.kubectl("explain", "ucloudjob.spec").stdout
    for field in ("jobId", "owner", "application", "resources", "terminate", "The UCloud job id"):
        assert field in out


def test_controller_manager_collects_garbage(platform: Platform, namespace: str) -> None:
    owner = yaml.safe_load((SAMPLES / "valid/userinstance.yaml").read_text())
    platform.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(owner))
    uid = platform.get(namespace, "ui/alice-1234-local")["metadata"]["uid"]
    child = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [
            {"apiVersion": "ucim.io/v1alpha1", "kind": "UserInstance", "name": "alice-1234-local", "uid": uid}
        ]},
    }  # fmt: skip
    platform.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(child))
    platform.kubectl("delete", "-n", namespace, "ui", "alice-1234-local")
    deadline = time.monotonic() + 30
    while platform.kubectl("get", "-n", namespace, "configmap", "child", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the garbage collector did not delete the owned ConfigMap"
        time.sleep(0.5)


def test_alice_job_output_is_hers_and_bob_cannot_read_it(platform: Platform) -> None:
    tag = uuid.uuid4().hex[:8]
    out_file = f"/home/alice/ucim-it-{tag}.out"
    script = f"#!/bin/bash\n#SBATCH --output={out_file}\n#SBATCH --time=1\nid -un\n"
    script_path = f"/home/alice/ucim-it-{tag}.sh"
    platform.run_as("alice", "tee", script_path, stdin=script)
    try:
        job_id = platform.run_as("alice", "sbatch", "--parsable", "--chdir=/home/alice", script_path).stdout
        job_id = job_id.strip()
        deadline = time.monotonic() + 60
        while True:
            state = platform.run_as("alice", "squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
            if state in ("", "COMPLETED") and Path(out_file).exists():
                break
            assert time.monotonic() < deadline, f"job {job_id} did not finish (state {state!r})"
            time.sleep(0.3)
        stat = Path(out_file).stat()
        assert stat.st_uid == int(platform.run_as("alice", "id", "-u").stdout)
        assert Path(out_file).read_text().strip() == "alice"
        denied = platform.run_as("bob", "cat", out_file, check=False)
        assert denied.returncode != 0
        assert "Permission denied" in denied.stderr
    finally:
        for leftover in (script_path, out_file):  # alice's home is shared by every run
            Path(leftover).unlink(missing_ok=True)


# --------------------------------------------------------------------------- accounting enforcement
#
# ucim keeps a Slurm account per UCloud project (PROTOCOL-ACCOUNTING.md §3.2): the members get an
# association in it, a locked wallet is MaxJobs=0, the quota GrpTRESMins=billing=<core-minutes>,
# and sshare's GrpTRESRaw is the usage it reports to UCloud. The platform's Slurm enforces all of
# it as a site's must (slurm_conf in hack/local_platform.py; docs/install.md).


def as_root(platform: Platform, *cmd: str) -> str:
    """A Slurm command as root, as ucim's server side runs them; its output."""
    result = subprocess.run(cmd, env=platform.process_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


def eventually(check: Callable[[], str], expected: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (seen := check()) != expected:
        assert time.monotonic() < deadline, f"{what}: {seen!r} after {timeout:.0f} s, not {expected!r}"
        time.sleep(0.2)


@pytest.fixture
def project_account(platform: Platform) -> Iterator[str]:
    """A new Slurm account with alice in it and not bob, as ucim makes one per project; deleted afterwards."""
    name = f"ucim-it-{uuid.uuid4().hex[:8]}"
    cluster = f"cluster={platform.env['UCIM_SLURM_CLUSTER']}"
    as_root(platform, "sacctmgr", "-i", "add", "account", name, cluster, "description=ucim test", "organization=ucim")
    try:
        as_root(platform, "sacctmgr", "-i", "add", "user", "alice", f"account={name}", cluster)
        yield name
    finally:
        # sacctmgr deletes no account that still has jobs in the queue.
        as_root(platform, "scancel", "-A", name)
        eventually(lambda: as_root(platform, "squeue", "-h", "-A", name, "-o", "%i"), "", f"the jobs of {name}")
        as_root(platform, "sacctmgr", "-i", "delete", "account", name)


def sbatch(platform: Platform, user: str, account: str, *options: str) -> subprocess.CompletedProcess[str]:
    return platform.run_as(
        user, "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", f"--account={account}", *options,
        check=False,
    )  # fmt: skip


def pending_reason(platform: Platform, job_id: str) -> str:
    return as_root(platform, "squeue", "-h", "-j", job_id, "-o", "%T %r").strip()


def billing_minutes(platform: Platform, account: str) -> int:
    """The account's usage as ucim reads it: billing in GrpTRESRaw of ``sshare -Pho account,user,grptresraw``."""
    rows = as_root(platform, "sshare", "-Pho", "account,user,grptresraw", "-A", account).splitlines()
    tres = next(row.split("|")[2] for row in rows if row.startswith(f"{account}||"))  # the account's own row
    return int(dict(item.split("=") for item in tres.split(","))["billing"])


def test_slurm_refuses_a_job_in_an_account_the_user_is_not_in(platform: Platform, project_account: str) -> None:
    refused = sbatch(platform, "bob", project_account, "--hold", "--wrap=true")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    )
    assert sbatch(platform, "alice", project_account, "--hold", "--wrap=true").returncode == 0


def test_a_locked_account_keeps_its_jobs_pending(platform: Platform, project_account: str) -> None:
    # A locked wallet: sbatch still takes the job, Slurm starts none of the account's jobs.
    as_root(platform, "sacctmgr", "-i", "modify", "account", project_account, "set", "maxjobs=0")
    job = sbatch(platform, "alice", project_account, "--wrap=true")
    assert job.returncode == 0, job.stderr
    eventually(lambda: pending_reason(platform, job.stdout.strip()), "PENDING AssocMaxJobsLimit", "the locked job")


def test_a_job_that_would_overrun_the_quota_does_not_start(platform: Platform, project_account: str) -> None:
    # Two CPUs for up to a minute is 2 core-minutes: more than the quota's 1, though nothing is used yet
    # (AccountingStorageEnforce's safe; without it the job would start and be killed at the limit).
    as_root(platform, "sacctmgr", "-i", "modify", "account", project_account, "set", "grptresmins=billing=1")
    job = sbatch(platform, "alice", project_account, "--cpus-per-task=2", "--time=1", "--wrap=true")
    assert job.returncode == 0, job.stderr
    eventually(lambda: pending_reason(platform, job.stdout.strip()), "PENDING AssocGrpBillingMinutes", "the job")


def test_sshare_reports_the_core_minutes_of_a_finished_job(platform: Platform, project_account: str) -> None:
    assert billing_minutes(platform, project_account) == 0
    job = sbatch(platform, "alice", project_account, "--cpus-per-task=4", "--wrap=sleep 16")
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    sacct = ("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "state,elapsedraw")
    eventually(lambda: as_root(platform, *sacct).split("|")[0], "COMPLETED", f"job {job_id}", timeout=60)
    elapsed = int(as_root(platform, *sacct).strip().split("|")[1])
    # Billing is the CPUs (TRESBillingWeights CPU=1.0); Slurm adds the usage as the job ends.
    expected = 4 * elapsed // 60
    assert expected >= 1
    eventually(lambda: str(billing_minutes(platform, project_account)), str(expected), "sshare's billing minutes")


# --------------------------------------------------------------------------- the site's software
#
# An Lmod tree with the probe module ucim-probe (1.0.0, 1.2.3, 2.0.0) on every login shell's
# MODULEPATH, its spider JSON (the module picker's modulesFile) and load instructions in the
# anchor's applications/ format (PROTOCOL-APPS §1, §9.3); hack/local_platform.py makes them.


def batch_job_output(platform: Platform, user: str, script: str, *options: str) -> str:
    """Run ``script`` as a batch job of ``user`` in their home and wait for it (``sbatch --wait``); its output."""
    tag = uuid.uuid4().hex[:8]
    home = Path(f"/home/{user}")
    script_path, out_file = home / f"ucim-it-{tag}.sh", home / f"ucim-it-{tag}.out"
    platform.run_as(user, "tee", str(script_path), stdin=script)
    try:
        done = platform.run_as(
            user, "sbatch", "--wait", "--time=1", f"--chdir={home}", f"--output={out_file}", *options,
            str(script_path), check=False,
        )  # fmt: skip
        output = out_file.read_text() if out_file.exists() else ""
        assert done.returncode == 0, f"the job failed ({done.returncode}):\n{done.stderr}\n{output}"
        return output
    finally:
        for leftover in (script_path, out_file):  # the home is shared by every run
            leftover.unlink(missing_ok=True)


def test_a_login_job_loads_the_module_version_it_asks_for(platform: Platform) -> None:
    # A login shell, as every UCloud job script starts (PROTOCOL-APPS §8), and the load line as the anchor
    # renders `module load ucim-probe/{{ appVersion }}`: the version bash-quoted.
    script = """#!/usr/bin/env -S bash --login
module load ucim-probe/'1.2.3'
echo "$UCIM_PROBE_VERSION"
ucim-probe
echo "$MODULEPATH"
"""
    version, probe, module_path = batch_job_output(platform, "alice", script).splitlines()
    assert (version, probe) == ("1.2.3", "ucim-probe 1.2.3")
    assert str(platform_software(platform.env).module_path) in module_path.split(":")


def test_the_spider_json_lists_every_version_of_the_probe(platform: Platform) -> None:
    # The shape the anchor reads as its modulesFile: groups of versions with their full names.
    groups = json.loads(platform_software(platform.env).modules_file.read_text())
    probe = next(g for g in groups if g["package"] == "ucim-probe")
    assert [v["full"] for v in probe["versions"]] == ["ucim-probe/1.0.0", "ucim-probe/1.2.3", "ucim-probe/2.0.0"]
    assert all(v["help"] and v["description"] for v in probe["versions"])
    assert probe["url"].startswith("https://")


def test_the_load_instructions_name_the_probe_and_python(platform: Platform) -> None:
    files = sorted(platform_software(platform.env).applications_dir.glob("*.yml"))
    documents = [yaml.safe_load(f.read_text()) for f in files]
    versions = {d["name"]: [v for c in d["configurations"] for v in c["versions"]] for d in documents}
    assert versions == {
        "python": ["3.11.4", "3.12.1"],
        "ucim-probe": ["1.0.0", "1.2.3", "2.0.0"],
        "ucim-testing": ["1"],
    }
    probe = next(d for d in documents if d["name"] == "ucim-probe")
    assert {c["load"] for c in probe["configurations"]} == {"module load ucim-probe/{{ appVersion }}\n"}
    # ucim's own test programs (web-echo's server) from the repository the platform runs, readable by the users.
    (testing,) = (d for d in documents if d["name"] == "ucim-testing")
    assert testing["configurations"][0]["load"].startswith("export PYTHONPATH=/")


# --------------------------------------------------------------------------- two nodes


def test_a_two_node_job_runs_a_task_on_each_node(platform: Platform) -> None:
    nodes = platform.env["UCIM_SLURM_NODES"].split(",")
    assert len(nodes) == 2
    srun = ("srun", "--nodes=2", "--ntasks-per-node=1", "--time=1")
    hostnames = platform.run_as("alice", *srun, "hostname").stdout.split()
    assert len(hostnames) == 2  # one per node; both nodes are slurmd on this host
    names = platform.run_as("alice", *srun, "printenv", "SLURMD_NODENAME").stdout.split()
    assert sorted(names) == sorted(nodes)


def test_a_two_node_batch_job_loads_its_module_on_both_nodes(platform: Platform) -> None:
    # The batch script loads the module; srun carries its environment to the tasks on both nodes.
    script = """#!/usr/bin/env -S bash --login
module load ucim-probe/1.0.0
srun printenv SLURMD_NODENAME UCIM_PROBE_VERSION
"""
    lines = batch_job_output(platform, "alice", script, "--nodes=2", "--ntasks-per-node=1").split()
    assert sorted(lines) == sorted([*platform.env["UCIM_SLURM_NODES"].split(","), "1.0.0", "1.0.0"])

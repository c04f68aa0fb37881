"""Pure tests of ucim.common.slurm: parsers, error cleaning and the state map.

Every Slurm line below was captured from the real Slurm 22.05.8 of the local platform
(``hack/local_platform.py up``), with the exact arguments the module uses, unless a comment says
otherwise. Timestamps are epoch seconds because the module sets SLURM_TIME_FORMAT=%s;
1795578635 is 2026-11-25T03:50:35Z. The client-logic tests at the end run tiny /bin/sh
stand-ins for the Slurm tools (no Slurm needed) that replay such captured output.
"""

from __future__ import annotations

import asyncio
import pickle
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ucim.common.protocol import JobState
from ucim.common.slurm import CommandResult, SlurmClient, SlurmConfig
from ucim.common.slurm_errors import (
    SlurmError,
    SlurmRejectedError,
    SlurmUnavailableError,
    clean_slurm_error,
    sbatch_error,
    scancel_errors,
)
from ucim.common.slurm_parsing import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    SlurmJobInfo,
    decode_wait_status,
    minutes_to_slurm_time,
    parse_exit_code,
    parse_job_ids,
    parse_sacct,
    parse_sbatch_output,
    parse_slurm_time,
    parse_squeue,
    parse_time_limit,
    squeue_format,
)
from ucim.common.slurm_states import normalize_state, to_ucloud_state

# `squeue -h -t all -O <squeue_format()>` with SLURM_TIME_FORMAT=%s.
SQUEUE_OUTPUT = """\
4|RUNNING|None|localhost|0|1795578635|1795578635|1795665035|1-00:00:00|alice|ucim-probe-long|
6|PENDING|None||0|1795578646|N/A|N/A|1-00:00:00|alice|ucim-probe|fail 3|
7|PENDING|ReqNodeNotAvail, UnavailableNodes:localhost||0|1795578652|N/A|N/A|1:00|alice|true|
16|FAILED|NonZeroExitCode|localhost|768|1795578984|1795578984|1795578986|1-00:00:00|alice|probe-f3|
17|FAILED|JobLaunchFailure|localhost|15|1795578984|1795578984|1795578985|1-00:00:00|alice|probe-term|
18|FAILED|NonZeroExitCode|localhost|51200|1795578984|1795578984|1795578986|1-00:00:00|alice|probe-f200|
3|CANCELLED|PartitionConfig||0|1795578951|1795578952|1795578952|2:00|alice|wrap|
5|CANCELLED|None|localhost|15|1795578845|1795578845|1795578848|5:00|bob|sleep|
1|COMPLETED|None|localhost|0|1795578588|1795578588|1795578588|1:00|alice|true|
10|PENDING|PartitionTimeLimit||0|1795579004|N/A|N/A|5:00|alice|probe-err|
20|PENDING|JobHeldUser||0|1795579004|N/A|N/A|1-00:00:00|alice|probe-err|
"""
# A long name with the separator in it (one captured line, split for the line length).
SQUEUE_OUTPUT += (
    "9|CANCELLED|JobHeldUser||0|1795578847|1795578848|1795578848|1-00:00:00|alice|"
    "probe|pipe name that is quite long indeed, more than twenty chars|\n"
)

# `sacct -X -P -n -a -o <SACCT_FIELDS>` with SLURM_TIME_FORMAT=%s.
SACCT_OUTPUT = """\
4|RUNNING|None|localhost|0:0|1795578635|1795578635|Unknown|1-00:00:00|alice|ucim-probe-long
16|FAILED|None|localhost|3:0|1795578984|1795578984|1795578986|1-00:00:00|alice|probe-f3
17|FAILED|None|localhost|0:15|1795578984|1795578984|1795578985|1-00:00:00|alice|probe-term
1|COMPLETED|None|localhost|0:0|1795578588|1795578588|1795578588|00:01:00|alice|true
6|FAILED|None|localhost|3:0|1795578646|1795578657|1795578658|1-00:00:00|alice|ucim-probe|fail 3
"""


NOWHERE = Path("/nonexistent/slurm/bin")


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --------------------------------------------------------------------------- squeue


def test_squeue_format_is_unpadded_and_separated() -> None:
    assert squeue_format().startswith("JobID:|,State:|,")
    assert squeue_format().endswith(",Name:|")
    assert squeue_format().count(",") == len(SQUEUE_FIELDS) - 1


def test_parse_squeue_running() -> None:
    info = parse_squeue(SQUEUE_OUTPUT)[4]
    assert info == SlurmJobInfo(
        job_id=4,
        state="RUNNING",
        reason=None,
        node_list="localhost",
        exit_code=None,
        signal=None,
        submit_time=at(1795578635),
        start_time=at(1795578635),
        # squeue's EndTime of a running job is only the projected end: dropped.
        end_time=None,
        time_limit=timedelta(days=1),
        name="ucim-probe-long",
        user="alice",
    )
    assert info.ucloud_state() == (JobState.RUNNING, "running")
    assert not info.is_finished


def test_parse_squeue_pending_drops_estimates_and_keeps_reason() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    pending = jobs[7]
    assert pending.state == "PENDING"
    assert pending.reason == "ReqNodeNotAvail, UnavailableNodes:localhost"
    assert pending.node_list is None
    assert pending.start_time is None and pending.end_time is None
    assert pending.exit_code is None and pending.signal is None
    assert pending.time_limit == timedelta(minutes=1)
    assert jobs[20].ucloud_state() == (JobState.IN_QUEUE, "pending (JobHeldUser)")
    assert jobs[6].ucloud_state() == (JobState.IN_QUEUE, "pending")


def test_parse_squeue_decodes_raw_wait_status() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    # `exit 3` → 768; `exit 200` → 51200 (sacct prints 72:0 for that one: it keeps 7 bits).
    assert (jobs[16].exit_code, jobs[16].signal) == (3, 0)
    assert (jobs[18].exit_code, jobs[18].signal) == (200, 0)
    # The batch shell killed itself with SIGTERM.
    assert (jobs[17].exit_code, jobs[17].signal) == (0, 15)
    assert jobs[16].ucloud_state() == (JobState.FAILURE, "exited with code 3")
    assert jobs[17].ucloud_state() == (JobState.FAILURE, "killed by signal 15 (SIGTERM)")
    assert jobs[16].end_time == at(1795578986)
    assert jobs[16].is_finished


def test_parse_squeue_cancelled() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    ran = jobs[5]
    assert ran.state == "CANCELLED"
    assert (ran.exit_code, ran.signal) == (0, 15)
    assert ran.start_time == at(1795578845) and ran.end_time == at(1795578848)
    assert ran.ucloud_state() == (JobState.SUCCESS, "cancelled")
    # Cancelled while pending: Slurm sets StartTime to the cancel time, but it never ran.
    never_ran = jobs[3]
    assert never_ran.node_list is None
    assert never_ran.start_time is None
    assert never_ran.end_time == at(1795578952)
    assert never_ran.reason == "PartitionConfig"


def test_parse_squeue_job_rejected_by_sbatch() -> None:
    # `sbatch --mem=100G` fails ("Memory specification can not be satisfied"), yet slurmctld
    # keeps a FAILED record whose wait-status field is a bare 1: it never ran, so no exit status.
    line = "24|FAILED|BadConstraints||1|1795579137|1795579137|1795579137|1-00:00:00|alice|probe-mem|\n"
    info = parse_squeue(line)[24]
    assert (info.exit_code, info.signal, info.start_time) == (None, None, None)
    assert info.ucloud_state() == (JobState.FAILURE, "failed (BadConstraints)")


def test_parse_squeue_name_may_contain_the_separator() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    assert jobs[6].name == "ucim-probe|fail 3"
    assert jobs[9].name == "probe|pipe name that is quite long indeed, more than twenty chars"
    assert jobs[5].user == "bob"


def test_parse_squeue_iso_timestamps_and_garbage() -> None:
    # Slurm's default format (no SLURM_TIME_FORMAT), controller in UTC.
    line = (
        "3|COMPLETED|None|localhost|0|2026-11-25T03:50:35|2026-11-25T03:50:35|"
        "2026-11-25T03:50:37|1-00:00:00|alice|ucim-probe-ok|\n"
    )
    jobs = parse_squeue("\n" + line + "slurm_load_jobs error: nonsense\n", tz=UTC)
    assert list(jobs) == [3]
    assert jobs[3].end_time == datetime(2026, 11, 25, 3, 50, 37, tzinfo=UTC)
    assert (jobs[3].exit_code, jobs[3].signal) == (0, 0)
    assert jobs[3].ucloud_state() == (JobState.SUCCESS, "completed")


def test_parse_squeue_empty() -> None:
    assert parse_squeue("") == {}


# --------------------------------------------------------------------------- sacct


def test_parse_sacct() -> None:
    jobs = parse_sacct(SACCT_OUTPUT)
    assert set(jobs) == {1, 4, 6, 16, 17}
    assert (jobs[16].exit_code, jobs[16].signal) == (3, 0)
    assert (jobs[17].exit_code, jobs[17].signal) == (0, 15)
    assert jobs[4].end_time is None and jobs[4].exit_code is None
    assert jobs[1].time_limit == timedelta(minutes=1)
    assert jobs[6].name == "ucim-probe|fail 3"
    assert jobs[6].start_time == at(1795578657)


def test_parse_sacct_cancelled() -> None:
    out = (
        "22|CANCELLED by 1101|None|localhost|0:0|1795579137|1795579137|1795579139|1-00:00:00|alice|probe-c1\n"
        "10|CANCELLED|PartitionTimeLimit|None assigned|0:0|1795579004|None|1795579010|00:05:00|alice|probe-err\n"
        "11|CANCELLED|PartitionNodeLimit|None assigned|0:0|1795579004|None|1795579010|Partition_Limit|alice|probe-err\n"
        "24|FAILED|None|None assigned|1:0|1795579137|1795579137|1795579137|Partition_Limit|alice|probe-mem\n"
    )
    jobs = parse_sacct(out)
    ran = jobs[22]
    assert ran.state == "CANCELLED"
    assert ran.start_time == at(1795579137) and ran.end_time == at(1795579139)
    assert ran.ucloud_state() == (JobState.SUCCESS, "cancelled")
    never_ran = jobs[10]
    assert never_ran.node_list is None and never_ran.start_time is None
    assert never_ran.end_time == at(1795579010)
    assert never_ran.time_limit == timedelta(minutes=5)
    assert jobs[11].time_limit is None
    assert jobs[24].exit_code is None
    assert jobs[24].ucloud_state() == (JobState.FAILURE, "failed")


def test_parse_sacct_skips_steps_and_keeps_last_record() -> None:
    out = (
        "7|REQUEUED|None|localhost|0:0|1|2|3|1:00|alice|x\n"
        "7.batch|COMPLETED|None|localhost|0:0|1|2|3|1:00|alice|batch\n"
        "7|COMPLETED|None|localhost|0:0|1|4|5|1:00|alice|x\n"
    )
    jobs = parse_sacct(out)
    assert list(jobs) == [7]
    assert jobs[7].state == "COMPLETED"
    assert jobs[7].start_time == at(4)
    assert len(SACCT_FIELDS) == len(SQUEUE_FIELDS)


# --------------------------------------------------------------------------- small parsers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", (0, 0)), ("768", (3, 0)), ("51200", (200, 0)), ("9", (0, 9)), ("15", (0, 15)), ("", (None, None))],
)
def test_decode_wait_status(raw: str, expected: tuple[int | None, int | None]) -> None:
    assert decode_wait_status(raw) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3:0", (3, 0)), ("0:15", (0, 15)), ("0:0", (0, 0)), ("", (None, None)), ("x:y", (None, None))],
)
def test_parse_exit_code(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:00", timedelta(minutes=1)),
        ("5:00", timedelta(minutes=5)),
        ("00:01:00", timedelta(minutes=1)),
        ("2:00:00", timedelta(hours=2)),
        ("1-00:00:00", timedelta(days=1)),
        ("2-03:04:05", timedelta(days=2, hours=3, minutes=4, seconds=5)),
        ("UNLIMITED", None),
        ("Partition_Limit", None),
        ("", None),
    ],
)
def test_parse_time_limit(text: str, expected: timedelta | None) -> None:
    assert parse_time_limit(text) == expected


def test_parse_slurm_time() -> None:
    assert parse_slurm_time("1795578635") == at(1795578635)
    for nothing in ("", "N/A", "Unknown", "None", "(null)", "0"):
        assert parse_slurm_time(nothing) is None
    cet = timezone(timedelta(hours=1))
    assert parse_slurm_time("2026-11-25T04:50:35", cet) == at(1795578635)
    local = parse_slurm_time("2026-11-25T03:50:35")
    assert local is not None and local.tzinfo is not None
    assert parse_slurm_time("soon") is None


def test_normalize_state() -> None:
    assert normalize_state("CANCELLED by 1101") == "CANCELLED"
    assert normalize_state("CANCELLED+") == "CANCELLED"
    assert normalize_state(" running ") == "RUNNING"
    assert normalize_state("") == ""


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [(1, "0-00:01:00"), (59, "0-00:59:00"), (90, "0-01:30:00"), (1440, "1-00:00:00"), (2 * 1440 + 61, "2-01:01:00")],
)
def test_minutes_to_slurm_time(minutes: int, expected: str) -> None:
    assert minutes_to_slurm_time(minutes) == expected
    assert parse_time_limit(expected) == timedelta(minutes=minutes)


@pytest.mark.parametrize("bad", [0, -5, True, 1.5])
def test_minutes_to_slurm_time_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="positive number of minutes"):
        minutes_to_slurm_time(bad)  # type: ignore[arg-type]


def test_parse_job_ids() -> None:
    assert parse_job_ids("12\n3\n12\n\n") == [3, 12]
    assert parse_job_ids("") == []


# --------------------------------------------------------------------------- sbatch


def test_parse_sbatch_output() -> None:
    assert parse_sbatch_output("42\n") == 42
    assert parse_sbatch_output("42;ucim\n") == 42
    with pytest.raises(SlurmError, match="did not print a job id"):
        parse_sbatch_output("Submitted batch job 42\n")


def test_sbatch_error_invalid_partition() -> None:
    stderr = (
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    assert clean_slurm_error(stderr) == "invalid partition specified: nope; Invalid partition name specified"
    err = sbatch_error(stderr, command=["sbatch", "x"], returncode=1)
    assert isinstance(err, SlurmRejectedError)
    assert err.message == "The requested partition does not exist on this cluster"
    assert err.detail.startswith("invalid partition specified: nope")
    assert "invalid partition specified: nope" in str(err)
    assert err.returncode == 1 and err.command == ("sbatch", "x")


def test_sbatch_error_memory_wins_over_node_configuration() -> None:
    stderr = (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not available\n"
    )
    err = sbatch_error(stderr)
    assert err.message.startswith("The requested memory cannot be provided")
    assert err.detail == "Memory specification can not be satisfied; Requested node configuration is not available"


@pytest.mark.parametrize(
    ("stderr", "starts"),
    [
        # Captured here.
        ("sbatch: error: Invalid --time specification\n", "The requested time limit"),
        ("sbatch: error: Invalid generic resource (gres) specification\n", "The requested GPUs"),
        ("sbatch: error: Unable to open file /tmp/slurmx/nonexist.sh\n", "Slurm could not read"),
        # Slurm's own error strings for sites with EnforcePartLimits (the platform has none).
        (
            "sbatch: error: Batch job submission failed: Requested time limit is invalid "
            "(missing or exceeds some limit)\n",
            "The requested time limit",
        ),
        ("sbatch: error: Batch job submission failed: Node count specification invalid\n", "The requested number"),
        ("sbatch: error: Batch job submission failed: More processors requested than permitted\n", "More processors"),
        (
            "sbatch: error: Batch job submission failed: Requested node configuration is not available\n",
            "No node of this partition",
        ),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination "
         "specified\n", "The Slurm account"),
        ("sbatch: error: Batch job submission failed: Invalid qos specification\n", "The requested QOS"),
        (
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
            "(job submit limit, user's size and/or time limits)\n",
            "The job violates",
        ),
    ],
)  # fmt: skip
def test_sbatch_error_friendly(stderr: str, starts: str) -> None:
    err = sbatch_error(stderr)
    assert isinstance(err, SlurmRejectedError)
    assert err.message.startswith(starts)
    assert err.detail == clean_slurm_error(stderr)
    assert "sbatch:" not in err.detail


def test_errors_survive_pickling() -> None:
    err = sbatch_error("sbatch: error: invalid partition specified: nope\n", command=["sbatch"], returncode=1)
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes)
    assert type(copy) is SlurmRejectedError
    assert (copy.message, copy.detail, copy.command, copy.returncode, str(copy)) == (
        err.message,
        err.detail,
        err.command,
        err.returncode,
        str(err),
    )


def test_sbatch_error_unknown_keeps_slurm_text() -> None:
    err = sbatch_error("sbatch: warning: something odd\nsbatch: error: Something new went wrong\n")
    assert err.message == "Something new went wrong"
    assert str(err) == "Something new went wrong"


def test_sbatch_error_transient_when_munge_is_down() -> None:
    stderr = (
        "sbatch: error: If munged is up, restart with --num-threads=10\n"
        'sbatch: error: Munge encode failed: Failed to access "/var/tmp/ucim-platform/munge/munge.socket": '
        "No such file or directory (Did you start munged?)\n"
        "sbatch: error: slurm_send_node_msg: auth_g_create: REQUEST_SUBMIT_BATCH_JOB has authentication error\n"
        "sbatch: error: Batch job submission failed: Protocol authentication error\n"
    )
    assert isinstance(sbatch_error(stderr, returncode=1), SlurmUnavailableError)
    assert isinstance(sbatch_error("", returncode=1), SlurmRejectedError)


def test_sbatch_error_transient_when_slurmctld_goes_away_mid_submit() -> None:
    # The rolling-restart drill: slurmctld SIGKILLed while sbatch waited for its answer. Taken for a rejection,
    # it was answered to Core as a 400 and the job was deleted, although the submission may have gone through.
    stderr = (
        "sbatch: error: slurm_msg_sendto: address:port=127.0.0.1:29380 msg_type=4003: Unexpected missing socket error\n"
        "sbatch: error: Batch job submission failed: Unexpected missing socket error\n"
    )
    assert isinstance(sbatch_error(stderr, returncode=1), SlurmUnavailableError)


def test_client_failure_classification() -> None:
    down = CommandResult(
        argv=("squeue",),
        returncode=1,
        stdout="",
        stderr="slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        seconds=18.0,
    )
    assert isinstance(SlurmClient._failure(down, "squeue"), SlurmUnavailableError)
    db_down = CommandResult(
        argv=("sacct",),
        returncode=1,
        stdout="",
        stderr=(
            "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to "
            "host:localhost:23174: Connection refused\n"
            "sacct: error: Sending PersistInit msg: Connection refused\n"
            "sacct: error: Problem talking to the database: Connection refused\n"
        ),
        seconds=0.005,
    )
    err = SlurmClient._failure(db_down, "sacct")
    assert isinstance(err, SlurmUnavailableError)
    assert err.detail.endswith("Problem talking to the database: Connection refused")


# --------------------------------------------------------------------------- scancel


def test_scancel_errors() -> None:
    assert scancel_errors("") == []
    assert scancel_errors("scancel: error: Kill job error on job id 6: Access/permission denied\n") == [
        "Kill job error on job id 6: Access/permission denied"
    ]
    benign = (
        "scancel: error: Kill job error on job id 5: Job/step already completing or completed\n"
        "scancel: error: Kill job error on job id 99999: Invalid job id specified\n"
    )
    assert scancel_errors(benign) == []


# --------------------------------------------------------------------------- state map


@pytest.mark.parametrize(
    ("slurm_state", "exit_code", "expected"),
    [
        ("PENDING", None, (JobState.IN_QUEUE, "pending")),
        ("CONFIGURING", None, (JobState.IN_QUEUE, "pending (configuring)")),
        ("REQUEUED", None, (JobState.IN_QUEUE, "pending (requeued)")),
        ("REQUEUE_HOLD", None, (JobState.IN_QUEUE, "pending (requeue_hold)")),
        ("REQUEUE_FED", None, (JobState.IN_QUEUE, "pending (requeue_fed)")),
        ("RESV_DEL_HOLD", None, (JobState.IN_QUEUE, "pending (resv_del_hold)")),
        ("RESIZING", None, (JobState.IN_QUEUE, "pending (resizing)")),
        ("SUSPENDED", None, (JobState.IN_QUEUE, "suspended")),
        ("RUNNING", None, (JobState.RUNNING, "running")),
        ("COMPLETING", None, (JobState.RUNNING, "running (completing)")),
        ("SIGNALING", None, (JobState.RUNNING, "running (signaling)")),
        ("SPECIAL_EXIT", None, (JobState.RUNNING, "running (special_exit)")),
        ("STAGE_OUT", None, (JobState.RUNNING, "running (stage_out)")),
        ("STOPPED", None, (JobState.RUNNING, "running (stopped)")),
        ("COMPLETED", 0, (JobState.SUCCESS, "completed")),
        ("CANCELLED", 0, (JobState.SUCCESS, "cancelled")),
        ("CANCELLED by 1101", None, (JobState.SUCCESS, "cancelled")),
        ("FAILED", 3, (JobState.FAILURE, "exited with code 3")),
        ("FAILED", None, (JobState.FAILURE, "failed")),
        ("FAILED", 0, (JobState.FAILURE, "failed")),
        ("OUT_OF_MEMORY", 0, (JobState.FAILURE, "out of memory")),
        ("NODE_FAIL", None, (JobState.FAILURE, "node failure")),
        ("BOOT_FAIL", None, (JobState.FAILURE, "node boot failure")),
        ("PREEMPTED", None, (JobState.FAILURE, "preempted")),
        ("REVOKED", None, (JobState.FAILURE, "revoked")),
        ("TIMEOUT", 0, (JobState.EXPIRED, "time limit reached")),
        ("DEADLINE", None, (JobState.EXPIRED, "deadline reached")),
        ("SOMETHING_NEW", None, (JobState.IN_QUEUE, "unrecognised Slurm state: SOMETHING_NEW")),
        ("", None, (JobState.IN_QUEUE, "unrecognised Slurm state: (empty)")),
    ],
)
def test_to_ucloud_state(slurm_state: str, exit_code: int | None, expected: tuple[JobState, str]) -> None:
    assert to_ucloud_state(slurm_state, exit_code) == expected


def test_to_ucloud_state_signal_and_reason() -> None:
    assert to_ucloud_state("FAILED", 0, signal=9) == (JobState.FAILURE, "killed by signal 9 (SIGKILL)")
    assert to_ucloud_state("FAILED", 0, signal=99) == (JobState.FAILURE, "killed by signal 99 (signal 99)")
    assert to_ucloud_state("PENDING", reason="Resources") == (JobState.IN_QUEUE, "pending (Resources)")
    # A reason never turns a final state into something else.
    assert to_ucloud_state("TIMEOUT", 0, reason="TimeLimit")[0] is JobState.EXPIRED


def test_every_unknown_state_is_not_final() -> None:
    for state in ("LAUNCH_FAILED", "UPDATE_DB", "RECONFIG_FAIL", "weird"):
        assert not to_ucloud_state(state)[0].is_final


# --------------------------------------------------------------------------- config


def test_client_builds_argv_and_env_without_os_environ() -> None:
    client = SlurmClient(
        SlurmConfig(
            bin_dir=Path("/opt/slurm/bin"),
            command_prefix=("runuser", "-u", "alice", "--"),
            slurm_conf=Path("/etc/slurm/slurm.conf"),
            env={"PATH": "/usr/bin"},
        )
    )
    assert client._argv("squeue", ["-h"]) == ["runuser", "-u", "alice", "--", "/opt/slurm/bin/squeue", "-h"]
    env = client._env({"HOME": "/home/alice"}, query=True)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/alice",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_TIME_FORMAT": "%s",
        "LC_ALL": "C",
    }
    assert "SLURM_TIME_FORMAT" not in client._env(None, query=False)


async def test_find_jobs_by_name_rejects_list_syntax() -> None:
    client = SlurmClient(SlurmConfig(user="alice"))
    for bad in ("", "a,b", "a|b"):
        with pytest.raises(ValueError, match="cannot look up"):
            await client.find_jobs_by_name(bad)


async def test_poll_and_cancel_of_nothing_run_no_command() -> None:
    client = SlurmClient(SlurmConfig(bin_dir=NOWHERE))
    assert await client.poll([]) == {}
    assert await client.poll_accounting([]) == {}
    await client.cancel([])


async def test_timeout_kills_the_command(tmp_path: Path) -> None:
    # A stand-in "squeue" that hangs like one whose slurmctld is gone.
    (tmp_path / "squeue").write_text("#!/bin/sh\nsleep 30 &\nsleep 30\n")
    (tmp_path / "squeue").chmod(0o755)
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path, timeout_seconds=0.3))
    started = asyncio.get_running_loop().time()
    with pytest.raises(SlurmUnavailableError, match=r"did not answer within 0\.3 s"):
        await client.poll([1])
    assert asyncio.get_running_loop().time() - started < 5


async def test_missing_binary_is_unavailable() -> None:
    client = SlurmClient(SlurmConfig(bin_dir=NOWHERE))
    with pytest.raises(SlurmUnavailableError, match="cannot run squeue"):
        await client.poll([1])
    assert await client.ping() is False


# --------------------------------------------------------------------------- client logic with stand-in tools


def fake_tool(bin_dir: Path, name: str, stdout: str = "", stderr: str = "", rc: int = 0) -> None:
    """A stand-in Slurm tool that prints captured output and records its arguments."""
    (bin_dir / f"{name}.out").write_text(stdout)
    (bin_dir / f"{name}.err").write_text(stderr)
    script = bin_dir / name
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{bin_dir}/{name}.args"\n'
        f'cat "{bin_dir}/{name}.out"\ncat "{bin_dir}/{name}.err" >&2\nexit {rc}\n'
    )
    script.chmod(0o755)


def calls(bin_dir: Path, name: str) -> list[str]:
    path = bin_dir / f"{name}.args"
    return path.read_text().splitlines() if path.exists() else []


async def test_poll_is_one_squeue_call_filtered_to_the_tracked_ids(tmp_path: Path) -> None:
    fake_tool(tmp_path, "squeue", SQUEUE_OUTPUT)
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path))
    jobs = await client.poll([4, 16, 999])
    assert sorted(jobs) == [4, 16]
    (args,) = calls(tmp_path, "squeue")
    assert args == f"-h -t all -O {squeue_format()} -j 4,16,999"
    # Above max_ids_per_query every job is listed and filtered here.
    many = SlurmClient(SlurmConfig(bin_dir=tmp_path, max_ids_per_query=2))
    assert sorted(await many.poll([4, 16, 999])) == [4, 16]
    assert calls(tmp_path, "squeue")[-1] == f"-h -t all -O {squeue_format()}"


async def test_poll_of_one_forgotten_id_is_empty(tmp_path: Path) -> None:
    fake_tool(tmp_path, "squeue", stderr="slurm_load_jobs error: Invalid job id specified\n", rc=1)
    assert await SlurmClient(SlurmConfig(bin_dir=tmp_path)).poll([12345]) == {}


async def test_poll_when_slurmctld_is_gone(tmp_path: Path) -> None:
    stderr = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    fake_tool(tmp_path, "squeue", stderr=stderr, rc=1)
    with pytest.raises(SlurmUnavailableError, match="Unable to contact slurm controller"):
        await SlurmClient(SlurmConfig(bin_dir=tmp_path)).poll([1])


async def test_accounting_disabled_is_detected_once(tmp_path: Path) -> None:
    fake_tool(tmp_path, "sacct", stderr="Slurm accounting storage is disabled\n", rc=1)
    fake_tool(tmp_path, "squeue")
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path, user="alice"))
    assert await client.poll_accounting([1]) == {}
    assert await client.has_accounting() is False
    assert await client.find_jobs_by_name("ucloud-1") == []
    assert len(calls(tmp_path, "sacct")) == 1
    assert calls(tmp_path, "squeue") == ["-h -t all -u alice -n ucloud-1 -o %A"]


async def test_find_jobs_by_name_falls_back_to_sacct(tmp_path: Path) -> None:
    fake_tool(tmp_path, "squeue")
    fake_tool(tmp_path, "sacct", "6\n")
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path, user="alice", accounting=True, find_lookback_days=7))
    assert await client.find_jobs_by_name("probe-f3") == [6]
    assert calls(tmp_path, "sacct") == ["-X -P -n -u alice --name probe-f3 -S now-7days -E now -o JobIDRaw"]


async def test_poll_accounting(tmp_path: Path) -> None:
    fake_tool(tmp_path, "sacct", SACCT_OUTPUT)
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path, accounting=True))
    jobs = await client.poll_accounting([16, 17, 5])
    assert sorted(jobs) == [16, 17]
    assert calls(tmp_path, "sacct") == [f"-X -P -n -a -o {','.join(SACCT_FIELDS)} -j 5,16,17"]


async def test_submit_and_cancel(tmp_path: Path) -> None:
    fake_tool(tmp_path, "sbatch", "42;ucim\n", stderr="sbatch: warning: can't honor --ntasks-per-node\n")
    benign = "scancel: error: Kill job error on job id 5: Job/step already completing or completed\n"
    fake_tool(tmp_path, "scancel", stderr=benign, rc=1)
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path))
    assert await client.submit(tmp_path / "job.sbatch", cwd=tmp_path) == 42
    assert calls(tmp_path, "sbatch") == [f"--parsable {tmp_path / 'job.sbatch'}"]
    await client.cancel([7, 5, 7])
    assert calls(tmp_path, "scancel") == ["5 7"]
    fake_tool(
        tmp_path, "scancel", stderr="scancel: error: Kill job error on job id 6: Access/permission denied\n", rc=1
    )
    with pytest.raises(SlurmError, match="Access/permission denied"):
        await client.cancel([6])


async def test_submit_rejected(tmp_path: Path) -> None:
    stderr = (
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    fake_tool(tmp_path, "sbatch", stderr=stderr, rc=1)
    with pytest.raises(SlurmRejectedError, match="partition does not exist"):
        await SlurmClient(SlurmConfig(bin_dir=tmp_path)).submit(tmp_path / "job.sbatch", cwd=tmp_path)


async def test_partition_max_time_is_the_smallest_of_the_jobs_partitions(tmp_path: Path) -> None:
    fake_tool(tmp_path, "squeue", "normal,short\n")
    fake_tool(tmp_path, "sinfo", "1-00:00:00\n1:00\n1-00:00:00\n")
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path))
    assert await client.partition_max_time(42) == timedelta(minutes=1)
    assert calls(tmp_path, "squeue") == ["-h -j 42 -o %P"]
    assert calls(tmp_path, "sinfo") == ["-h -p normal,short -o %l"]
    fake_tool(tmp_path, "sinfo", "infinite\n")
    assert await client.partition_max_time(42) is None


async def test_partition_max_time_of_a_job_slurm_no_longer_has(tmp_path: Path) -> None:
    fake_tool(tmp_path, "squeue")
    with pytest.raises(SlurmError, match="no queued or running job 42"):
        await SlurmClient(SlurmConfig(bin_dir=tmp_path)).partition_max_time(42)


async def test_set_time_limit_is_one_scontrol_update_with_slurms_reason_on_refusal(tmp_path: Path) -> None:
    fake_tool(tmp_path, "scontrol")
    client = SlurmClient(SlurmConfig(bin_dir=tmp_path))
    await client.set_time_limit(42, 1500)
    assert calls(tmp_path, "scontrol") == ["update JobId=42 TimeLimit=1-01:00:00"]
    fake_tool(tmp_path, "scontrol", stderr="slurm_update error: Job/step already completing or completed\n", rc=1)
    with pytest.raises(SlurmError, match="already completing or completed"):
        await client.set_time_limit(42, 1500)

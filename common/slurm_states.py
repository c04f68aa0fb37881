"""Slurm's job states and what they mean for UCloud.

:func:`to_ucloud_state` maps a Slurm state to a UCloud state and a short message. It is
the anchor's map (UCloud/IM ``slurmToUCloudState``) except that a job that *failed* is
reported as a failure, as UCloud's own JobState documentation asks for (non-zero exit or
OOM → FAILURE), instead of the anchor's SUCCESS:

==============================================================  ==========  ==========================
Slurm state                                                     UCloud      message
==============================================================  ==========  ==========================
PENDING, CONFIGURING, RESV_DEL_HOLD, REQUEUE_FED, REQUEUE_HOLD,  IN_QUEUE    "pending (<reason>)",
REQUEUED, RESIZING, SUSPENDED, POWER_UP_NODE                                "suspended", ...
RUNNING, COMPLETING, SIGNALING, SPECIAL_EXIT, STAGE_OUT,        RUNNING     "running", ...
STOPPED
COMPLETED                                                       SUCCESS     "completed"
CANCELLED (also "CANCELLED by <uid>")                           SUCCESS     "cancelled"
FAILED                                                          FAILURE     "exited with code N" /
                                                                            "killed by signal N
                                                                            (SIGX)" / "failed
                                                                            (<reason>)"
OUT_OF_MEMORY                                                   FAILURE     "out of memory"
NODE_FAIL                                                       FAILURE     "node failure"
BOOT_FAIL                                                       FAILURE     "node boot failure"
PREEMPTED                                                       FAILURE     "preempted"
REVOKED                                                         FAILURE     "revoked"
TIMEOUT                                                         EXPIRED     "time limit reached"
DEADLINE                                                        EXPIRED     "deadline reached"
anything else                                                   IN_QUEUE    "unrecognised Slurm
                                                                            state: X"
==============================================================  ==========  ==========================

UCloud has no cancelled state: a cancellation is reported as SUCCESS, as the protocol does.
An unrecognised state maps to IN_QUEUE: a final state cannot be taken back, so an unknown
state must never end a job, and IN_QUEUE claims the least (no resources, no output); the
next known state corrects it. Slurm's SUSPENDED stays IN_QUEUE as in the anchor: UCloud's
SUSPENDED means a user-requested suspension, which this provider does not offer.
"""

from __future__ import annotations

import signal as signal_module
from collections.abc import Mapping
from typing import Final

from ucim.common.protocol import JobState

PENDING_STATES: Final = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RESV_DEL_HOLD",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "REQUEUED",
        "RESIZING",
        "SUSPENDED",
        "POWER_UP_NODE",
    }
)
RUNNING_STATES: Final = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED"})
# Final Slurm states and what they mean for UCloud; FAILED is handled apart (exit code).
_FINAL_MAP: Final[Mapping[str, tuple[JobState, str]]] = {
    "COMPLETED": (JobState.SUCCESS, "completed"),
    "CANCELLED": (JobState.SUCCESS, "cancelled"),
    "OUT_OF_MEMORY": (JobState.FAILURE, "out of memory"),
    "NODE_FAIL": (JobState.FAILURE, "node failure"),
    "BOOT_FAIL": (JobState.FAILURE, "node boot failure"),
    "PREEMPTED": (JobState.FAILURE, "preempted"),
    "REVOKED": (JobState.FAILURE, "revoked"),
    "TIMEOUT": (JobState.EXPIRED, "time limit reached"),
    "DEADLINE": (JobState.EXPIRED, "deadline reached"),
}
FINISHED_STATES: Final = frozenset({*_FINAL_MAP, "FAILED"})


def normalize_state(slurm_state: str) -> str:
    """``"CANCELLED by 1101"`` → ``"CANCELLED"``; also drops sacct's truncation mark ``+``."""
    words = slurm_state.strip().upper().split()
    return words[0].rstrip("+") if words else ""


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failed_message(exit_code: int | None, signal: int | None, reason: str | None) -> str:
    if signal:
        return f"killed by signal {signal} ({_signal_name(signal)})"
    if exit_code:
        return f"exited with code {exit_code}"
    return f"failed ({reason})" if reason else "failed"


def _waiting_message(state: str, reason: str | None) -> str:
    if state == "SUSPENDED":
        return "suspended"
    if state == "PENDING":
        return f"pending ({reason})" if reason else "pending"
    return f"pending ({state.lower()})"


def to_ucloud_state(
    slurm_state: str,
    exit_code: int | None = None,
    *,
    signal: int | None = None,
    reason: str | None = None,
) -> tuple[JobState, str]:
    """The UCloud state of a Slurm state, with a short human-readable message.

    The map is documented in this module's docstring. ``exit_code``/``signal`` make the
    FAILED message; ``reason`` (Slurm's) decorates PENDING, and FAILED without an exit status.
    """
    state = normalize_state(slurm_state)
    if state == "FAILED":
        return JobState.FAILURE, _failed_message(exit_code, signal, reason)
    if state in _FINAL_MAP:
        return _FINAL_MAP[state]
    if state in RUNNING_STATES:
        return JobState.RUNNING, "running" if state == "RUNNING" else f"running ({state.lower()})"
    if state in PENDING_STATES:
        return JobState.IN_QUEUE, _waiting_message(state, reason)
    return JobState.IN_QUEUE, f"unrecognised Slurm state: {slurm_state.strip() or '(empty)'}"

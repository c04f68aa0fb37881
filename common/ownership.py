"""Who writes what: the field managers of ucim's components and the owner of every status field.

Every status field of ucim's resources has one writing component (kubebuilder's rule: a
controller owns its resource's status). Where a list holds entries of several owners (a
UserConnection's conditions) each writes its own entries by server-side apply under its
own field manager; the one list written in two phases of a job's life (a UCloudJob's
``transitions``) is written only with the resourceVersion it was computed from. The table
in docs/architecture.md says the same; tests/unit/test_ownership.py checks the code
against :data:`STATUS_OWNERS`.
"""

from __future__ import annotations

from typing import Final, Literal

Component = Literal["gateway", "operator", "bridge"]

# The field manager each component names in its server-side applies.
FIELD_MANAGERS: Final[dict[Component, str]] = {
    "gateway": "ucim-gateway",
    "operator": "ucim-operator",
    "bridge": "ucim-bridge",
}

# (kind, status field) → the components that write it. Two owners only where said why.
STATUS_OWNERS: Final[dict[tuple[str, str], tuple[Component, ...]]] = {
    # UCloudJob: the operator submits and reports; the bridge watches Slurm.
    ("UCloudJob", "conditions"): ("operator",),
    ("UCloudJob", "observedGeneration"): ("operator",),
    ("UCloudJob", "reportedTransitions"): ("operator",),
    ("UCloudJob", "slurmJobId"): ("operator",),
    ("UCloudJob", "submittedAt"): ("operator",),
    ("UCloudJob", "jobFolder"): ("operator",),
    ("UCloudJob", "outputFolder"): ("operator",),
    ("UCloudJob", "interfaces"): ("operator",),
    ("UCloudJob", "providerGeneratedId"): ("operator",),
    ("UCloudJob", "slurmState"): ("bridge",),
    ("UCloudJob", "nodeList"): ("bridge",),
    ("UCloudJob", "exitCode"): ("bridge",),
    ("UCloudJob", "startedAt"): ("bridge",),
    ("UCloudJob", "endedAt"): ("bridge",),
    # The job's place in Slurm's queue while it waits, as the monitor last told Core.
    ("UCloudJob", "queuePosition"): ("bridge",),
    ("UCloudJob", "queueLength"): ("bridge",),
    ("UCloudJob", "estimatedStartAt"): ("bridge",),
    # Walltime extensions: the gateway asks in spec.extensions, the bridge (root) applies them with scontrol.
    ("UCloudJob", "extensions"): ("bridge",),
    ("UCloudJob", "timeLimitMinutes"): ("bridge",),
    # The operator writes the first entry (before Slurm has the job: IN_QUEUE, or the end of a
    # job Slurm never got), the bridge every later one; both with a resourceVersion precondition.
    # ``reason`` is why the job ended without Slurm (the operator's) or Slurm's own reason (the bridge's).
    ("UCloudJob", "state"): ("operator", "bridge"),
    ("UCloudJob", "transitions"): ("operator", "bridge"),
    ("UCloudJob", "reason"): ("operator", "bridge"),
    # UserInstance: the bridge has the process in front of it; nobody else writes its status.
    ("UserInstance", "conditions"): ("bridge",),
    ("UserInstance", "observedGeneration"): ("bridge",),
    ("UserInstance", "endpoint"): ("bridge",),
    ("UserInstance", "bridge"): ("bridge",),
    ("UserInstance", "pid"): ("bridge",),
    ("UserInstance", "startedAt"): ("bridge",),
    ("UserInstance", "lastActivityAt"): ("bridge",),
    ("UserInstance", "spawnDurationSeconds"): ("bridge",),
    # UserConnection: one condition each, applied under each one's field manager.
    ("UserConnection", "conditions[Connected]"): ("gateway",),
    ("UserConnection", "conditions[Mapped]"): ("bridge",),
    # The operator tells Core when a connection ends (clearConnection) and records that it did.
    ("UserConnection", "cleared"): ("operator",),
    # UCloudProject: the bridge makes the frontend match the spec (the operator's, from Core's
    # event stream) and measures usage; the operator reports that usage to Core.
    ("UCloudProject", "observedGeneration"): ("bridge",),
    ("UCloudProject", "group"): ("bridge",),
    ("UCloudProject", "gid"): ("bridge",),
    ("UCloudProject", "groupMembers"): ("bridge",),
    ("UCloudProject", "driveFolder"): ("bridge",),
    ("UCloudProject", "driveId"): ("operator",),
    ("UCloudProject", "accounts"): ("bridge",),
    ("UCloudProject", "usage"): ("bridge",),
    ("UCloudProject", "reportedUsage"): ("operator",),
    ("UCloudProject", "conditions[GroupReady]"): ("bridge",),
    ("UCloudProject", "conditions[AccountReady]"): ("bridge",),
    ("UCloudProject", "conditions[DriveReady]"): ("bridge",),
    ("UCloudProject", "conditions[UsageReported]"): ("operator",),
}

# Kinds whose conditions are owned one type at a time (each owner applies only its own).
_CONDITIONS_BY_TYPE: Final = frozenset({"UserConnection", "UCloudProject"})


class OwnershipError(Exception):
    """A component wrote a status field that is not its own: a bug, refused before it reaches the apiserver."""


def written_fields(kind: str, status: dict[str, object]) -> list[str]:
    """The fields of :data:`STATUS_OWNERS` that a status write of ``kind`` touches."""
    fields: list[str] = []
    for key, value in status.items():
        if key == "conditions" and kind in _CONDITIONS_BY_TYPE and isinstance(value, list):
            fields.extend(f"conditions[{c.get('type')}]" for c in value if isinstance(c, dict))
        else:
            fields.append(key)
    return fields


def check_writer(component: Component, kind: str, status: dict[str, object]) -> None:
    """Refuse a status write by ``component`` of a field it does not own."""
    for field in written_fields(kind, status):
        owners = STATUS_OWNERS.get((kind, field), ())
        if component not in owners:
            raise OwnershipError(f"{component} may not write {kind} status.{field} (owners: {', '.join(owners)})")

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
    ("UCloudJob", "reportedTransitions"): ("operator",),
    ("UCloudJob", "slurmJobId"): ("operator",),
    ("UCloudJob", "submittedAt"): ("operator",),
    ("UCloudJob", "jobFolder"): ("operator",),
    ("UCloudJob", "providerGeneratedId"): ("operator",),
    ("UCloudJob", "slurmState"): ("bridge",),
    ("UCloudJob", "reason"): ("bridge",),
    ("UCloudJob", "nodeList"): ("bridge",),
    ("UCloudJob", "exitCode"): ("bridge",),
    ("UCloudJob", "startedAt"): ("bridge",),
    ("UCloudJob", "endedAt"): ("bridge",),
    # The operator writes the first entry (before Slurm has the job: IN_QUEUE, or the end of a
    # job Slurm never got), the bridge every later one; both with a resourceVersion precondition.
    ("UCloudJob", "state"): ("operator", "bridge"),
    ("UCloudJob", "transitions"): ("operator", "bridge"),
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
}

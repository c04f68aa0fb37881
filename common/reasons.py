"""Condition types and reasons of ucim's resources, in one place.

Reasons are specific CamelCase constants, so `kubectl describe` and alerts can
tell one cause from another; messages carry the details in words.
"""

from __future__ import annotations

from typing import Final

# --- UCloudJob condition types -------------------------------------------------
SUBMITTED: Final = "Submitted"  # the Slurm job exists (True) or could not be created (False)
REPORTED: Final = "Reported"  # Core has every state change (True) or delivery is behind (False)
CANCELLED: Final = "Cancelled"  # termination was requested and carried out

# --- UCloudJob reasons -----------------------------------------------------------
WAITING_FOR_INSTANCE: Final = "WaitingForInstance"
WAITING_FOR_ACCOUNT: Final = "WaitingForAccount"
SUBMITTING: Final = "Submitting"
SLURM_ACCEPTED: Final = "SlurmAccepted"
SLURM_SUBMIT_REJECTED: Final = "SlurmSubmitRejected"
UNKNOWN_PRODUCT: Final = "UnknownProduct"
INSTANCE_UNREACHABLE: Final = "InstanceUnreachable"
CORE_UP_TO_DATE: Final = "CoreUpToDate"
CORE_DELIVERY_FAILING: Final = "CoreDeliveryFailing"
CANCEL_REQUESTED: Final = "CancelRequested"
SLURM_CANCELLED: Final = "SlurmCancelled"

# --- UserInstance condition types ------------------------------------------------
MAPPED: Final = "Mapped"  # the UCloud user has a local account
READY: Final = "Ready"  # the instance serves requests

# --- UserInstance reasons ---------------------------------------------------------
WAITING_FOR_BRIDGE: Final = "WaitingForBridge"
USER_MAPPED: Final = "UserMapped"
MAPPING_REFUSED: Final = "MappingRefused"
MAPPING_RETRIED: Final = "MappingRetried"  # asked again after a refusal: the bridge is trying
SPAWNING: Final = "Spawning"
INSTANCE_SERVING: Final = "InstanceServing"
SPAWN_FAILED: Final = "SpawnFailed"
INSTANCE_EXITED: Final = "InstanceExited"
IDLE_STOPPED: Final = "IdleStopped"

# --- UserConnection condition types and reasons (MAPPED as above) ------------------
CONNECTED: Final = "Connected"  # Core knows the user as connected (True), or the user unlinked (False)
CONNECTION_APPROVED: Final = "ConnectionApproved"
AUTO_CONNECTED: Final = "AutoConnected"
UNLINKED: Final = "Unlinked"  # also why a connection ended, and was cleared at Core
EXPIRED: Final = "Expired"  # the connection's spec.expiresAt passed: why it ended, and was cleared at Core

# Annotation that asks the bridge to (re)start a stopped instance: its value is a timestamp.
REQUESTED_AT_ANNOTATION: Final = "ucim.io/requested-at"

# UCloudProject conditions (GroupReady, AccountReady, DriveReady: the bridge's; UsageReported: the operator's).
GROUP_READY: Final = "GroupReady"
ACCOUNT_READY: Final = "AccountReady"
DRIVE_READY: Final = "DriveReady"
FOLDER_READY: Final = "FolderReady"
FOLDER_FAILED: Final = "FolderFailed"
USAGE_REPORTED: Final = "UsageReported"
GROUP_APPLIED: Final = "GroupApplied"
ACCOUNTS_APPLIED: Final = "AccountsApplied"
OWNER_NOT_CONNECTED: Final = "OwnerNotConnected"
CORE_ACCEPTED_USAGE: Final = "CoreAcceptedUsage"
CORE_REFUSED_USAGE: Final = "CoreRefusedUsage"

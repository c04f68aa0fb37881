"""The user_sidecar: one process per user, running as that user's UID."""

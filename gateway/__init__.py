"""The gateway: UCloud/Core's entry point; verifies Core's JWT and routes requests."""

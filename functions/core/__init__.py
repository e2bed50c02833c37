"""Workflow and contracts of the four stages; no I/O (the adapters do that)."""

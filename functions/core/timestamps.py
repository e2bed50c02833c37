"""The one timestamp format Arbiter writes, in status and in event data: RFC 3339, UTC, seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    """The time a stored or received string says; None for anything that is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # A time without an offset cannot be compared with the clock's; it says nothing.
    return parsed if parsed.tzinfo is not None else None

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
    if parsed.tzinfo is None:
        return None
    try:
        # In UTC, so writing it back (iso) cannot overflow: 9999-12-31T23:59:59-01:00 is
        # past the last datetime Python has and says nothing either.
        return parsed.astimezone(UTC)
    except OverflowError:
        return None


def elapsed(now: datetime, since: datetime) -> float:
    """Seconds from `since` to `now` (negative when `since` is later). Never adds to a time,
    so no stored or received time, however far off, can overflow it."""
    return (now - since).total_seconds()

"""What an analysis recommends: continue, promote or roll back, and the rule that fired.

Kept apart from `analytics.analysis` (which needs numpy and scipy) because the stages that
only read or carry a recommendation — start, iterate, finish — must not pay for importing
the statistics when they scale from zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Action(enum.Enum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Recommendation:
    action: Action
    version: str | None
    rule: str
    message: str


def recommendation_to_dict(rec: Recommendation) -> dict[str, Any]:
    """A recommendation as status.recommendation and the `concluded` event carry it."""
    out: dict[str, Any] = {"action": rec.action.value, "rule": rec.rule, "message": rec.message}
    if rec.version is not None:
        out["version"] = rec.version
    return out

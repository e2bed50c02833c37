"""The CloudEvent contract: every event type and extension attribute Arbiter emits or accepts.

The Trigger manifests in `eventing/` filter on these very strings; a test cross-checks them.
Builders and parsers join this module with the stage functions (issue 3).
"""

from __future__ import annotations

from typing import Final

SOURCE: Final = "arbiter.dev/functions"

# Emitted by Arbiter's own stages (reverse-DNS, one per hand-off in the event flow).
STARTED: Final = "dev.arbiter.experiment.started"
DUE: Final = "dev.arbiter.experiment.due"
MEASURED: Final = "dev.arbiter.experiment.measured"
ASSESSED: Final = "dev.arbiter.experiment.assessed"
CONCLUDED: Final = "dev.arbiter.experiment.concluded"
FINISHED: Final = "dev.arbiter.experiment.finished"

# Emitted by Knative sources we subscribe to.
APISERVER_ADD: Final = "dev.knative.apiserver.resource.add"
APISERVER_UPDATE: Final = "dev.knative.apiserver.resource.update"
APISERVER_DELETE: Final = "dev.knative.apiserver.resource.delete"
PING: Final = "dev.knative.sources.ping"

# Which event types wake which stage; the Trigger manifests must say exactly this.
TRIGGERS: Final[dict[str, tuple[str, ...]]] = {
    "start": (APISERVER_ADD, FINISHED, PING),
    "iterate": (PING, STARTED, DUE),
    "assess": (MEASURED,),
    "finish": (CONCLUDED, APISERVER_DELETE),
}

# Extension attributes carried by every Arbiter event (lower-case alphanumerics, per spec),
# so Triggers can filter on them and handlers can drop duplicates.
EXT_NAMESPACE: Final = "experimentnamespace"
EXT_NAME: Final = "experimentname"
EXT_UID: Final = "experimentuid"
EXT_ITERATION: Final = "iteration"

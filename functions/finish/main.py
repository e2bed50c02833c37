"""The finish function (FUNCTION_TARGET=finish): functions/core/finish.py does the work."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from functions.core import finish as stage
from functions.runtime import run


@functions_framework.cloud_event
def finish(event: CloudEvent) -> None:
    run(stage.handle, event)

"""The iterate function (FUNCTION_TARGET=iterate): functions/core/iterate.py does the work."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from functions.core import iterate as stage
from functions.runtime import run


@functions_framework.cloud_event
def iterate(event: CloudEvent) -> None:
    run(stage.handle, event)

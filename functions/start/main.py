"""The start function (FUNCTION_TARGET=start): functions/core/start.py does the work."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from functions.core import start as stage
from functions.runtime import run


@functions_framework.cloud_event
def start(event: CloudEvent) -> None:
    run(stage.handle, event)

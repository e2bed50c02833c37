"""The assess function (FUNCTION_TARGET=assess): functions/core/assess.py does the work."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from functions.core import assess as stage
from functions.runtime import run


@functions_framework.cloud_event
def assess(event: CloudEvent) -> None:
    run(stage.handle, event)

"""The local components' shared lifecycle: `with` starts, and stops even when the block raises."""

from __future__ import annotations

from typing import Self

import pytest

from local.broker import LocalBroker
from local.controllers import TrafficControllers
from local.kubeapi import KubeApiServer
from local.lifecycle import Component
from local.loadgen import TrafficGenerator
from local.servers import ModelVersion
from local.sources import ApiServerSourcePlayer, PingSourcePlayer


class Recorder(Component):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> Self:
        self.calls.append("start")
        return self

    def stop(self) -> None:
        self.calls.append("stop")


def test_with_starts_then_stops_even_when_the_block_raises() -> None:
    component = Recorder()
    with pytest.raises(RuntimeError), component as entered:
        assert entered is component and component.calls == ["start"]
        raise RuntimeError("boom")
    assert component.calls == ["start", "stop"]


def test_a_component_without_a_stop_cannot_be_made() -> None:
    class Unstoppable(Component):
        def start(self) -> Self:
            return self

    with pytest.raises(TypeError, match="stop"):
        Unstoppable()  # type: ignore[abstract]


@pytest.mark.parametrize(
    "kind",
    [
        LocalBroker,
        PingSourcePlayer,
        ApiServerSourcePlayer,
        KubeApiServer,
        ModelVersion,
        TrafficGenerator,
        TrafficControllers,
    ],
)
def test_every_local_component_shares_the_lifecycle(kind: type) -> None:
    assert issubclass(kind, Component)

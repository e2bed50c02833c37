"""The functions as Knative runs them: each a functions-framework process, scaled to zero.

`function_process` starts one stage as Knative starts its container (FUNCTION_TARGET,
FUNCTION_SOURCE, K_SINK, PORT). `ScaleToZero` plays Knative's autoscaler and activator
for the local broker: a function has no process until an event comes for it; the delivery
waits while the process starts (the activator buffers requests to a revision scaled to
zero), and the process is stopped once it has served nothing for `idle_s` (the
scale-to-zero grace period). Each start is a cold start, timed from the spawn to the
first answer on its port, and kept for the run's report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import requests

from local.broker import ActivationError
from local.lifecycle import Component, stop_process

log = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parents[1]
# A cloudevent function answers a bare GET with 400 or 405: the framework is up.
_UP_CODES: Final = (400, 405)


def function_process(
    stage: str, port: int, env: Mapping[str, str], log_file: Any
) -> subprocess.Popen[bytes]:
    """One stage's functions-framework process on 127.0.0.1:`port`, as Knative starts it."""
    executable = Path(sys.executable).with_name("functions-framework")
    return subprocess.Popen(
        [str(executable), "--host", "127.0.0.1", "--port", str(port)],
        env={
            **os.environ,
            **env,
            "FUNCTION_TARGET": stage,
            "FUNCTION_SOURCE": str(ROOT / "functions" / stage / "main.py"),
            "FUNCTION_SIGNATURE_TYPE": "cloudevent",
            "PORT": str(port),
        },
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def is_up(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(url, timeout=1).status_code in _UP_CODES
    return False


@dataclass(frozen=True)
class ColdStarts:
    """One function's cold starts: how many, and the seconds from spawn to ready of each."""

    stage: str
    seconds: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def __str__(self) -> str:
        if not self.seconds:
            return f"{self.stage} never started"
        return f"{self.stage} {self.count}× (median {self.median_s:.2f} s to ready)"


@dataclass
class _Function:
    stage: str
    url: str
    port: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    process: subprocess.Popen[bytes] | None = None
    in_flight: int = 0
    idle_since: float = 0.0
    starts: list[float] = field(default_factory=list)


class ScaleToZero(Component):
    """The four functions at zero until an event comes; the broker's activator.

    `hold(url)` is what the broker wraps each delivery attempt in: it starts the function
    behind `url` if it has no process (every delivery to it waits meanwhile), counts the
    request in flight so the function is not stopped under it, and marks it idle after.
    A reaper stops a function once it has been idle for `idle_s`.
    """

    def __init__(
        self,
        stages: Mapping[str, int],
        env: Mapping[str, str],
        workdir: Path,
        *,
        idle_s: float,
        ready_timeout_s: float = 60.0,
    ) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s must be positive, got {idle_s}")
        self._env = dict(env)
        self._workdir = workdir
        self._idle_s = idle_s
        self._ready_timeout_s = ready_timeout_s
        self._functions = {
            f"http://127.0.0.1:{port}/": _Function(stage, f"http://127.0.0.1:{port}/", port)
            for stage, port in stages.items()
        }
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="scale-to-zero", daemon=True)

    @property
    def urls(self) -> dict[str, str]:
        """Each function's URL by its Knative Service name (`arbiter-<stage>`)."""
        return {f"arbiter-{f.stage}": f.url for f in self._functions.values()}

    def start(self) -> Self:
        self._stop.clear()
        self._reaper.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._reaper.is_alive():
            self._reaper.join(timeout=5)
        for function in self._functions.values():
            with function.lock:
                if function.process is not None:
                    stop_process(function.process)
                    function.process = None

    def cold_starts(self) -> list[ColdStarts]:
        return [ColdStarts(f.stage, tuple(f.starts)) for f in self._functions.values()]

    def running(self) -> list[str]:
        return [
            f.stage
            for f in self._functions.values()
            if f.process is not None and f.process.poll() is None
        ]

    @contextlib.contextmanager
    def hold(self, url: str) -> Iterator[None]:
        function = self._functions.get(url)
        if function is None:  # not a function (a Trigger's plain URI): nothing to activate
            yield
            return
        with function.lock:
            # Under the function's lock, so other deliveries to it queue while it starts
            # and the reaper cannot stop it between the check and the request.
            if function.process is None or function.process.poll() is not None:
                self._cold_start(function)
            function.in_flight += 1
        try:
            yield
        finally:
            with function.lock:
                function.in_flight -= 1
                function.idle_since = time.monotonic()

    def _cold_start(self, function: _Function) -> None:
        log_file = (self._workdir / f"function-{function.stage}.log").open("a")
        began = time.monotonic()
        try:
            process = function_process(function.stage, function.port, self._env, log_file)
        finally:
            log_file.close()  # the child has its own descriptor
        deadline = began + self._ready_timeout_s
        while not is_up(function.url):
            if process.poll() is not None or time.monotonic() > deadline or self._stop.is_set():
                stop_process(process)
                raise ActivationError(
                    f"function {function.stage} did not come up on port {function.port} "
                    f"within {self._ready_timeout_s:g} s (see function-{function.stage}.log)"
                )
            time.sleep(0.02)
        function.process = process
        function.starts.append(time.monotonic() - began)
        log.info("cold start of %s: %.2f s", function.stage, function.starts[-1])

    def _reap(self) -> None:
        while not self._stop.wait(min(0.25, self._idle_s / 4)):
            now = time.monotonic()
            for function in self._functions.values():
                # Never wait for a function that is starting: its lock is held for that.
                if not function.lock.acquire(blocking=False):
                    continue
                try:
                    idle = function.in_flight == 0 and now - function.idle_since > self._idle_s
                    if function.process is not None and idle:
                        stop_process(function.process)
                        function.process = None
                        log.info("scaled %s to zero", function.stage)
                finally:
                    function.lock.release()

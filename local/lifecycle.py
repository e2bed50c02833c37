"""What every local component shares: started and stopped, and usable as a context manager.

The broker, the source players, the API server, the model servers, the traffic generator
and the controller stand-ins each start threads or servers in `start()` and release them in
`stop()`; `with component:` does both, stopping even when the block raises. Those that run
a child process end it with `stop_process`.
"""

from __future__ import annotations

import abc
import subprocess
from types import TracebackType
from typing import Any, Self


class Component(abc.ABC):
    """A local component with a start and a stop."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start serving or running; return self (so `x = Component(...).start()` reads)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop and release what `start` took; safe to call after a failed start."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    """End a child process: SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

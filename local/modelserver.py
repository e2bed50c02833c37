"""One simulated model version as a process: a real KServe model server behind the
queue-proxy stand-in.

`python -m local.modelserver` reads a `ServerConfig` (JSON in the environment variable
`ARBITER_MODEL_SERVER`, because `kserve.model_server` parses the command line at import) and
runs `kserve.ModelServer` with one `SimulatedModel`: the iris classifier's coefficients,
answering KServe's real v1 (`{"instances": ...}`) and v2 (open inference protocol) predict
routes, and exporting KServe's own `/metrics` (`request_predict_seconds` and the others,
labelled `model_name`). The model behaves as the version's profile says: it really waits
its drawn latency (so latency is real whatever `--speed`) and raises `InferenceError`,
which KServe answers 500, for its share of errors. It also counts, per instance with a
known iris class, the predictions that were right (`model_prediction_correct_total` out of
`model_prediction_total`): a ground-truth reward, labelled with the revision the way
Knative's environment (K_REVISION, K_CONFIGURATION) tells the container.

In the same process, on the model server's event loop, the `QueueProxy` forwards its port
to the model server and exports the Knative generation's request metrics: one process per
version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np

ENV: Final = "ARBITER_MODEL_SERVER"
REWARD_LABELS: Final = (
    "namespace_name",
    "configuration_name",
    "revision_name",
    "response_code",
    "response_code_class",
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the process needs, as plain values (it crosses a process boundary)."""

    model_name: str
    namespace: str
    service: str
    configuration: str
    revision: str
    error_rate: float
    latency_median_ms: float
    latency_sigma: float
    coef: list[list[float]]
    intercept: list[float]
    truth: list[tuple[list[float], int]]  # the iris rows and their classes
    seed: int
    generation: str
    http_port: int
    proxy_port: int
    metrics_port: int

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServerConfig:
        raw = json.loads(text)
        raw["truth"] = [(list(row), int(y)) for row, y in raw["truth"]]
        return cls(**raw)


def main() -> int:
    text = os.environ.get(ENV)
    if not text:
        sys.stderr.write(f"{ENV} must hold the server's configuration (JSON)\n")
        return 2
    config = ServerConfig.from_env(text)
    # Neither KServe's metrics nor queue-proxy's have `_created` series.
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    disable_created_metrics()  # type: ignore[no-untyped-call]
    # Imported here: kserve parses sys.argv at import and takes ~0.6 s.
    import kserve  # noqa: PLC0415

    from local.queueproxy import QueueProxy, RequestMetrics, RevisionInfo, generation  # noqa: PLC0415

    info = RevisionInfo(config.namespace, config.service, config.configuration, config.revision)
    proxy = QueueProxy(
        f"http://127.0.0.1:{config.http_port}",
        RequestMetrics(generation(config.generation), info),
        port=config.proxy_port,
        metrics_port=config.metrics_port,
    )

    class ModelServer(kserve.ModelServer):  # type: ignore[misc]
        """kserve.ModelServer with the proxy served on its event loop, beside uvicorn.

        `_serve` is the coroutine ModelServer.start runs with asyncio.run (kserve 0.21)."""

        async def _serve(self) -> None:
            await proxy.open()
            try:
                await super()._serve()
            finally:
                await proxy.close()

    model = _model_class(kserve)(config)
    model.load()
    server = ModelServer(
        http_port=config.http_port,
        workers=1,
        enable_grpc=False,
        enable_docs_url=False,
        grace_period=2,
    )
    # KServe logs every request at INFO, twice (uvicorn.access, and its timings on
    # kserve.trace): hundreds of lines a second in a run, CPU the versions share.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
    return 0


def _model_class(kserve: Any) -> type[Any]:
    """`SimulatedModel`, defined once kserve is imported (it subclasses `kserve.Model`)."""
    from kserve.errors import InferenceError, InvalidInput  # noqa: PLC0415
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: PLC0415
    from prometheus_client import Counter  # noqa: PLC0415  # KServe's /metrics registry

    correct = Counter(
        "model_prediction_correct",
        "Predictions on instances with a known class that were right",
        REWARD_LABELS,
    )
    scored = Counter(
        "model_prediction", "Predictions on instances with a known class", REWARD_LABELS
    )

    class SimulatedModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, config: ServerConfig) -> None:
            super().__init__(config.model_name)
            self.config = config
            self._coef = np.asarray(config.coef, dtype=np.float64)
            self._intercept = np.asarray(config.intercept, dtype=np.float64)
            self._truth = {tuple(row): y for row, y in config.truth}
            self._rng = np.random.default_rng(config.seed)
            self._labels = (config.namespace, config.configuration, config.revision, "200", "2xx")
            # Exported at 0 from the start, so increase() sees the first right answer.
            correct.labels(*self._labels)
            scored.labels(*self._labels)

        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(
            self,
            payload: dict[str, Any] | InferRequest,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> dict[str, Any] | InferResponse:
            c = self.config
            latency_s = (
                c.latency_median_ms
                / 1000.0
                * float(np.exp(c.latency_sigma * self._rng.standard_normal()))
            )
            failed = bool(self._rng.random() < c.error_rate)
            instances = self._instances(payload)
            await asyncio.sleep(latency_s)
            if failed:
                raise InferenceError("simulated failure")
            predictions = [int(k) for k in np.argmax(instances @ self._coef.T + self._intercept, 1)]
            self._score(instances, predictions)
            if isinstance(payload, InferRequest):
                output = InferOutput("output-0", [len(predictions)], "INT64")
                output.set_data_from_numpy(np.asarray(predictions, dtype=np.int64), False)
                return InferResponse(payload.id or "", self.name, [output])
            return {"predictions": predictions}

        def _instances(self, payload: dict[str, Any] | InferRequest) -> np.ndarray[Any, Any]:
            try:
                if isinstance(payload, InferRequest):
                    array = np.asarray(payload.inputs[0].as_numpy(), dtype=np.float64)
                else:
                    array = np.asarray(payload["instances"], dtype=np.float64)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise InvalidInput(f'expected {{"instances": [[4 numbers], ...]}}: {e}') from None
            if array.ndim != 2 or array.shape[1] != self._coef.shape[1]:
                raise InvalidInput(
                    f"instances must be rows of {self._coef.shape[1]} numbers, "
                    f"got shape {array.shape}"
                )
            return array

        def _score(self, instances: np.ndarray[Any, Any], predictions: list[int]) -> None:
            known = right = 0
            for row, predicted in zip(instances.tolist(), predictions, strict=True):
                expected = self._truth.get(tuple(row))
                if expected is not None:
                    known += 1
                    right += int(predicted == expected)
            if known:
                scored.labels(*self._labels).inc(known)
                correct.labels(*self._labels).inc(right)

    return SimulatedModel


if __name__ == "__main__":
    sys.exit(main())

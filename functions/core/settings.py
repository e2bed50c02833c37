"""The functions' configuration: read once, at the edge, from the environment.

On a cluster the values come from the `arbiter-settings` ConfigMap (config/settings.yaml);
locally `arbiter run` sets them. Besides KUBECONFIG, which functions/runtime.py hands to the
Kubernetes client, nothing else in the functions reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from functions.core.errors import PermanentError

_PREFIX = "ARBITER_"


@dataclass(frozen=True)
class Settings:
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    query_timeout_seconds: float = 10.0
    query_retries: int = 2
    # How long start waits for the candidate to become Ready before failing the experiment.
    ready_timeout_seconds: float = 600.0
    # Failed measurement requests in a row (Prometheus or the API server unreachable through
    # every delivery of the request's event; each request counts once, and there is at most
    # one per interval) before the experiment is ended the safe way: traffic back to the
    # baseline.
    max_transient_failures: int = 5
    # How long finish and assess wait for an applied split to show in the object's status.
    readback_timeout_seconds: float = 30.0
    # The clock's deadlines (functions/core/sweep.py). The longest one experiment may run
    # (from its start): an experiment whose duration cannot fit is refused at start, one
    # still running past it is rolled back, so nobody holds a target for ever.
    max_experiment_seconds: float = 7 * 24 * 3600.0
    # How long an experiment may stay Finishing before finish makes a last attempt to restore
    # the baseline and, failing that, ends it Failed with a condition saying what failed.
    finish_deadline_seconds: float = 600.0
    log_level: str = "INFO"
    # K_SINK: where the functions post the next event (the broker); set by a SinkBinding.
    sink: str | None = None
    # The OIDC token the SinkBinding mounts when Eventing's authentication-oidc is on; sent
    # to the broker as a bearer token. No file, no token: OIDC is off.
    sink_token_file: str = "/oidc/token"
    # The API server's URL when it is reached through `kubectl proxy` (which adds the
    # credentials) or in a local run; unset on a cluster: the pod's service account is used.
    kubernetes_url: str | None = None
    # Read these /metrics endpoints directly instead of Prometheus (a local run without a
    # prometheus binary); empty on a cluster.
    metrics_targets: tuple[str, ...] = ()
    # Tenancy (namespace confinement): the namespace Arbiter runs in, whose shared Metric
    # library every experiment may name as `<system namespace>/<metric>`.
    system_namespace: str = "arbiter-system"
    # Field paths the generic field-path backend may write, per object kind, besides those
    # an object's owner lists in its `arbiter.dev/traffic-paths` annotation. `*` stands
    # for one path segment.
    traffic_paths: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"VirtualService": ("/spec/http/*/route/*/weight",)}
    )
    # Alert sinks (functions/core/notify.py): the URI prefixes an Experiment's
    # `spec.notify[].uri` may start with; empty, no URI is allowed (Addressables in the
    # experiment's own namespace always are). Each prefix is an http(s) URL ending in "/",
    # so `https://hooks.example.com/` cannot be stretched to `https://hooks.example.com.evil/`.
    notify_uris: tuple[str, ...] = ()
    # Attempts to deliver one notification to one sink (one per clock tick at most) before
    # giving up on it with the Notified condition False.
    notify_attempts: int = 5
    # Who records the Kubernetes Events: the stage (FUNCTION_TARGET, which Knative and the
    # local run set) as reportingController `arbiter.dev/<stage>`, and the pod (HOSTNAME)
    # as reportingInstance.
    function_target: str = ""
    instance: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables, naming the variable in any error."""
        problems: list[str] = []

        def number(key: str, default: float, integer: bool = False) -> float:
            raw = env.get(_PREFIX + key)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                kind = "an integer" if integer else "a number"
                problems.append(f"{_PREFIX}{key}: must be {kind}, got {raw!r}")
                return default
            if value < 0:
                problems.append(f"{_PREFIX}{key}: must not be negative, got {raw!r}")
                return default
            return value

        paths_raw = env.get(_PREFIX + "TRAFFIC_PATHS")
        traffic_paths = cls().traffic_paths
        if paths_raw is not None and paths_raw.strip():
            try:
                traffic_paths = parse_traffic_paths(paths_raw)
            except ValueError as e:
                problems.append(f"{_PREFIX}TRAFFIC_PATHS: {e}")

        notify_uris = tuple(
            u.strip() for u in env.get(_PREFIX + "NOTIFY_URIS", "").split(",") if u.strip()
        )
        for uri in notify_uris:
            if not uri.startswith(("https://", "http://")) or not uri.endswith("/"):
                problems.append(
                    f"{_PREFIX}NOTIFY_URIS: {uri!r} must be an http(s) URL ending in '/'"
                )

        level = env.get(_PREFIX + "LOG_LEVEL", cls.log_level).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"{_PREFIX}LOG_LEVEL: must be DEBUG, INFO, WARNING or ERROR")
        settings = cls(
            prometheus_url=env.get(_PREFIX + "PROMETHEUS_URL") or cls.prometheus_url,
            query_timeout_seconds=number("QUERY_TIMEOUT_SECONDS", cls.query_timeout_seconds),
            query_retries=int(number("QUERY_RETRIES", cls.query_retries, integer=True)),
            ready_timeout_seconds=number("READY_TIMEOUT_SECONDS", cls.ready_timeout_seconds),
            max_transient_failures=int(
                number("MAX_TRANSIENT_FAILURES", cls.max_transient_failures, integer=True)
            ),
            readback_timeout_seconds=number(
                "READBACK_TIMEOUT_SECONDS", cls.readback_timeout_seconds
            ),
            max_experiment_seconds=number("MAX_EXPERIMENT_SECONDS", cls.max_experiment_seconds),
            finish_deadline_seconds=number("FINISH_DEADLINE_SECONDS", cls.finish_deadline_seconds),
            log_level=level,
            sink=env.get("K_SINK") or None,
            sink_token_file=env.get(_PREFIX + "SINK_TOKEN_FILE") or cls.sink_token_file,
            kubernetes_url=(env.get(_PREFIX + "KUBERNETES_URL") or "").strip() or None,
            metrics_targets=tuple(
                t.strip() for t in env.get(_PREFIX + "METRICS_TARGETS", "").split(",") if t.strip()
            ),
            system_namespace=(env.get(_PREFIX + "SYSTEM_NAMESPACE") or "").strip()
            or cls.system_namespace,
            traffic_paths=traffic_paths,
            notify_uris=notify_uris,
            notify_attempts=int(number("NOTIFY_ATTEMPTS", cls.notify_attempts, integer=True)),
            function_target=(env.get("FUNCTION_TARGET") or "").strip(),
            instance=(env.get("HOSTNAME") or "").strip(),
        )
        if problems:
            raise PermanentError("; ".join(problems))
        return settings


def parse_traffic_paths(raw: str) -> dict[str, tuple[str, ...]]:
    """`Kind=/a/*/b,/c;Other=/d` -> {"Kind": ("/a/*/b", "/c"), "Other": ("/d",)}."""
    result: dict[str, tuple[str, ...]] = {}
    for entry in raw.split(";"):
        if not entry.strip():
            continue
        kind, sep, paths = entry.partition("=")
        listed = tuple(p.strip() for p in paths.split(",") if p.strip())
        if not sep or not kind.strip() or not listed:
            raise ValueError(f"expected Kind=/path,/path;Kind=/path, got {entry.strip()!r}")
        bad = [p for p in listed if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths are JSON pointers starting with '/', got {bad}")
        result[kind.strip()] = result.get(kind.strip(), ()) + listed
    return result

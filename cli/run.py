"""`arbiter run EXPERIMENT.yaml`: run experiments end to end on this machine.

Starts a Kubernetes API emulator, the simulated model versions, Prometheus, the four
functions, the local broker and its sources, and a traffic generator; creates the
Experiment and shows each iteration until the verdict. A file with several Experiments
runs them all at once (those on one target queue) and reports one line each. With
--scale-to-zero each function starts on its first event and stops when idle, as Knative
runs it. With --kubeconfig it uses that cluster (and its Prometheus, --prometheus-url)
instead of the emulator and simulations.
Exit code 0 when the experiment completed (promoted or rolled back) — with several, when
every one kept its promise — 1 otherwise, 2 on a bad file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli import args as args_types
from cli import report
from cli.analyze import InputError
from local.harness import LocalRun, Options, RunError
from local.sample import SampleError, load

DEFAULT_SAMPLE = "samples/local/canary-good.yaml"
# Knative Serving's scale-to-zero-grace-period default: "30s" in knative/serving
# config/core/configmaps/autoscaler.yaml (knative-v1.23.0).
DEFAULT_IDLE_SECONDS = 30.0


def register(commands: Any) -> None:
    p = commands.add_parser("run", help="run an experiment end to end locally", description=__doc__)
    p.add_argument(
        "file", nargs="?", default=DEFAULT_SAMPLE, help=f"sample (default {DEFAULT_SAMPLE})"
    )
    p.add_argument(
        "--speed",
        type=args_types.positive_float,
        default=1.0,
        help="compress time N-fold: intervals shrink N-fold, the request rate is kept",
    )
    p.add_argument("--output", type=Path, help="keep the event log and status history here")
    p.add_argument("--kubeconfig", help="run against this cluster instead of the emulator")
    p.add_argument("--prometheus-url", help="the Prometheus to query (default: start one)")
    p.add_argument(
        "--direct-metrics",
        action="store_true",
        help="read the versions' /metrics directly instead of starting Prometheus "
        "(the default when no prometheus binary is installed)",
    )
    p.add_argument("--seed", type=args_types.seed, default=1, help="seed of the simulations")
    p.add_argument(
        "--timeout", type=args_types.positive_float, help="give up after this many seconds"
    )
    p.add_argument(
        "--scale-to-zero",
        action="store_true",
        help="start each function on its first event and stop it when idle, as Knative does; "
        "deliveries wait while a function starts, and the cold starts are reported",
    )
    p.add_argument(
        "--idle-seconds",
        type=args_types.positive_float,
        default=DEFAULT_IDLE_SECONDS,
        help="with --scale-to-zero: idle time before a function is stopped, in the run's "
        "simulated seconds (divided by --speed like the intervals; "
        f"default {DEFAULT_IDLE_SECONDS:g}, Knative's scale-to-zero grace period)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        sample = load(args.file)
    except SampleError as e:
        raise InputError(str(e)) from None
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        raise InputError(f"--kubeconfig {args.kubeconfig}: no such file")
    options = Options(
        speed=args.speed,
        output=args.output,
        kubeconfig=args.kubeconfig,
        prometheus_url=args.prometheus_url,
        seed=args.seed,
        timeout_s=args.timeout,
        direct_metrics=args.direct_metrics,
        idle_seconds=args.idle_seconds if args.scale_to_zero else None,
    )
    try:
        code = LocalRun(sample, options).run()
        if args.output is not None and (args.output / "experiment.json").is_file():
            # The run's output folder gets the same page `arbiter report DIR` writes.
            report.write(report.from_run_folder(args.output), args.output / "report.html")
        return code
    except RunError as e:
        print(f"arbiter run: {e}")
        return 1
    except KeyboardInterrupt:
        print("\narbiter run: interrupted; everything stopped")
        return 130

"""`arbiter run EXPERIMENT.yaml`: run an experiment end to end on this machine.

Starts a Kubernetes API emulator, the simulated model versions, Prometheus, the four
functions, the local broker and its sources, and a traffic generator; creates the
Experiment and shows each iteration until the verdict. With --kubeconfig it uses that
cluster (and its Prometheus, --prometheus-url) instead of the emulator and simulations.
Exit code 0 when the experiment completed (promoted or rolled back), 1 when it failed,
2 on a bad file.
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

"""A sizing table for the peak from two load tests that did not saturate the machine.

    python -m bench.loadtest.sizing bench/results/loadtest/<run A> bench/results/loadtest/<run B>

Each component's CPU a minute is fitted as a fixed cost per minute plus a cost per event, from the
two runs' ``summary.json`` (their rates must differ), and extrapolated to ``--rate`` (400,000 a
minute): worker cores for the tasks, each Airflow component's cores, and how many Celery workers
of ``--worker-vcpu`` carry the tasks at ``--utilisation``. A run whose machine was busier than
``SATURATED`` of its capacity is refused: a starved run's CPU a minute says what the machine had,
not what the work needs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from enrollment.simulator.cli import parse_rate

SATURATED = 0.85  # of the machine's capacity, busy: past it, a run is not a source for sizing

# The Airflow components, each its own process (a pod or a service in production).
AIRFLOW = (
    "airflow scheduler",
    "airflow dag-processor",
    "airflow triggerer",
    "airflow api-server",
    "postgresql",
    "redis",
)


def per_minute(rate: str) -> float:
    """Events a minute of a ``--rate`` (``30000/min``, ``500/s``)."""
    per_s = parse_rate(rate)
    if per_s is None:
        raise ValueError("size for a rate, not 'max'")
    return per_s * 60


def events_per_minute(summary: dict[str, Any]) -> float:
    """What the run produced a minute (its rate as asked when the figure is missing)."""
    return float(summary.get("produced_events_per_min") or per_minute(summary["rate"]))


def groups(summary: dict[str, Any]) -> dict[str, float]:
    """The run's CPU-s a minute: the tasks together, and each Airflow component."""
    cpu = summary["cpu"]["cpu_s_per_min"]
    out = {"tasks": sum(v for k, v in cpu.items() if k.startswith(("tasks:", "airflow workers")))}
    out |= {k: cpu[k] for k in AIRFLOW if k in cpu}
    return out


def fit(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per group: (CPU-s a minute fixed, CPU-s per event), through the two runs' points."""
    ra, rb = events_per_minute(a), events_per_minute(b)
    if ra == rb:
        raise ValueError("the two runs have the same rate: no cost per event can be fitted")
    ga, gb = groups(a), groups(b)
    out = {}
    for name in ga.keys() & gb.keys():
        per_event = (gb[name] - ga[name]) / (rb - ra)
        out[name] = (ga[name] - per_event * ra, per_event)
    return out


def saturated(summary: dict[str, Any]) -> bool:
    cpu = summary["cpu"]
    return cpu["machine_busy_cpu_s_per_min"] > SATURATED * cpu["machine_capacity_cpu_s_per_min"]


def sizing(
    a: dict[str, Any],
    b: dict[str, Any],
    rate: float = 400_000,
    worker_vcpu: float = 2.0,
    utilisation: float = 0.7,
) -> dict[str, Any]:
    """Cores at ``rate`` per group, and the Celery workers the tasks need."""
    for s in (a, b):
        if saturated(s):
            raise ValueError(
                f"the {s['rate']} run kept the machine "
                f"{s['cpu']['machine_busy_cpu_s_per_min']:.0f} of "
                f"{s['cpu']['machine_capacity_cpu_s_per_min']:.0f} CPU-s a minute busy "
                f"(over {SATURATED:.0%}): saturated, not a source for sizing"
            )
    lines = fit(a, b)
    cores = {
        name: max(0.0, fixed + per_event * rate) / 60 for name, (fixed, per_event) in lines.items()
    }
    return {
        "rate": rate,
        "runs": [a["rate"], b["rate"]],
        "fit": {
            n: {"fixed_cpu_s_per_min": f, "cpu_s_per_1m": e * 1e6} for n, (f, e) in lines.items()
        },
        "cores": cores,
        "celery_workers": math.ceil(cores.get("tasks", 0.0) / (worker_vcpu * utilisation)),
        "worker_vcpu": worker_vcpu,
        "utilisation": utilisation,
    }


def markdown(s: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {f['fixed_cpu_s_per_min']:.1f} | {f['cpu_s_per_1m']:.0f} "
        f"| {s['cores'][name]:.2f} |"
        for name, f in sorted(s["fit"].items(), key=lambda kv: -s["cores"][kv[0]])
    )
    return (
        f"Fitted from the runs at {s['runs'][0]} and {s['runs'][1]}; "
        f"at **{s['rate']:,.0f} events/min**:\n\n"
        "| component | fixed CPU-s a minute | CPU-s per 1M events | cores at the rate |\n"
        "|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Tasks: **{s['celery_workers']} Celery worker(s)** of {s['worker_vcpu']:g} vCPU at "
        f"{s['utilisation']:.0%} utilisation.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, type=Path, help="two load-test report folders")
    parser.add_argument("--rate", default="400000/min", help="the rate to size for")
    parser.add_argument("--worker-vcpu", type=float, default=2.0)
    parser.add_argument("--utilisation", type=float, default=0.7)
    args = parser.parse_args(argv)
    a, b = (json.loads((run / "summary.json").read_text()) for run in args.runs)
    try:
        table = sizing(a, b, per_minute(args.rate), args.worker_vcpu, args.utilisation)
    except ValueError as exc:
        print(f"sizing: {exc}", file=sys.stderr)
        return 2
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The simulator producing to the local Kafka as fast as it can, from one process, with the
2 % fault mix and the expected-outcome file. Target: at least 1,000,000 events per minute.

Starts the stack's Kafka if it is not running (and leaves it running). Writes
bench/results/simulator.json."""

from __future__ import annotations

import os
import sys
import tempfile

from bench.common import write
from enrollment.simulator import cli
from stack import cli as stack_cli
from stack import config as stack_config

EVENTS = 1_000_000


def main() -> int:
    stack_cli.up(["kafka"], quiet=True)
    os.environ.update(stack_config.load().client_env())
    with tempfile.TemporaryDirectory() as tmp:
        summary = cli.produce(
            cli.parse_args(
                [
                    "produce",
                    "--events",
                    str(EVENTS),
                    "--rate",
                    "max",
                    "--faults",
                    "2%",
                    "--seed",
                    "2026",
                    "--expected",
                    f"{tmp}/expected.jsonl",
                ]
            )
        )
    figures = {
        "events": summary["events"],
        "seconds": summary["seconds"],
        "events_per_min": summary["events_per_min"],
        "target_events_per_min": 1_000_000,
        "faults": summary["faults"],
        "target": "kafka",
    }
    print(
        f"simulator: {figures['events']:,} events to Kafka in {figures['seconds']:.1f} s = "
        f"{figures['events_per_min']:,} events/min from one process"
    )
    write("simulator", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

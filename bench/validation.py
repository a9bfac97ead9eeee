"""Validation of one peak minute: 400,000 mixed events with a 2 % fault mix, on one core.

Prints events/second and the ratio against plain json.loads of the same messages (measured in
the same run), checks the result against the simulator's expected outcomes, and writes
bench/results/validation.json. Target: under 2 seconds."""

from __future__ import annotations

import json
import statistics
import sys
import time

from bench.common import pin_to_one_core, write
from enrollment.ingest.validation import validate_batch
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator

EVENTS = 400_000
REPEATS = 3


def main() -> int:
    pin_to_one_core()
    print(f"generating {EVENTS:,} events with a 2% fault mix ...", file=sys.stderr, flush=True)
    sim = Simulator(seed=2026, faults=FaultRates.mix(0.02))
    messages = [next(sim) for _ in range(EVENTS)]
    values = [m.value for m in messages]

    def json_loads_all() -> None:
        for value in values:
            # contextlib.suppress would add its own cost to what this loop times
            try:  # noqa: SIM105
                json.loads(value)
            except ValueError:
                pass

    baseline, timings, result = [], [], None
    for run in range(REPEATS):
        t0 = time.perf_counter()
        json_loads_all()
        baseline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = validate_batch(values)
        timings.append(time.perf_counter() - t0)
        print(
            f"  run {run + 1}: validate {timings[-1]:.2f} s, json.loads {baseline[-1]:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    got = {i: [] for i in range(EVENTS)}
    for row in result.quarantine.select(["source_index", "reasons"]).to_pylist():
        got[row["source_index"]] = row["reasons"]
    mismatches = sum(got[m.seq] != m.expected["reasons"] for m in messages)
    seconds, base = statistics.median(timings), statistics.median(baseline)
    figures = {
        "events": EVENTS,
        "bytes": sum(map(len, values)),
        "seconds": round(seconds, 3),
        "events_per_s": round(EVENTS / seconds),
        "baseline_json_loads_s": round(base, 3),
        "ratio_vs_json_loads": round(seconds / base, 2),
        "target_seconds": 2.0,
        "valid": result.valid.num_rows,
        "quarantined": result.quarantine.num_rows,
        "duplicates": result.duplicates,
        "mismatches_vs_expected": mismatches,
        "repeats": REPEATS,
        "statistic": "median",
    }
    print(
        f"validation: {EVENTS:,} events in {seconds:.2f} s = {EVENTS / seconds:,.0f} events/s on "
        "one core "
        f"(json.loads alone {base:.2f} s; validation takes {seconds / base:.2f}x as long); "
        f"{result.quarantine.num_rows:,} quarantined, {mismatches} differ from the expected "
        "outcomes"
    )
    write("validation", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freshness on the running system: the simulator sends a steady rate (default 400,000 events/min
for 5 minutes) into the region topics; the scheduler, the backlog trigger and the four ingest
DAGs carry them; a sampler watches enrollments appear in BigQuery's current-state table.

Freshness of an enrollment = first seen in `partners` - its occurred_at (the simulator stamps
events with the wall clock when producing); polling every 2 s adds up to 2 s. Also counts the
records the committed offsets account for against the records produced. Merges its figures into
bench/results/ingest.json. Leaves the DAGs paused as it found them.

    BENCH_RATE=400000/min BENCH_DURATION=5m python -m bench.freshness
"""

from __future__ import annotations

import os
import sys

from bench.common import RESULTS, write
from bench.load import POLL_S, log, percentiles, steady_load
from bench.plots import latency_over_time
from bench.watch import WarehouseWatcher
from enrollment.config import load_config
from stack import cli as stack_cli
from stack import config as stack_config

RATE = os.environ.get("BENCH_RATE", "400000/min")
DURATION = os.environ.get("BENCH_DURATION", "5m")


def main() -> int:
    stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    config = load_config()
    watcher = WarehouseWatcher(cfg, config)
    seen = watcher.seen
    outcome = steady_load(
        cfg, config, RATE, DURATION, config.carrier_dags(sinks=False), watcher.poll
    )
    q = percentiles([seen[p] - outcome.watched[p] for p in seen])
    plot = latency_over_time(
        RESULTS / "freshness.png",
        {
            "queryable in partners": [
                (outcome.watched[p], seen[p] - outcome.watched[p]) for p in seen
            ]
        },
        f"Enrollment to queryable in BigQuery at {RATE} for {DURATION}",
        target_s=60,
    )
    log(f"plot: {plot}")
    figures = {
        "freshness_rate": RATE,
        "freshness_duration": DURATION,
        "freshness_produced": outcome.produced,
        "freshness_samples": len(outcome.watched),
        "freshness_samples_seen": len(seen),
        "freshness_p50_s": q["p50"],
        "freshness_p95_s": q["p95"],
        "freshness_max_s": q["max"],
        "freshness_unexplained_records": outcome.unexplained,
        "freshness_failed_runs": outcome.failed_runs,
        "freshness_note": f"enrollments seen in the partners table, polled every {POLL_S:g} s; on "
        "the BigQuery emulator, whose every write copies the whole table",
    }
    log(
        f"freshness at {RATE} for {DURATION}: p50 {q['p50']} s, p95 {q['p95']} s, max {q['max']} s "
        f"({len(seen)}/{len(outcome.watched)} samples); "
        f"unexplained {outcome.unexplained}"
    )
    write("ingest", figures, merge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freshness on the running system: the simulator sends a steady rate (default 400,000 events/min
for 5 minutes) into the region topics; the scheduler, the backlog trigger and the four ingest
DAGs carry them; a sampler watches enrollments appear in BigQuery's current-state table.

Freshness of an enrollment = first seen in `partners` − its occurred_at (the simulator stamps
events with the wall clock when producing); polling every 2 s adds up to 2 s. Also counts the
records the committed offsets account for against the records produced. Merges its figures into
bench/results/ingest.json. Leaves the DAGs paused as it found them.

    BENCH_RATE=400000/min BENCH_DURATION=5m python -m bench.freshness
"""

from __future__ import annotations

import os
import sys
import time

from bench.common import RESULTS, write
from bench.plots import latency_over_time
from bench.load import POLL_S, log, percentiles, steady_load
from enrollment.config import load_config
from enrollment.services import bigquery_client
from stack import cli as stack_cli
from stack import config as stack_config

RATE = os.environ.get("BENCH_RATE", "400000/min")
DURATION = os.environ.get("BENCH_DURATION", "5m")


def main() -> int:
    from google.cloud import bigquery

    stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    config = load_config()
    client = bigquery_client(cfg.project)
    partners = f"`{cfg.project}.{config.warehouse_dataset}.partners`"
    seen: dict[str, float] = {}

    def poll(watched: dict[str, float]) -> int:
        from google.api_core.exceptions import NotFound

        waiting = [p for p in watched if p not in seen]
        if waiting:
            now = time.time()
            try:
                rows = client.query(f"SELECT partner_id FROM {partners} WHERE partner_id IN UNNEST(@ids)",
                                    job_config=bigquery.QueryJobConfig(query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", waiting[:2000])])).result()
            except NotFound:  # a fresh stack: the first batch has not created the table yet
                rows = []
            seen.update({row["partner_id"]: now for row in rows})
        return len(watched) - len(seen)

    outcome = steady_load(cfg, config, RATE, DURATION, [f"ingest_{r.code.lower()}" for r in config.regions], poll)
    q = percentiles([seen[p] - outcome.watched[p] for p in seen])
    plot = latency_over_time(RESULTS / "freshness.png", {"queryable in partners": [(outcome.watched[p], seen[p] - outcome.watched[p]) for p in seen]},
                             f"Enrollment to queryable in BigQuery at {RATE} for {DURATION}", target_s=60)
    log(f"plot: {plot}")
    figures = {
        "freshness_rate": RATE, "freshness_duration": DURATION, "freshness_produced": outcome.produced,
        "freshness_samples": len(outcome.watched), "freshness_samples_seen": len(seen),
        "freshness_p50_s": q["p50"], "freshness_p95_s": q["p95"], "freshness_max_s": q["max"],
        "freshness_unexplained_records": outcome.unexplained,
        "freshness_failed_runs": outcome.failed_runs,
        "freshness_note": f"enrollments seen in the partners table, polled every {POLL_S:g} s; on the BigQuery emulator, whose every write copies the whole table",
    }
    log(f"freshness at {RATE} for {DURATION}: p50 {q['p50']} s, p95 {q['p95']} s, max {q['max']} s ({len(seen)}/{len(outcome.watched)} samples); "
        f"unexplained {outcome.unexplained}")
    write("ingest", figures, merge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

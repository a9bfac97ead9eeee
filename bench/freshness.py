"""Freshness on the running system: the simulator sends a steady rate (default 400,000 events/min
for 5 minutes) into the region topics; the scheduler, the backlog trigger and the four ingest
DAGs carry them; a sampler watches enrollments appear in BigQuery's current-state table.

Freshness of an enrollment = first seen in `partners` − its occurred_at (the simulator stamps
events with the wall clock when producing); polling every 2 s adds up to 2 s. Also counts the
records the ledger accounts for against the records produced. Merges its figures into
bench/results/ingest.json. Leaves the DAGs paused as it found them.

    BENCH_RATE=400000/min BENCH_DURATION=5m python -m bench.freshness
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import write
from enrollment.backlog import total_pending
from enrollment.batches import pending_ranges
from enrollment.config import load_config
from enrollment.services import bigquery_client
from stack import cli as stack_cli
from stack import config as stack_config
from stack.airflow_client import AirflowClient

RATE = os.environ.get("BENCH_RATE", "400000/min")
DURATION = os.environ.get("BENCH_DURATION", "5m")
SAMPLE_EVERY = 5  # one enrollment in five is watched (a new seed each run: new partners)
POLL_S = 2.0


def log(message: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    from google.cloud import bigquery

    stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    config = load_config()
    airflow = AirflowClient(cfg)
    dag_ids = [f"ingest_{r.code.lower()}" for r in config.regions]
    for dag_id in dag_ids:
        airflow.wait_for_dag(dag_id)
        airflow.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    client = bigquery_client(cfg.project)
    partners = f"`{cfg.project}.{config.warehouse_dataset}.partners`"
    try:
        # Whatever waits from before is carried first, so the run measures only its own events.
        deadline = time.monotonic() + 600
        while (left := total_pending(cfg.kafka_bootstrap, config.consumer_group, config.regions)) and time.monotonic() < deadline:
            log(f"draining earlier backlog: {left:,} pending")
            time.sleep(5)
        started = datetime.now(timezone.utc)
        with tempfile.TemporaryDirectory() as tmp:
            expected = Path(tmp) / "expected.jsonl"
            producer = subprocess.Popen([sys.executable, "-m", "enrollment.simulator", "produce", "--rate", RATE, "--duration", DURATION,
                                         "--faults", "2%", "--seed", str(int(time.time())), "--start", "now", "--expected", str(expected)], env=os.environ.copy())
            watched: dict[str, float] = {}  # partner id -> occurred_at (epoch s)
            seen: dict[str, float] = {}
            produced, offset, enrollments = 0, 0, 0
            offsets: dict[tuple[str, int], list[int]] = {}  # (region, partition) -> offsets produced

            def sample() -> None:
                nonlocal produced, offset, enrollments
                if expected.exists():
                    with open(expected, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                    complete = chunk[: chunk.rfind(b"\n") + 1]
                    offset += len(complete)
                    for line in complete.splitlines():
                        record = json.loads(line)
                        produced += 1
                        offsets.setdefault((record["region"], record["partition"]), []).append(record["offset"])
                        if record["event_type"] == "partner.enrolled" and record["outcome"] == "valid" and record["partner_version"] == 1:
                            enrollments += 1
                            if enrollments % SAMPLE_EVERY == 0:
                                watched[record["partner_id"]] = datetime.fromisoformat(record["occurred_at"].replace("Z", "+00:00")).timestamp()
                waiting = [p for p in watched if p not in seen][:2000]
                if waiting:
                    now = time.time()
                    rows = client.query(f"SELECT partner_id FROM {partners} WHERE partner_id IN UNNEST(@ids)",
                                        job_config=bigquery.QueryJobConfig(query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", waiting)])).result()
                    for row in rows:
                        seen[row["partner_id"]] = now

            last_report = 0.0
            while producer.poll() is None:
                sample()
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    log(f"produced {produced:,}; enrollments watched {len(watched):,}, seen {len(seen):,}")
                time.sleep(POLL_S)
            if producer.returncode != 0:
                raise SystemExit(f"the simulator failed with exit code {producer.returncode}")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and (len(seen) < len(watched) or total_pending(cfg.kafka_bootstrap, config.consumer_group, config.regions)):
                sample()
                time.sleep(POLL_S)
            sample()

        # Every produced offset must lie below its partition's committed offset (landed, gate
        # passed), and every batch's ledger rows must balance (the reconcile task checks it).
        committed = {}
        for region in config.regions:
            for p, start, _ in pending_ranges(cfg.kafka_bootstrap, config.consumer_group, region.topic, region.partitions):
                committed[(region.code, p)] = start
        unexplained = sum(sum(1 for o in produced_offsets if o >= committed[key]) for key, produced_offsets in offsets.items())
        failed = [r for dag_id in dag_ids for r in airflow.http.get(f"/dags/{dag_id}/dagRuns", params={"limit": 1000}).json()["dag_runs"]
                  if r["state"] == "failed" and r["start_date"] >= started.isoformat()]
    finally:
        for dag_id in dag_ids:
            airflow.http.patch(f"/dags/{dag_id}", json={"is_paused": True})

    latencies = sorted(seen[p] - watched[p] for p in seen)
    quantile = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None  # noqa: E731
    figures = {
        "freshness_rate": RATE, "freshness_duration": DURATION, "freshness_produced": produced,
        "freshness_samples": len(watched), "freshness_samples_seen": len(seen),
        "freshness_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "freshness_p95_s": quantile(0.95), "freshness_max_s": round(latencies[-1], 2) if latencies else None,
        "freshness_unexplained_records": unexplained,
        "freshness_failed_runs": len(failed),
        "freshness_note": f"enrollments seen in the partners table, polled every {POLL_S:g} s; on the BigQuery emulator, whose every write copies the whole table",
    }
    log(f"freshness at {RATE} for {DURATION}: p50 {figures['freshness_p50_s']} s, p95 {figures['freshness_p95_s']} s, max {figures['freshness_max_s']} s "
        f"({len(seen)}/{len(watched)} samples); unexplained {figures['freshness_unexplained_records']}")
    write("ingest", figures, merge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

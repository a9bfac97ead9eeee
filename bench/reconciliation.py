"""The reconciliation's memory on a region-day of the 100K/min load test's size, and what the
earlier design held.

A region-day at 100,000 events a minute over 4 regions is 36M events. The reconciliation task now
holds only per-batch facts (claim records, ledger rows) and one page of partners read back from a
sink at a time: BigQuery stages and counts the events. This measures the task's Python heap
(tracemalloc peak) over ``Reconciliation.day`` with the services stood in for by the unit tests'
recording fakes (BigQuery answers from generators, so what is measured is the task's own
holding), at a quarter and at the full day, so the growth per batch and the constant part show.
The earlier design read the day's events into one Arrow table (4 string columns): its size is
measured on 1M events and scaled to the day. No service is needed; nothing is left behind."""

from __future__ import annotations

import sys
import tracemalloc
import uuid
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pyarrow as pa

from bench.common import write
from enrollment.clients.bigquery import BigQuery
from enrollment.core.batch import Manifest, PartitionRange
from enrollment.ops import reconciliation as recon
from enrollment.sync.run import SyncRun
from enrollment.warehouse.tables import LEDGER_SCHEMA
from tests.unit.fakes import FakeBigQuery, FakeBucket, FakeStorage

DAY = date(2026, 11, 19)
EVENTS_PER_DAY = 100_000 // 4 * 1440  # one region at 100K/min over 4 regions
BATCH_EVENTS = 4_000  # a land train's micro-batch at that rate (the load test's median)
PARTNERS_PER_DAY = 400_000  # distinct partners whose partner events a region-day holds (generous)
REGION = SimpleNamespace(code="EMEA", topic="enroll.emea", partitions=12)


class Sink:
    def audit(self, partners):
        return {}


def day_peak(batches: int, partners: int) -> float:
    """The heap's peak (MB) over one reconciliation day of ``batches`` and ``partners``."""
    bucket = FakeBucket("landing", now=datetime(2026, 11, 20, tzinfo=UTC))
    manifests = []
    for i in range(batches):
        m = Manifest(
            "EMEA",
            REGION.topic,
            "pipeline",
            "landing",
            (PartitionRange(i % 12, i * BATCH_EVENTS, (i + 1) * BATCH_EVENTS),),
            claimed_at=f"2026-11-19T{i * 24 // batches:02d}:00:00",
        )
        bucket.put(m.claim_record, m.to_json(), datetime(2026, 11, 19, 12, tzinfo=UTC))
        bucket.put(m.valid_object, b"PAR1")
        manifests.append(m)
    ids = [m.batch_id for m in manifests]
    recon.pending_ranges = lambda *a, **k: [(p, 1 << 40, 1 << 40) for p in range(12)]

    def answer(sql: str, params: dict):
        flat = " ".join(sql.split())
        if flat.startswith("SELECT batch_id, stage, offsets_in"):
            return [
                {"batch_id": b, "stage": s, "offsets_in": BATCH_EVENTS, "valid": BATCH_EVENTS}
                | {"quarantined": 0, "duplicates": 0, "skipped": 0, "recovered": 0, "ok": True}
                | {"detail": "written 4000, resent 0; oldest event queryable 9 s after Kafka"}
                for b in ids
                for s in ("land", "warehouse")
            ]
        if "COUNTIF" in flat:
            return [{"batch_id": b, "staged": BATCH_EVENTS, "held": BATCH_EVENTS} for b in ids]
        if flat.startswith("SELECT MIN(kafka_timestamp)"):
            return [
                {"lo": datetime(2026, 11, 19, tzinfo=UTC), "hi": datetime(2026, 11, 20, tzinfo=UTC)}
            ]
        if flat.startswith("SELECT P.*"):
            return (  # a generator: the service's pages, not the task's memory
                {"partner_id": f"EM{i:010d}", "_synced": True, "_refused": False, "x": "y" * 400}
                for i in range(partners)
            )
        return [{"n": 0}] if "AS n " in flat else []

    client = FakeBigQuery(answer=answer, tables={"p.o.ledger": [c for c, _ in LEDGER_SCHEMA]})
    w = BigQuery(client, FakeStorage(bucket), "p", "d", "o")
    config = SimpleNamespace(consumer_group="pipeline", warehouse=None)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    report = recon.Reconciliation(SyncRun(w, bucket), {"solr": Sink()}, "k", config).day(
        REGION, DAY
    )
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert report.batches == batches and not report.differences
    return peak / 1e6


def old_design_gb() -> float:
    """The earlier design's Arrow table of the day's events, measured at 1M and scaled."""
    n = 1_000_000
    table = pa.table(
        {
            "batch_id": [f"emea-{i // BATCH_EVENTS:016x}" for i in range(n)],
            "event_id": [str(uuid.UUID(int=i)) for i in range(n)],
            "partner_id": [f"EM{i % PARTNERS_PER_DAY:010d}" for i in range(n)],
            "event_type": ["partner.updated"] * n,
        }
    )
    return table.nbytes * EVENTS_PER_DAY / n / 1e9


def main() -> int:
    batches = EVENTS_PER_DAY // BATCH_EVENTS
    rows = []
    day_peak(10, 10)  # imports and first-use caches, outside the measured runs
    for share in (4, 1):
        b, p = batches // share, PARTNERS_PER_DAY // share
        print(f"reconciling a day of {b:,} batches, {p:,} partners ...", file=sys.stderr)
        rows.append({"batches": b, "partners": p, "peak_mb": round(day_peak(b, p), 1)})
    old = old_design_gb()
    per_batch_kb = (rows[1]["peak_mb"] - rows[0]["peak_mb"]) * 1e3 / (batches - batches // 4)
    result = {
        "events_per_region_day": EVENTS_PER_DAY,
        "runs": rows,
        "per_batch_kb": round(per_batch_kb, 2),
        "old_design_events_table_gb": round(old, 1),
        "ratio_old_over_new": round(old * 1e3 / rows[1]["peak_mb"]),
    }
    for r in rows:
        print(
            f"{r['batches']:>7,} batches {r['partners']:>9,} partners: peak {r['peak_mb']:.1f} MB"
        )
    print(
        f"growth {per_batch_kb:.2f} kB per batch (the partners are read a page at a time); "
        f"the earlier design held {old:.1f} GB of events for the same day "
        f"(x{result['ratio_old_over_new']:,})"
    )
    write("reconciliation", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replay: the warehouse and sync stages again, from the batches landed in Cloud Storage.

For a region and a range of days, the batches claimed then and landed (the claim records and
the write-once Parquet objects in the landing bucket; Kafka is not read again) are

- **warehouse**: MERGEd again into events, partners and quarantine and gated; a ledger row is
  written where it is missing or wrong (the numbers come from the same objects). A batch the
  ledger holds as warehoused is left alone, unless ``restore`` is asked: then the rows missing
  from its tables (deleted, lost in a restore of a backup) are written again and nothing is
  doubled;
- **sync**: the partners they touched written again to each chosen sink in their current state,
  gated by reading back, and a ledger row (stage ``sync_<sink>``) for each batch that has none
  (existing rows stay as the regular runs wrote them, except a batch's row saying it was set
  aside, which is replaced: a replay also repairs those). The sink's watermark
  does not move: a replay of old batches neither skips nor repeats what the regular sync runs do.

Everything is idempotent: MERGEs keyed by event id and partner, version-guarded sink writes; a
second replay of the same range changes nothing. Use it after a restore, a fix of the warehouse
or a sink that lost data (the reconciliation lists the partners).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from enrollment.config import PipelineConfig
from enrollment.core.batch import Landed
from enrollment.core.layout import PENDING_PREFIX
from enrollment.core.windows import day_bounds
from enrollment.ingest.claim import claims
from enrollment.ingest.land import landed_from
from enrollment.sinks.base import Sink
from enrollment.sync.plan import SyncPlan
from enrollment.sync.run import SyncRun
from enrollment.sync.tables import ensure_tables as ensure_sync_tables
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from enrollment.warehouse.tables import ensure_ledger

log = logging.getLogger(__name__)


def landed_batches(
    run: SyncRun, config: PipelineConfig, region: str, first_day: date, last_day: date
) -> list[Landed]:
    """The region's batches claimed from ``first_day`` to ``last_day`` (inclusive, UTC) and
    landed."""
    r = config.region(region)
    start, _ = day_bounds(first_day)
    _, end = day_bounds(last_day)
    out = []
    for manifest in claims(run.bucket, r.code, r.topic, config.consumer_group, start, end):
        landed = landed_from(run.bucket, manifest)
        if landed is None:
            log.info(
                "replay %s: batch %s was claimed but not landed; its ingest run lands it",
                r.code,
                manifest.batch_id,
            )
        else:
            out.append(landed)
    return out


def replay_warehouse(run: SyncRun, batches: list[Landed], restore: bool = False) -> dict[str, int]:
    """MERGEs the batches again (gated as in the ingest); a ledger row is written only where it is
    missing or says other numbers, so a replay of a healthy range changes nothing, not even the
    ledger's times (which the sync plans follow).

    Without ``restore`` a batch the ledger holds as warehoused is not written again (the ingest
    wrote it). With it, every batch is written again, adding only the rows that are missing from
    events, quarantine and partners (``restored``: the events put back), then gated and its
    ledger balance checked: the repair after rows were lost."""
    from google.cloud import bigquery

    w, events, recorded, restored = run.warehouse, 0, 0, 0
    for landed in batches:
        merged = merge_batch(w, landed, restore)
        if restore:
            restored += merged.get("written", 0)
        held = {
            r["stage"]: dict(r)
            for r in w.run(
                "SELECT stage, offsets_in, valid, quarantined, duplicates, "
                f"""COALESCE(skipped, 0) AS skipped, rows_merged, ok
                FROM {w.table("ledger", ops=True)} WHERE batch_id = @b""",
                [bigquery.ScalarQueryParameter("b", "STRING", landed.batch_id)],
            )
        }
        numbers: dict[str, Any] = {
            "offsets_in": landed.offsets,
            "valid": landed.valid,
            "quarantined": landed.quarantined,
            "duplicates": landed.duplicates,
            "skipped": landed.skipped,
            "ok": True,
        }
        for stage, rows_merged, seconds in (
            ("land", landed.valid, landed.seconds),
            ("warehouse", merged.get("written", merged["events"]), merged["seconds"]),
        ):
            # rows_merged of a warehouse row counts what its cycle wrote (resends excluded): not
            # compared
            if {
                k: v for k, v in (held.get(stage) or {}).items() if k != "rows_merged"
            } != numbers | {"stage": stage}:
                Ledger(w).record(landed, stage, rows_merged, seconds, detail="replayed")
                recorded += 1
        Ledger(w).balance(landed.batch_id)
        events += merged["events"]
    out = {"batches": len(batches), "events": events, "ledger_rows_written": recorded}
    return out | ({"restored": restored} if restore else {})


def replay_sync(
    run: SyncRun, sink: Sink, region: str, batch_ids: list[str], chunk: int = 20
) -> dict[str, int]:
    """Writes the partners of these batches to the sink again (current state), gates, records."""
    from google.cloud import bigquery

    w = run.warehouse
    ensure_ledger(w)  # a pipeline whose first cycle has not run yet has none
    recorded = (
        {
            r["batch_id"]: r["recorded_at"]
            for r in w.run(
                f"SELECT batch_id, recorded_at FROM {w.table('ledger', ops=True)} "
                "WHERE stage = 'warehouse' AND batch_id IN UNNEST(@ids)",
                [bigquery.ArrayQueryParameter("ids", "STRING", list(batch_ids))],
            )
        }
        if batch_ids
        else {}
    )
    # A batch still queued for the warehouse (landed moments ago) is the live pipeline's: its
    # cycle and then the regular sync carry it, so the replay leaves it and says so.
    queued = (
        {
            b.name.rsplit("/", 1)[-1].removesuffix(".json")
            for b in run.bucket.list_blobs(prefix=PENDING_PREFIX)
            if b.name.rsplit("/", 2)[-2] == region
        }
        if len(recorded) < len(batch_ids)
        else set()
    )
    missing = [b for b in batch_ids if b not in recorded and b not in queued]
    if missing:
        raise ValueError(
            f"replay {sink.name} {region}: {len(missing)} batches have no warehouse ledger row "
            "(replay the warehouse stage first), "
            f"e.g. {missing[:3]}"
        )
    waiting = [b for b in batch_ids if b not in recorded]
    if waiting:
        log.info(
            "replay %s %s: %d batches are still queued for the warehouse; "
            "the regular sync carries them",
            sink.name,
            region,
            len(waiting),
        )
    batch_ids = [b for b in batch_ids if b in recorded]
    totals = {
        "batches": 0,
        "partners": 0,
        "written": 0,
        "unchanged": 0,
        "rejected": 0,
        "queued": len(waiting),
    }
    ensure_sync_tables(run.warehouse)
    for start in range(0, len(batch_ids), chunk):
        plan = SyncPlan(
            sink.name,
            region,
            run.bucket.name,
            [
                {"batch_id": b, "warehoused_at": recorded[b].isoformat()}
                for b in batch_ids[start : start + chunk]
            ],
        )
        # A sink without a revision guard takes the current state: a batch's own hand-over is
        # what it was then, older than what the sink may hold now.
        written = run.write(sink, plan, from_warehouse=not getattr(sink, "guards_revisions", False))
        gated = run.gate(sink, written)
        run.commit(written | {"gate": gated}, move_watermark=False)
        result = written["result"]
        totals["batches"] += len(plan.batches)
        totals["partners"] += result["partners"]
        totals["written"] += result["written"]
        totals["unchanged"] += result["unchanged"]
        totals["rejected"] += gated["rejected"]
    return totals


def days(
    first: str | date | None,
    last: str | date | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
) -> tuple[date, date]:
    """The days to replay: the given range, or else the run's data interval (a scheduled or
    backfill run covers its own day)."""

    def as_date(v: str | date | None) -> date:
        return v if isinstance(v, date) else date.fromisoformat(str(v))

    if first or last:
        first_day, last_day = as_date(first or last), as_date(last or first)
    elif interval_start is not None:
        first_day = interval_start.date()
        last_day = (
            ((interval_end or interval_start) - timedelta(microseconds=1)).date()
            if interval_end and interval_end > interval_start
            else first_day
        )
    else:
        raise ValueError(
            "replay: give date_from and date_to (YYYY-MM-DD), "
            "or run it for a data interval (a backfill)"
        )
    if last_day < first_day:
        raise ValueError(f"replay: date_to {last_day} is before date_from {first_day}")
    return first_day, last_day

"""The warehouse cycle: every landed-not-warehoused batch of every region, written once.

One writer for all regions (the ``warehouse`` DAG, one cycle at a time), once per cycle:

1. **events** — appended with one ``INSERT … SELECT``. An event id a producer resent in an
   earlier batch is dropped against the events that *arrived* in the dedup window only (the
   table is partitioned by the Kafka timestamp; the filter is a constant, so BigQuery prunes to
   the window's partitions and the cost of a cycle does not grow with history). In-cycle copies
   keep the first arrival. Exactly-once per offset comes from the ledger: a batch whose
   ``warehouse`` row exists is never written again.
2. **partners** — one ``MERGE`` from the cycle's partner changes (one row per partner: no
   duplicate keys in the source), field versions as before.
3. **quarantine** — appended, guarded by (batch, partition, offset) within the same window.
4. **gate** — per batch, on what the cycle wrote (the window, never all history): every valid
   event id held, none twice, no mandatory column empty, the quarantine rows all there, every
   partner at least at the staged version.
5. **hand-over** — per batch that passed, the state of the partners it touched, read once from
   ``partners`` and written where every sink reads it (``enrollment.warehouse.handover``).
6. **ledger** — the ``land`` and ``warehouse`` rows of the batches that passed, in one ``MERGE``;
   then their pending records are cleared. A batch that failed its gate stays pending and is
   named; the others are committed.

Before any of it, each batch's landed objects are checked: a batch whose objects are gone or
unreadable is **set aside** — a ``set_aside`` ledger row (not ok) naming the object, its pending
record moved to ``set_aside/<group>/<region>/`` (``requeue`` puts it back once repaired) — and the
cycle goes on with the others: one lost batch never stops every region. So is a batch that failed
its gate in ``set_aside_after`` cycles (its pending record counts them): a failure that does not
heal would fail every cycle after it.

Every statement is idempotent (anti-joins, version guards, keyed MERGEs), so a cycle killed at
any point and run again converges to the same rows; the ledger rows come last and mark it done.
The writes are sent as one multi-statement script; with ``transaction`` on (for BigQuery) they
are one transaction, so readers never see events without their partners. The emulator copies
every table a transaction touches (70 s at 4M rows), so the local stack runs without it — and
the path without it is the one whose idempotence the tests prove.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from enrollment.clients import objects
from enrollment.clients.bigquery import BigQuery, landed_schema
from enrollment.clients.objects import read_parquet
from enrollment.config import WarehouseSettings
from enrollment.core.batch import Landed, cycle_id
from enrollment.core.errors import GateError
from enrollment.core.layout import CYCLE_MARKER, pending_object, set_aside_object
from enrollment.core.partners import PARTNER_SCHEMA, fold_partners, partner_changes
from enrollment.core.windows import Window
from enrollment.ingest.pending import clear_pending, count_failure
from enrollment.ingest.shape import landed_schemas
from enrollment.warehouse.gates import Span, ages_of, gate, span_of
from enrollment.warehouse.handover import write_handovers
from enrollment.warehouse.ledger import Ledger
from enrollment.warehouse.statements import (
    conform,
    events_insert_sql,
    held_sql,
    merge_partners_sql,
    quarantine_insert_sql,
)
from enrollment.warehouse.tables import ensure_tables

log = logging.getLogger(__name__)


@dataclass
class CycleResult:
    cycle_id: str
    batches: list[dict[str, Any]] = field(
        default_factory=list
    )  # per batch: ids, counts, ages (XCom-sized)
    already: list[str] = field(default_factory=list)  # batches an earlier cycle had written
    failed: dict[str, str] = field(default_factory=dict)  # batch id -> why its gate failed
    set_aside: dict[str, str] = field(
        default_factory=dict
    )  # batch id -> the object missing or unreadable
    window_days: int = 0
    seconds: float = 0.0
    statements: dict[str, int] = field(default_factory=dict)  # table -> write statements sent
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the cycle
    handover_rows: int = 0  # partner rows handed over to the sinks (enrollment.warehouse.handover)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cycle_id": self.cycle_id,
            "batches": self.batches,
            "already": self.already,
            "failed": self.failed,
            "set_aside": self.set_aside,
            "window_days": self.window_days,
            "seconds": self.seconds,
            "statements": self.statements,
            "phases": self.phases,
            "handover_rows": self.handover_rows,
        }


def _span(b: Landed, tables: tuple[pa.Table, pa.Table] | None) -> Span | None:
    """When the batch's oldest, p95 (by age) and newest messages reached Kafka."""

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    if tables is None:
        # Only a batch landed with its Kafka span comes without tables (run_cycle reads the others).
        assert b.first_kafka_ms is not None and b.last_kafka_ms is not None
        first, last = b.first_kafka_ms, b.last_kafka_ms
        return at(first), at(first if b.p95_kafka_ms is None else b.p95_kafka_ms), at(last)
    return span_of(
        pa.chunked_array(
            [chunk for t in tables for chunk in t.column("kafka_timestamp").chunks],
            pa.timestamp("ms", tz="UTC"),
        )
    )


def unreadable(w: BigQuery, b: Landed) -> str | None:
    """Why the cycle could not load the batch — an object missing or not Parquet — or None. A
    metadata read and the 4-byte Parquet trailer per object: the data stays where it landed."""
    from google.api_core.exceptions import NotFound

    needed = [b.valid_uri, b.quarantine_uri] + ([b.partners_uri] if b.partners_uri else [])
    for uri in needed:
        blob = objects.blob(w.storage, uri)
        try:
            blob.reload()
            if not blob.size or blob.download_as_bytes(start=blob.size - 4) != b"PAR1":
                return f"{uri} is not a readable Parquet object ({blob.size or 0} bytes)"
        except NotFound:
            return f"{uri} is missing"
    return None


def set_aside(w: BigQuery, b: Landed, why: str) -> None:
    """Takes the batch out of the warehouse queue, loudly: a ledger row (not ok) and its pending
    record moved to ``set_aside/``, from where ``requeue`` puts it back."""
    from google.api_core.exceptions import NotFound

    log.error(
        "warehouse: batch %s (%s, %d offsets) SET ASIDE: %s — repair it, then requeue it "
        "(enrollment.ingest.pending.requeue)",
        b.batch_id,
        b.region,
        b.offsets,
        why,
    )
    Ledger(w).record(b, "set_aside", 0, 0.0, ok=False, detail=f"set aside: {why}")
    bucket = w.storage.bucket(b.bucket)
    bucket.blob(set_aside_object(b.group, b.region, b.batch_id)).upload_from_string(
        json.dumps(b.as_dict(), sort_keys=True), content_type="application/json"
    )
    with suppress(NotFound):  # not queued (a replay): the record above is enough to requeue it
        bucket.blob(pending_object(b.group, b.region, b.batch_id)).delete()


def run_cycle(
    w: BigQuery, batches: list[Landed], settings: WarehouseSettings, restore: bool = False
) -> CycleResult:
    """Writes the batches (every region) into the warehouse once, then clears their pending
    records in the landing bucket; see the module's doc.

    ``restore`` (a replay after rows were lost): batches the ledger says are warehoused are
    written again too — every statement only adds what is missing, so their rows come back and
    nothing is doubled — and gated; their ledger rows and hand-overs stay as they were."""
    t0 = time.monotonic()
    result = CycleResult(cycle_id(batches))
    if not batches:
        return result
    clock = [t0]

    def phase(name: str) -> None:
        now = time.monotonic()
        result.phases[name] = round(result.phases.get(name, 0.0) + now - clock[0], 3)
        clock[0] = now

    # Metadata and trailer reads, a few per object: round trips, at once.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cycle-check") as pool:
        reasons = list(pool.map(lambda b: unreadable(w, b), batches))
    for b, why in zip(batches, reasons, strict=True):
        if why is not None:
            set_aside(w, b, why)
            result.set_aside[b.batch_id] = why
    batches = [b for b in batches if b.batch_id not in result.set_aside]
    phase("check")
    if not batches:
        result.seconds = round(time.monotonic() - t0, 3)
        return result

    # What the cycle needs of each batch: its partner changes and its arrival span. A batch landed
    # by this version brings both (partners.parquet, the record's Kafka span): its events are
    # never read here, BigQuery loads them from where they landed. Older batches are read.
    legacy = {
        b.batch_id: (
            read_parquet(w.storage, b.valid_uri),
            read_parquet(w.storage, b.quarantine_uri),
        )
        for b in batches
        if not b.partners_uri or b.first_kafka_ms is None
    }
    spans = {b.batch_id: _span(b, legacy.get(b.batch_id)) for b in batches}
    known = [s for s in spans.values() if s is not None]
    now = datetime.now(UTC)
    # Up to today whatever the batches' spans: a recovery batch (enrollment.ops.recovery) carries
    # old Kafka timestamps, and its ledger rows, written now, must be inside the window the ledger's
    # MERGE and ``warehoused`` look in (else a retried cycle would not see them and write them
    # twice).
    window = Window.around(
        min(s[0] for s in known) if known else now,
        max([s[2] for s in known] + [now]),
        settings.dedup_window_days,
    )
    result.window_days = window.days
    # The arrival days the cycle's rows go to (a row keeps its Kafka timestamp): the only days it
    # changes, so the only ones its gate reads back.
    own = Window.around(min(s[0] for s in known), max(s[2] for s in known), 0) if known else window
    valid_schema, quarantine_arrow_schema = landed_schemas()
    events_schema, quarantine_schema = (
        landed_schema(valid_schema),
        landed_schema(quarantine_arrow_schema),
    )
    ensure_tables(w, events_schema, quarantine_schema)
    phase("read")

    result.already = Ledger(w).warehoused([b.batch_id for b in batches], window)
    todo = batches if restore else [b for b in batches if b.batch_id not in set(result.already)]
    writes_before = len(w.statements)
    staged: list[str] = []
    try:
        if todo:
            suffix = result.cycle_id
            fresh = [b for b in todo if b.batch_id not in legacy]
            old = [b for b in todo if b.batch_id in legacy]
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cycle-read") as pool:
                read = pool.map(lambda b: read_parquet(w.storage, b.partners_uri), fresh)
                changes = dict(zip([b.batch_id for b in fresh], read, strict=True))
            changes |= {b.batch_id: partner_changes(legacy[b.batch_id][0]) for b in old}
            partners = fold_partners([changes[b.batch_id] for b in fresh + old])
            phase("partner_changes")
            stages = _stage(
                w, todo, legacy, partners, suffix, (valid_schema, quarantine_arrow_schema), staged
            )
            events_stage, partners_stage = stages.get("events"), stages.get("partners")
            held_stage = None
            before: list[str] = []  # DDL: outside the transaction (BigQuery refuses it inside)
            script: list[str] = []
            if events_stage:
                held_stage = f"`{w.project}.{w.dataset}._cycle_held_{suffix}`"
                staged.append(held_stage)
                before.append(held_sql(w, events_stage, held_stage, window, own))
                script.append(
                    events_insert_sql(w, events_stage, [c for c, _ in events_schema], held_stage)
                )
            if partners_stage:
                script.append(merge_partners_sql(w, partners_stage))
            if "quarantine" in stages:
                script.append(
                    quarantine_insert_sql(
                        w, stages["quarantine"], [c for c, _ in quarantine_schema], own
                    )
                )
            phase("stage")
            if script:
                body = ";\n".join(script)
                # One job: the window read once into the held ids, then the writes.
                w.run(
                    "".join(f"{d};\n" for d in before)
                    + (
                        f"BEGIN TRANSACTION;\n{body};\nCOMMIT TRANSACTION;"
                        if settings.transaction
                        else body + ";"
                    )
                )
            phase("write")
            counts = gate(w, todo, events_stage, partners_stage, own, held_stage)
            phase("gate")
            passed = [b for b in todo if b.batch_id not in counts["failed"]]
            result.failed = dict(counts["failed"])
            for b in todo:
                if b.batch_id in result.failed:
                    counted = count_failure(w.storage.bucket(b.bucket), b)
                    if counted.failed_cycles >= settings.set_aside_after:
                        why = (
                            f"failed its gate in {counted.failed_cycles} cycles, the last: "
                            + result.failed.pop(b.batch_id)
                        )
                        set_aside(w, counted, why)
                        result.set_aside[b.batch_id] = why
            ages = {b.batch_id: ages_of(spans[b.batch_id]) for b in todo}
            for b in passed:
                c = counts["batches"][b.batch_id]
                detail = f"written {c['written']}, resent {b.valid - c['written']}"
                if ages[b.batch_id]["oldest_event_age_s"] is not None:
                    detail += (
                        f"; oldest event queryable {ages[b.batch_id]['oldest_event_age_s']:.0f} s "
                        "after it reached Kafka"
                    )
                result.batches.append(
                    {
                        **b.as_dict(),
                        "events": b.valid,
                        "written": c["written"],
                        "quarantine": c["quarantine"],
                        "detail": detail,
                        **ages[b.batch_id],
                    }
                )
            # A restored batch keeps its ledger rows (the sync plans follow their times).
            passed = [b for b in passed if b.batch_id not in set(result.already)]
            # Before the ledger rows: a sync plans a batch once its row exists, and finds this.
            handover_stage = f"`{w.project}.{w.dataset}._cycle_handover_{suffix}`"
            staged.append(handover_stage)
            result.handover_rows = write_handovers(
                w, passed, changes, partners_stage, handover_stage
            )
            phase("handover")
            Ledger(w).record_cycle(
                passed,
                {x["batch_id"]: x for x in result.batches},
                window,
                seconds=time.monotonic() - t0,
            )
            phase("ledger")
            # After the ledger rows: a sync train waiting for work watches this object. A hint,
            # not state (the asset event and the sinks' cron wake them too): it never fails a cycle.
            for name in sorted({b.bucket for b in passed}):
                try:
                    w.storage.bucket(name).blob(CYCLE_MARKER).upload_from_string(
                        json.dumps({"cycle": result.cycle_id, "batches": len(passed)}),
                        content_type="application/json",
                    )
                except Exception as exc:
                    log.warning("cycle marker not written (%s)", type(exc).__name__)
    finally:
        for stage in staged:
            w.client.delete_table(stage.strip("`"), not_found_ok=True)
    phase("drop_stage")
    result.statements = _count_writes(w.statements[writes_before:])
    done = set(result.already) | {x["batch_id"] for x in result.batches}
    for bucket_name in {b.bucket for b in batches}:
        clear_pending(
            w.storage.bucket(bucket_name),
            [b for b in batches if b.batch_id in done and b.bucket == bucket_name],
        )
    phase("clear_pending")
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def _stage(
    w: BigQuery,
    todo: list[Landed],
    legacy: dict[str, tuple[pa.Table, pa.Table]],
    partners: pa.Table,
    suffix: str,
    landed: tuple[pa.Schema, pa.Schema],
    staged: list[str],
) -> dict[str, str]:
    """The cycle's staging tables — events and quarantine loaded from where the batches landed,
    the folded partner changes from memory — each its own load job, the three at once (they wait
    on BigQuery, not on this process). Table → staging table; every name is in ``staged`` before
    its job starts, so the caller drops whatever a failed load left."""
    valid_schema, quarantine_schema = landed
    fresh = [b for b in todo if b.batch_id not in legacy]
    old = [b for b in todo if b.batch_id in legacy]
    loads: dict[str, Callable[[], str]] = {}
    if any(b.valid for b in todo):
        loads["events"] = lambda: w.stage_uris(
            f"_cycle_events_{suffix}",
            landed_schema(valid_schema),
            [b.valid_uri for b in fresh if b.valid],
            [conform(legacy[b.batch_id][0], valid_schema) for b in old if b.valid],
        )
    if partners.num_rows:
        loads["partners"] = lambda: w.stage_table(
            f"_cycle_partners_{suffix}", PARTNER_SCHEMA, partners
        )
    if any(b.quarantined + b.duplicates for b in todo):
        loads["quarantine"] = lambda: w.stage_uris(
            f"_cycle_quarantine_{suffix}",
            landed_schema(quarantine_schema),
            [b.quarantine_uri for b in fresh if b.quarantined + b.duplicates],
            [
                conform(legacy[b.batch_id][1], quarantine_schema)
                for b in old
                if b.quarantined + b.duplicates
            ],
        )
    staged += [f"`{w.project}.{w.dataset}._cycle_{name}_{suffix}`" for name in loads]
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="cycle-stage") as pool:
        futures = {name: pool.submit(load) for name, load in loads.items()}
        return {name: future.result() for name, future in futures.items()}


def _count_writes(statements: list[str]) -> dict[str, int]:
    """Write statements per target table, from the statements the cycle sent."""
    counts: dict[str, int] = {}
    for sql in statements:
        for part in sql.split(";"):
            words = part.split()
            if (
                len(words) >= 3
                and words[0].upper() in ("INSERT", "MERGE")
                and words[1].upper() == "INTO"
            ):
                table = words[2].strip("`").rsplit(".", 1)[-1]
            elif len(words) >= 2 and words[0].upper() == "MERGE":
                table = words[1].strip("`").rsplit(".", 1)[-1]
            else:
                continue
            counts[table] = counts.get(table, 0) + 1
    return counts


def raise_failed(result: CycleResult) -> None:
    if result.failed:
        committed = ", ".join(x["batch_id"] for x in result.batches) or "none"
        raise GateError(
            "; ".join(result.failed.values())
            + f" (committed: {committed}; the failed batches stay pending)"
        )


# -- one batch ---------------------------------------------------------------------------------
def merge_batch(bq: BigQuery, landed: Landed, restore: bool = False) -> dict[str, Any]:
    """One batch through a warehouse cycle of its own (replay, tools, tests); the ingest's
    writer is the ``warehouse`` DAG, which takes every pending batch at once."""

    result = run_cycle(bq, [landed], bq.settings or WarehouseSettings(), restore)
    if result.set_aside:
        raise GateError(f"batch {landed.batch_id} set aside: {result.set_aside[landed.batch_id]}")
    raise_failed(result)
    if result.already and not restore:
        return {
            "events": landed.valid,
            "quarantine": landed.quarantined + landed.duplicates,
            "seconds": result.seconds,
            "oldest_event_age_s": None,
            "p95_event_age_s": None,
            "newest_event_age_s": None,
            "already": True,
        }
    done = result.batches[0]
    return {
        "events": done["events"],
        "written": done["written"],
        "quarantine": done["quarantine"],
        "seconds": result.seconds,
        "oldest_event_age_s": done["oldest_event_age_s"],
        "p95_event_age_s": done["p95_event_age_s"],
        "newest_event_age_s": done["newest_event_age_s"],
    }

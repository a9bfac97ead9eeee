"""The warehouse cycle: every landed-not-warehoused batch of every region, written once.

One writer for all regions (the ``warehouse`` DAG, one run at a time), once per cycle:

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
5. **ledger** — the ``land`` and ``warehouse`` rows of the batches that passed, in one ``MERGE``;
   then their pending records are cleared. A batch that failed its gate stays pending and is
   named; the others are committed.

Before any of it, each batch's landed objects are checked: a batch whose objects are gone or
unreadable is **set aside** — a ``set_aside`` ledger row (not ok) naming the object, its pending
record moved to ``set_aside/<group>/<region>/`` (``requeue`` puts it back once repaired) — and the
cycle goes on with the others: one lost batch never stops every region.

Every statement is idempotent (anti-joins, version guards, keyed MERGEs), so a cycle killed at
any point and run again converges to the same rows; the ledger rows come last and mark it done.
The writes are sent as one multi-statement script; with ``transaction`` on (for BigQuery) they
are one transaction, so readers never see events without their partners. The emulator copies
every table a transaction touches (70 s at 4M rows), so the local stack runs without it — and
the path without it is the one whose idempotence the tests prove.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from .batches import GateError, Landed, clear_pending, landed_schemas, pending_object
from .config import WarehouseSettings
from .partners import PARTNER_SCHEMA, fold_partners, partner_changes
from .warehouse import Warehouse, landed_schema

if TYPE_CHECKING:
    import google.cloud.storage as gcs

log = logging.getLogger(__name__)

MANDATORY = ("partner_id", "occurred_at", "region", "event_type")
SET_ASIDE_PREFIX = "set_aside/"


@dataclass(frozen=True)
class Window:
    """The arrival days a cycle may read: [lo, hi), constants aligned on days (partitions)."""

    lo: datetime
    hi: datetime

    @classmethod
    def around(cls, first: datetime, last: datetime, days_before: int) -> Window:
        def day(t: datetime) -> datetime:
            return datetime(t.year, t.month, t.day, tzinfo=UTC)

        return cls(day(first) - timedelta(days=days_before), day(last) + timedelta(days=1))

    def sql(self, column: str) -> str:
        return (
            f"{column} >= TIMESTAMP '{self.lo:%Y-%m-%d}' "
            f"AND {column} < TIMESTAMP '{self.hi:%Y-%m-%d}'"
        )

    @property
    def days(self) -> int:
        return (self.hi - self.lo).days


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
        }


def cycle_id(batches: list[Landed]) -> str:
    return hashlib.sha256("|".join(sorted(b.batch_id for b in batches)).encode()).hexdigest()[:16]


def _span(b: Landed, tables: tuple[pa.Table, pa.Table] | None) -> tuple[datetime, datetime] | None:
    """When the batch's oldest and newest messages reached Kafka."""
    if tables is None:
        # Only a batch landed with its Kafka span comes without tables (run_cycle reads the others).
        assert b.first_kafka_ms is not None and b.last_kafka_ms is not None
        return (
            datetime.fromtimestamp(b.first_kafka_ms / 1000, UTC),
            datetime.fromtimestamp(b.last_kafka_ms / 1000, UTC),
        )
    lows, highs = [], []
    for t in tables:
        if t.num_rows:
            stamps = t.column("kafka_timestamp")
            lows.append(pc.min(stamps).as_py())
            highs.append(pc.max(stamps).as_py())
    return (min(lows), max(highs)) if lows else None


def _ages(span: tuple[datetime, datetime] | None) -> dict[str, float | None]:
    """How old the batch's oldest and newest messages are now, in seconds (from Kafka's
    timestamps)."""
    if span is None:
        return {"oldest_event_age_s": None, "newest_event_age_s": None}
    now = time.time()
    return {
        "oldest_event_age_s": round(now - span[0].timestamp(), 1),
        "newest_event_age_s": round(now - span[1].timestamp(), 1),
    }


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch landed by an older version, in today's landed schema (its raw JSON column dropped,
    columns added since — ``tax_id_token`` — null)."""
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def events_insert_sql(w: Warehouse, stage: str, columns: list[str], window: Window) -> str:
    cols = ", ".join(columns)
    return (
        f"""INSERT INTO {w.table("events")} ({cols})
SELECT {", ".join("S." + c for c in columns)} FROM {stage} S
WHERE NOT EXISTS (SELECT 1 FROM {w.table("events")} T """
        f"""WHERE {window.sql("T.kafka_timestamp")} AND T.event_id = S.event_id)
QUALIFY ROW_NUMBER() OVER (PARTITION BY S.event_id """
        "ORDER BY S.kafka_timestamp, S.batch_id, S.kafka_partition, S.kafka_offset) = 1"
    )


def quarantine_insert_sql(w: Warehouse, stage: str, columns: list[str], window: Window) -> str:
    return (
        f"""INSERT INTO {w.table("quarantine")} ({", ".join(columns)})
SELECT {", ".join("S." + c for c in columns)} FROM {stage} S
WHERE NOT EXISTS (SELECT 1 FROM {w.table("quarantine")} T """
        f"""WHERE {window.sql("T.kafka_timestamp")}
  AND T.batch_id = S.batch_id AND T.kafka_partition = S.kafka_partition """
        "AND T.kafka_offset = S.kafka_offset)"
    )


def events_gate_sql(w: Warehouse, stage: str, window: Window) -> str:
    # The window is read for five narrow columns only; mandatory columns are checked on the
    # staged rows, which the INSERT copies as they are.
    incomplete = " OR ".join(f"S.{c} IS NULL" for c in MANDATORY)
    return (
        f"""WITH W AS (SELECT T.event_id, T.batch_id, T.kafka_partition, T.kafka_offset
  FROM {w.table("events")} T WHERE {window.sql("T.kafka_timestamp")} """
        f"""AND T.event_id IN (SELECT event_id FROM {stage})),
C AS (SELECT event_id, COUNT(*) AS n FROM W GROUP BY event_id)
SELECT S.batch_id, COUNT(*) AS valid, COUNTIF(C.event_id IS NOT NULL) AS held, """
        f"""COUNTIF(C.n > 1) AS repeated,
  COUNTIF({incomplete}) AS incomplete, COUNTIF(X.event_id IS NOT NULL) AS written
FROM {stage} S LEFT JOIN C ON C.event_id = S.event_id
LEFT JOIN W X ON X.event_id = S.event_id AND X.batch_id = S.batch_id """
        """AND X.kafka_partition = S.kafka_partition AND X.kafka_offset = S.kafka_offset
GROUP BY S.batch_id"""
    )


def set_aside_object(group: str, region: str, batch_id: str) -> str:
    return f"{SET_ASIDE_PREFIX}{group}/{region}/{batch_id}.json"


def unreadable(w: Warehouse, b: Landed) -> str | None:
    """Why the cycle could not load the batch — an object missing or not Parquet — or None. A
    metadata read and the 4-byte Parquet trailer per object: the data stays where it landed."""
    from google.api_core.exceptions import NotFound

    needed = [b.valid_uri, b.quarantine_uri] + ([b.partners_uri] if b.partners_uri else [])
    for uri in needed:
        blob = w._blob(uri)
        try:
            blob.reload()
            if not blob.size or blob.download_as_bytes(start=blob.size - 4) != b"PAR1":
                return f"{uri} is not a readable Parquet object ({blob.size or 0} bytes)"
        except NotFound:
            return f"{uri} is missing"
    return None


def set_aside(w: Warehouse, b: Landed, why: str) -> None:
    """Takes the batch out of the warehouse queue, loudly: a ledger row (not ok) and its pending
    record moved to ``set_aside/``, from where ``requeue`` puts it back."""
    from google.api_core.exceptions import NotFound

    log.error(
        "warehouse: batch %s (%s, %d offsets) SET ASIDE: %s — repair it, then requeue it "
        "(enrollment.cycle.requeue)",
        b.batch_id,
        b.region,
        b.offsets,
        why,
    )
    w.record(b, "set_aside", 0, 0.0, ok=False, detail=f"set aside: {why}")
    bucket = w.storage.bucket(b.valid_uri.removeprefix("gs://").split("/", 1)[0])
    bucket.blob(set_aside_object(b.group, b.region, b.batch_id)).upload_from_string(
        json.dumps(b.as_dict(), sort_keys=True), content_type="application/json"
    )
    with suppress(NotFound):  # not queued (a replay): the record above is enough to requeue it
        bucket.blob(pending_object(b.group, b.region, b.batch_id)).delete()


def set_aside_batches(bucket: gcs.Bucket, group: str) -> list[str]:
    """The names of the batches set aside for ``group``: what the lag monitor alerts on."""
    return [blob.name for blob in bucket.list_blobs(prefix=f"{SET_ASIDE_PREFIX}{group}/")]


def requeue(bucket: gcs.Bucket, group: str, region: str, batch_id: str) -> None:
    """Puts a repaired batch back in the warehouse queue (its next cycle takes it)."""
    record = bucket.blob(set_aside_object(group, region, batch_id))
    body = json.loads(record.download_as_text()) | {
        "requeued": True
    }  # its set_aside ledger row turns ok once it is warehoused
    bucket.blob(pending_object(group, region, batch_id)).upload_from_string(
        json.dumps(body, sort_keys=True), content_type="application/json"
    )
    record.delete()


def run_cycle(w: Warehouse, batches: list[Landed], settings: WarehouseSettings) -> CycleResult:
    """Writes the batches (every region) into the warehouse once, then clears their pending
    records in the landing bucket; see the module's doc."""
    t0 = time.monotonic()
    result = CycleResult(cycle_id(batches))
    if not batches:
        return result
    clock = [t0]

    def phase(name: str) -> None:
        now = time.monotonic()
        result.phases[name] = round(result.phases.get(name, 0.0) + now - clock[0], 3)
        clock[0] = now

    for b in batches:
        why = unreadable(w, b)
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
        b.batch_id: (w._read_parquet(b.valid_uri), w._read_parquet(b.quarantine_uri))
        for b in batches
        if not b.partners_uri or b.first_kafka_ms is None
    }
    spans = {b.batch_id: _span(b, legacy.get(b.batch_id)) for b in batches}
    known = [s for s in spans.values() if s is not None]
    now = datetime.now(UTC)
    # Up to today whatever the batches' spans: a recovery batch (enrollment.recovery) carries old
    # Kafka timestamps, and its ledger rows, written now, must be inside the window the ledger's
    # MERGE and ``warehoused`` look in (else a retried cycle would not see them and write them
    # twice).
    window = Window.around(
        min(s[0] for s in known) if known else now,
        max([s[1] for s in known] + [now]),
        settings.dedup_window_days,
    )
    result.window_days = window.days
    valid_schema, quarantine_arrow_schema = landed_schemas()
    events_schema, quarantine_schema = (
        landed_schema(valid_schema),
        landed_schema(quarantine_arrow_schema),
    )
    w.ensure_tables(events_schema, quarantine_schema)
    phase("read")

    result.already = w.warehoused([b.batch_id for b in batches], window)
    todo = [b for b in batches if b.batch_id not in set(result.already)]
    writes_before = len(w.statements)
    staged: list[str] = []
    try:
        if todo:
            suffix = result.cycle_id
            fresh = [b for b in todo if b.batch_id not in legacy]
            old = [b for b in todo if b.batch_id in legacy]
            partners = fold_partners(
                [w._read_parquet(b.partners_uri) for b in fresh]
                + [partner_changes(legacy[b.batch_id][0]) for b in old]
            )
            phase("partner_changes")
            script: list[str] = []
            events_stage = None
            if any(b.valid for b in todo):
                events_stage = w.stage_uris(
                    f"_cycle_events_{suffix}",
                    events_schema,
                    [b.valid_uri for b in fresh if b.valid],
                    [_conform(legacy[b.batch_id][0], valid_schema) for b in old if b.valid],
                )
                staged.append(events_stage)
                script.append(
                    events_insert_sql(w, events_stage, [c for c, _ in events_schema], window)
                )
            partners_stage = None
            if partners.num_rows:
                partners_stage = w.stage_table(
                    f"_cycle_partners_{suffix}", PARTNER_SCHEMA, partners
                )
                staged.append(partners_stage)
                script.append(w._merge_partners_sql(partners_stage))
            if any(b.quarantined + b.duplicates for b in todo):
                stage = w.stage_uris(
                    f"_cycle_quarantine_{suffix}",
                    quarantine_schema,
                    [b.quarantine_uri for b in fresh if b.quarantined + b.duplicates],
                    [
                        _conform(legacy[b.batch_id][1], quarantine_arrow_schema)
                        for b in old
                        if b.quarantined + b.duplicates
                    ],
                )
                staged.append(stage)
                script.append(
                    quarantine_insert_sql(w, stage, [c for c, _ in quarantine_schema], window)
                )
            phase("stage")
            if script:
                body = ";\n".join(script)
                w.run(
                    f"BEGIN TRANSACTION;\n{body};\nCOMMIT TRANSACTION;"
                    if settings.transaction
                    else body + ";"
                )
            phase("write")
            counts = _gate(w, todo, events_stage, partners_stage, window)
            phase("gate")
            passed = [b for b in todo if b.batch_id not in counts["failed"]]
            result.failed = counts["failed"]
            ages = {b.batch_id: _ages(spans[b.batch_id]) for b in todo}
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
            w.record_cycle(
                passed,
                {x["batch_id"]: x for x in result.batches},
                window,
                seconds=time.monotonic() - t0,
            )
            phase("ledger")
    finally:
        for stage in staged:
            w.client.delete_table(stage.strip("`"), not_found_ok=True)
    phase("drop_stage")
    result.statements = _count_writes(w.statements[writes_before:])
    done = set(result.already) | {x["batch_id"] for x in result.batches}
    for bucket_name in {b.valid_uri.removeprefix("gs://").split("/", 1)[0] for b in batches}:
        clear_pending(
            w.storage.bucket(bucket_name),
            [
                b
                for b in batches
                if b.batch_id in done and b.valid_uri.startswith(f"gs://{bucket_name}/")
            ],
        )
    phase("clear_pending")
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def _gate(
    w: Warehouse,
    todo: list[Landed],
    events_stage: str | None,
    partners_stage: str | None,
    window: Window,
) -> dict[str, Any]:
    from google.cloud import bigquery

    held = (
        {r["batch_id"]: dict(r) for r in w.run(events_gate_sql(w, events_stage, window))}
        if events_stage
        else {}
    )
    ids = [b.batch_id for b in todo]
    quarantined = {
        r["batch_id"]: r["n"]
        for r in w.run(
            f"SELECT batch_id, COUNT(*) AS n FROM {w.table('quarantine')} "
            f"WHERE {window.sql('kafka_timestamp')} AND batch_id IN UNNEST(@ids) GROUP BY batch_id",
            [bigquery.ArrayQueryParameter("ids", "STRING", ids)],
        )
    }
    behind = 0
    if partners_stage:
        behind = w.run(
            f"SELECT COUNT(*) AS n FROM {partners_stage} S "
            f"""LEFT JOIN {w.table("partners")} P ON P.partner_id = S.partner_id
            WHERE P.partner_id IS NULL OR P.partner_version < S.partner_version"""
        )[0]["n"]
    out: dict[str, dict[str, int]] = {}
    failed: dict[str, str] = {}
    for b in todo:
        h = held.get(
            b.batch_id, {"valid": 0, "held": 0, "repeated": 0, "incomplete": 0, "written": 0}
        )
        q = quarantined.get(b.batch_id, 0)
        problems = []
        if b.offsets != b.valid + b.quarantined + b.duplicates + b.skipped:
            problems.append(
                f"its offsets {b.offsets} != valid {b.valid} + quarantined {b.quarantined} "
                f"+ duplicates {b.duplicates} + skipped {b.skipped}"
            )
        if h["valid"] != b.valid:
            problems.append(f"staged {h['valid']} valid rows, the batch landed {b.valid}")
        if h["held"] != b.valid:
            problems.append(f"events holds {h['held']} of the batch's {b.valid} valid event ids")
        if h["repeated"]:
            problems.append(f"{h['repeated']} of the batch's event ids appear more than once")
        if h["incomplete"]:
            problems.append(f"{h['incomplete']} rows miss a mandatory column")
        if q != b.quarantined + b.duplicates:
            problems.append(
                f"quarantine holds {q} rows, the batch quarantined {b.quarantined} "
                f"+ {b.duplicates} duplicates"
            )
        if behind:
            problems.append(f"{behind} partners of the cycle are missing or older in partners")
        if problems:
            failed[b.batch_id] = f"warehouse gate, batch {b.batch_id} ({b.region}): " + "; ".join(
                problems
            )
        out[b.batch_id] = {"written": h["written"], "quarantine": q}
    return {"batches": out, "failed": failed}


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

"""The warehouse's gates: what a cycle wrote checked where it wrote it (ids held once, mandatory
columns, quarantine rows, partner versions: the cycle's own arrival days, never all history),
and the freshness gate (events queryable within the SLA of their Kafka timestamps: it fails the
run so that operators see a line falling behind, it never holds a batch back)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from enrollment.clients.bigquery import BigQuery
from enrollment.core.batch import Landed, is_recovery_batch
from enrollment.core.errors import GateError
from enrollment.core.windows import Window
from enrollment.ingest.shape import p95_timestamp_ms

MANDATORY = ("partner_id", "occurred_at", "region", "event_type")


def events_gate_sql(w: BigQuery, stage: str, held: str, own: Window) -> str:
    # Read back where the cycle wrote: its own arrival days, four narrow columns of the staged
    # ids. The rest of the window cannot have changed (one writer): its counts come from the
    # ``held`` table the cycle made before writing (statements.held_sql). Mandatory columns are
    # checked on the staged rows, which the INSERT copies as they are.
    incomplete = " OR ".join(f"S.{c} IS NULL" for c in MANDATORY)
    return (
        f"""WITH W AS (SELECT T.event_id, T.batch_id, T.kafka_partition, T.kafka_offset
  FROM {w.table("events")} T WHERE {own.sql("T.kafka_timestamp")} """
        f"""AND T.event_id IN (SELECT event_id FROM {stage})),
C AS (SELECT event_id, SUM(n) AS n FROM (SELECT event_id, COUNT(*) AS n FROM W GROUP BY event_id
  UNION ALL SELECT event_id, outside AS n FROM {held} WHERE outside > 0) GROUP BY event_id)
SELECT S.batch_id, COUNT(*) AS valid, COUNTIF(C.event_id IS NOT NULL) AS held, """
        f"""COUNTIF(C.n > 1) AS repeated,
  COUNTIF({incomplete}) AS incomplete, COUNTIF(X.event_id IS NOT NULL) AS written
FROM {stage} S LEFT JOIN C ON C.event_id = S.event_id
LEFT JOIN W X ON X.event_id = S.event_id AND X.batch_id = S.batch_id """
        """AND X.kafka_partition = S.kafka_partition AND X.kafka_offset = S.kafka_offset
GROUP BY S.batch_id"""
    )


def gate(
    w: BigQuery,
    todo: list[Landed],
    events_stage: str | None,
    partners_stage: str | None,
    own: Window,
    held_stage: str | None = None,
) -> dict[str, Any]:
    """Each batch checked where the cycle wrote (``own``: its arrival days; ``held_stage``: what
    the rest of the dedup window held, made before the write)."""
    from google.cloud import bigquery

    held = (
        {r["batch_id"]: dict(r) for r in w.run(events_gate_sql(w, events_stage, held_stage, own))}
        if events_stage and held_stage
        else {}
    )
    ids = [b.batch_id for b in todo]
    quarantined = {
        r["batch_id"]: r["n"]
        for r in w.run(
            f"SELECT batch_id, COUNT(*) AS n FROM {w.table('quarantine')} "
            f"WHERE {own.sql('kafka_timestamp')} AND batch_id IN UNNEST(@ids) GROUP BY batch_id",
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


Span = tuple[datetime, datetime, datetime]  # when the oldest, p95 (by age) and newest reached Kafka


def span_of(stamps: pa.Array | pa.ChunkedArray) -> Span | None:
    """A batch's span from its events' Kafka timestamps; None when it has none."""
    p95 = p95_timestamp_ms(stamps)
    if p95 is None:
        return None
    return pc.min(stamps).as_py(), datetime.fromtimestamp(p95 / 1000, UTC), pc.max(stamps).as_py()


def ages_of(span: Span | None) -> dict[str, float | None]:
    """How old a batch's oldest, p95 (by age) and newest events are now, in seconds."""
    if span is None:
        return {"oldest_event_age_s": None, "p95_event_age_s": None, "newest_event_age_s": None}
    now = time.time()
    oldest, p95, newest = (round(now - t.timestamp(), 1) for t in span)
    return {"oldest_event_age_s": oldest, "p95_event_age_s": p95, "newest_event_age_s": newest}


def event_ages(valid: pa.Table) -> dict[str, float | None]:
    """How old the batch's oldest, p95 (by age) and newest events are now (their Kafka
    timestamps), in seconds."""
    return ages_of(span_of(valid.column("kafka_timestamp")))


def judged_age(ages: Mapping[str, Any]) -> tuple[str, float | None]:
    """Which of a batch's event ages the freshness gate judges, and its value: the p95 event's,
    or the oldest's for a batch measured before the p95 was kept."""
    p95 = ages.get("p95_event_age_s")
    return ("oldest", ages.get("oldest_event_age_s")) if p95 is None else ("p95", p95)


def freshness_gate(
    batch_id: str, merged: Mapping[str, Any], sla_s: float
) -> dict[str, float | None]:
    """The batch's p95 event (by age) was queryable within the SLA, counted from its Kafka
    timestamp: the goal is a promise about nearly every event, and one straggler (a record
    produced long before, a partition that waited) must not make a whole batch late. A batch
    measured before the p95 was kept is judged on its oldest event.

    The data is in and the offsets are committed whatever this says: it fails the run so that
    operators see a pipeline falling behind, it never holds a batch back."""
    oldest, newest = merged.get("oldest_event_age_s"), merged.get("newest_event_age_s")
    p95 = merged.get("p95_event_age_s")
    which, judged = judged_age(merged)
    if judged is not None and judged > sla_s:
        others = [
            f"{name} {value:.0f} s"
            for name, value in (("oldest", oldest), ("newest", newest))
            if value is not None and name != which
        ]
        said = f" ({', '.join(others)})" if others else ""
        raise GateError(
            f"freshness gate, batch {batch_id}: its {which} event became queryable "
            f"{judged:.0f} s after it reached Kafka{said}; the SLA is {sla_s:.0f} s"
        )
    return {
        "oldest_event_age_s": oldest,
        "p95_event_age_s": p95,
        "newest_event_age_s": newest,
        "sla_s": sla_s,
    }


def cycle_freshness_gate(
    batches: list[dict[str, Any]], sla_s: float
) -> dict[str, dict[str, float | None]]:
    """The freshness gate over a warehouse cycle's batches: every late batch named at once.

    Recovery batches (``enrollment.ops.recovery``: quarantined messages re-validated, ids starting
    ``recovery-``) carry their messages' original Kafka timestamps on purpose: they are old by
    design, never late, and are left out."""
    late: list[str] = []
    out: dict[str, dict[str, float | None]] = {}
    for b in batches:
        if is_recovery_batch(b["batch_id"]):
            continue
        try:
            out[b["batch_id"]] = freshness_gate(b["batch_id"], b, sla_s)
        except GateError as exc:
            late.append(f"{b.get('region', '?')}: {exc}")
    if late:
        raise GateError(f"{len(late)} of {len(batches)} batches late: " + " | ".join(late))
    return out

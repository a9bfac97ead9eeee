"""Pipeline metrics where people query them: ``<ops>.metrics``, one row per measurement.

Long format (source, region, batch, name, value), so a new metric is a new name, not a new
column. Written by the ingest (per batch: events, throughput, stage seconds, freshness) and the
canary (seconds until visible everywhere); the lag monitor keeps its own table, ``<ops>.lag``.

    SELECT TIMESTAMP_TRUNC(measured_at, MINUTE) AS minute, region, SUM(value) AS events
    FROM enrollment_ops.metrics WHERE name = 'events' GROUP BY 1, 2 ORDER BY 1
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from enrollment.core.batch import is_recovery_batch

if TYPE_CHECKING:
    from enrollment.clients.bigquery import BigQuery


METRICS_SCHEMA = [
    ("measured_at", "TIMESTAMP"),
    ("source", "STRING"),
    ("region", "STRING"),
    ("batch_id", "STRING"),
    ("name", "STRING"),
    ("value", "FLOAT64"),
]


def batch_metrics(landed: Mapping[str, Any], merged: Mapping[str, Any]) -> dict[str, float | None]:
    """One ingest batch's figures: how many events, how fast, how fresh."""
    land_s, warehouse_s = float(landed.get("seconds") or 0), float(merged.get("seconds") or 0)
    busy = land_s + warehouse_s

    # A recovery batch's events are old on purpose (re-processed from quarantine): no freshness.
    fresh = not is_recovery_batch(landed.get("batch_id") or "")
    return {
        "events": landed["offsets"],
        "valid": landed["valid"],
        "quarantined": landed["quarantined"] + landed["duplicates"],
        "land_s": land_s,
        "warehouse_s": warehouse_s,
        "events_per_min": round(landed["offsets"] * 60 / busy, 1) if busy else None,
        "freshness_oldest_s": merged.get("oldest_event_age_s") if fresh else None,
        "freshness_p95_s": merged.get("p95_event_age_s") if fresh else None,
        "freshness_newest_s": merged.get("newest_event_age_s") if fresh else None,
    }


def record(
    warehouse: BigQuery,
    source: str,
    region: str,
    batch_id: str,
    values: dict[str, float | None],
    at: datetime | None = None,
) -> int:
    """Writes the values that are known; again for the same batch replaces them (idempotent)."""
    return _write(warehouse, _rows(at or datetime.now(UTC), source, region, batch_id, values))


def record_batches(
    warehouse: BigQuery,
    source: str,
    batches: list[dict[str, Any]],
    at: datetime | None = None,
) -> int:
    """Every batch of a warehouse cycle in one statement (``batches``: the cycle's per-batch
    dicts, each with the landed counts, ``seconds`` of land and the cycle's ``warehouse_s``)."""
    at = at or datetime.now(UTC)
    rows = []
    for b in batches:
        values = batch_metrics(
            b,
            {
                "seconds": b.get("warehouse_s"),
                "oldest_event_age_s": b.get("oldest_event_age_s"),
                "p95_event_age_s": b.get("p95_event_age_s"),
                "newest_event_age_s": b.get("newest_event_age_s"),
            },
        )
        rows += _rows(at, source, b["region"], b["batch_id"], values)
    return _write(warehouse, rows)


def _rows(
    at: datetime, source: str, region: str, batch_id: str, values: dict[str, float | None]
) -> list[dict[str, Any]]:
    """One row per known value of a batch."""
    return [
        {
            "measured_at": at,
            "source": source,
            "region": region,
            "batch_id": batch_id,
            "name": name,
            "value": float(value),
        }
        for name, value in values.items()
        if value is not None
    ]


def _write(warehouse: BigQuery, rows: list[dict[str, Any]]) -> int:
    """Again for the same batch replaces its values (idempotent)."""
    return warehouse.insert_rows(
        "metrics",
        METRICS_SCHEMA,
        rows,
        partition="measured_at",
        cluster="source, region",
        key=("source", "batch_id", "name"),
    )

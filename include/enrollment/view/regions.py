"""The page's regions: per region the Kafka backlog, the ledger's batches, events per minute and
freshness; and one region in detail."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from enrollment.clients.bigquery import sql_timestamp as ts
from enrollment.config import PipelineConfig
from enrollment.ops.lag import kafka_lag
from enrollment.view.freshness import freshness_over_window
from enrollment.view.masking import scrub
from enrollment.view.quarantine import quarantine_overview
from enrollment.view.reader import (
    BATCHES_SHOWN,
    BROKEN,
    LEDGER_LOOKBACK_DAYS,
    Reader,
    balance,
    classify,
    iso,
    meta,
    minute_series,
    section,
)
from enrollment.warehouse.gates import judged_age

if TYPE_CHECKING:
    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings


class RegionBacklog(TypedDict):
    """One region's Kafka backlog as the page shows it (``kafka_backlog``)."""

    pending: int
    oldest_pending_age_s: float | None
    partitions: int


def kafka_backlog(
    kafka: KafkaSettings, config: PipelineConfig, now: float | None = None
) -> dict[str, Any]:
    """Per region: records the consumer group has not landed yet and the oldest one's age (from
    Kafka: committed offsets, end offsets, the first pending record's timestamp)."""

    def body() -> dict[str, Any]:
        out: dict[str, RegionBacklog] = {
            r.code: {"pending": 0, "oldest_pending_age_s": None, "partitions": 0}
            for r in config.regions
        }
        for row in kafka_lag(kafka, config, now):
            region = out[row.region]
            region["pending"] += row.pending
            region["partitions"] += 1
            if row.oldest_age_s is not None and row.pending:
                region["oldest_pending_age_s"] = max(
                    region["oldest_pending_age_s"] or 0.0, round(row.oldest_age_s, 1)
                )
        return {"regions": out}

    return section("kafka", body, {"regions": {}})


def ledger_batches(
    reader: Reader, regions: list[str], per_region: int = BATCHES_SHOWN, now: datetime | None = None
) -> dict[str, Any]:
    """The last ``per_region`` batches of each region (by when the ledger first recorded them, last
    ``LEDGER_LOOKBACK_DAYS`` days), each with every stage's row and its balance."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        if not reader.exists("ledger"):
            return {"regions": {r: [] for r in regions}}
        from google.cloud import bigquery

        since = ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))
        recovered = "COALESCE(L.recovered, 0)" if reader.ledger_has_recovered() else "0"
        table = reader.w.table("ledger", ops=True)
        rows = reader.run(
            f"""WITH B AS (
                SELECT region, batch_id, MIN(recorded_at) AS first_at FROM {table}
                WHERE recorded_at >= {since} AND region IN UNNEST(@regions) """
            """GROUP BY region, batch_id
                QUALIFY ROW_NUMBER() OVER (PARTITION BY region """
            """ORDER BY first_at DESC, batch_id DESC) <= @n)
            SELECT L.region, L.batch_id, L.stage, L.offsets_in, L.valid, L.quarantined, """
            f"""L.duplicates, COALESCE(L.skipped, 0) AS skipped,
                   {recovered} AS recovered, L.ok, L.detail, L.recorded_at, B.first_at
            FROM {table} L JOIN B ON B.region = L.region AND B.batch_id = L.batch_id
            WHERE L.recorded_at >= {since}
            ORDER BY B.first_at DESC, L.batch_id, L.recorded_at """
            f"LIMIT {len(regions) * per_region * 20}",
            [
                bigquery.ArrayQueryParameter("regions", "STRING", regions),
                bigquery.ScalarQueryParameter("n", "INT64", per_region),
            ],
        )
        out: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in regions}
        for r in rows:
            batch = out[r["region"]].setdefault(
                r["batch_id"],
                {"batch_id": r["batch_id"], "first_recorded_at": iso(r["first_at"]), "stages": {}},
            )
            batch["stages"][r["stage"]] = {
                **balance(r),
                "ok": bool(r["ok"]),
                "detail": scrub(r["detail"]),
                "recorded_at": iso(r["recorded_at"]),
            }
        for batches in out.values():
            for b in batches.values():
                main = (
                    b["stages"].get("recovered")
                    or b["stages"].get("warehouse")
                    or b["stages"].get("land")
                    or next(iter(b["stages"].values()))
                )
                b.update(
                    {
                        k: main[k]
                        for k in (
                            "offsets_in",
                            "valid",
                            "quarantined",
                            "duplicates",
                            "skipped",
                            "recovered",
                        )
                    }
                )
                b["balanced"] = all(s["balanced"] for s in b["stages"].values())
                broken = [f"stage {name}: not ok" for name, s in b["stages"].items() if not s["ok"]]
                broken += [
                    f"stage {name}: does not balance"
                    for name, s in b["stages"].items()
                    if not s["balanced"]
                ]
                b.update(classify(broken))
        return {"regions": {region: list(batches.values()) for region, batches in out.items()}}

    return section(reader.source("ledger"), body, {"regions": {}})


def events_per_minute(
    reader: Reader, regions: list[str], now: datetime | None = None, minutes: int = 60
) -> dict[str, Any]:
    """Valid events landed per minute over the last hour, per region: the ledger's ``land`` rows
    summed by the minute they were recorded (one row per batch: cheap at any volume)."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        series = {r: minute_series([], now, minutes) for r in regions}
        if not reader.exists("ledger"):
            return {"regions": series}
        since = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        rows = reader.run(
            "SELECT region, TIMESTAMP_TRUNC(recorded_at, MINUTE) AS minute, SUM(valid) AS events"
            f"""
            FROM {reader.w.table("ledger", ops=True)}
            WHERE recorded_at >= {ts(since)} AND stage = 'land' GROUP BY region, minute """
            f"ORDER BY minute LIMIT {minutes * 50}"
        )
        for region in regions:
            series[region] = minute_series([r for r in rows if r["region"] == region], now, minutes)
        return {"regions": series}

    return section(reader.source("ledger"), body, {"regions": {}})


def freshness(reader: Reader, regions: list[str], now: datetime | None = None) -> dict[str, Any]:
    """Per region, the newest warehoused batch's freshness as the warehouse cycle measured it
    (``<ops>.metrics``, source ``ingest``): its oldest, p95 (by age) and newest event's age when
    queryable (no p95 for a batch measured before it was kept)."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {r: None for r in regions}
        if not reader.exists("metrics"):
            return {"regions": out}
        rows = reader.run(
            f"""SELECT region, batch_id, measured_at,
                MAX(IF(name = 'freshness_oldest_s', value, NULL)) AS oldest_event_age_s,
                MAX(IF(name = 'freshness_p95_s', value, NULL)) AS p95_event_age_s,
                MAX(IF(name = 'freshness_newest_s', value, NULL)) AS newest_event_age_s
            FROM {reader.w.table("metrics", ops=True)}
            WHERE measured_at >= {ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))} """
            """AND source = 'ingest'
              AND name IN ('freshness_oldest_s', 'freshness_p95_s', 'freshness_newest_s') """
            """AND NOT STARTS_WITH(batch_id, 'recovery-')
            GROUP BY region, batch_id, measured_at
            QUALIFY ROW_NUMBER() OVER (PARTITION BY region """
            """ORDER BY measured_at DESC, batch_id DESC) = 1
            LIMIT 100"""
        )
        for r in rows:
            if r["region"] in out:
                ages = {
                    "oldest_event_age_s": r["oldest_event_age_s"],
                    "p95_event_age_s": r["p95_event_age_s"],
                    "newest_event_age_s": r["newest_event_age_s"],
                }
                judged, judged_age_s = judged_age(ages)
                out[r["region"]] = {
                    "batch_id": r["batch_id"],
                    "measured_at": iso(r["measured_at"]),
                    **ages,
                    # What the freshness gate judged the batch on (its p95 event, or its oldest).
                    "judged": judged,
                    "judged_age_s": judged_age_s,
                }
        return {"regions": out}

    return section(reader.source("metrics"), body, {"regions": {}})


def regions_overview(
    reader: Reader,
    kafka: KafkaSettings,
    config: PipelineConfig,
    now: datetime | None = None,
    per_region: int = BATCHES_SHOWN,
    window_hours: float = 24,
) -> dict[str, Any]:
    """The region section: Kafka backlog, freshness (the last batch's, and p50 / p95 over the
    window against the goals), events per minute and the last batches, with each region's status
    from what they show (the plugin adds failed runs)."""

    now = now or datetime.now(UTC)
    codes = [r.code for r in config.regions]
    rules = config.lag
    backlog = kafka_backlog(kafka, config, now.timestamp())
    fresh = freshness(reader, codes, now)
    rate = events_per_minute(reader, codes, now)
    batches = ledger_batches(reader, codes, per_region, now)
    promise = freshness_over_window(reader, config, codes, window_hours, now)
    regions = []
    for code in codes:
        pending = backlog["regions"].get(code) or {}
        last = fresh["regions"].get(code)
        mine = batches["regions"].get(code) or []
        broken = [
            f"batch {b['batch_id']}: {'; '.join(b['why'])}" for b in mine if b["status"] == BROKEN
        ]
        late = []
        if (pending.get("oldest_pending_age_s") or 0) > rules.max_age_s:
            late.append(
                f"oldest pending record {pending['oldest_pending_age_s']:.0f} s old "
                f"(> {rules.max_age_s:g} s)"
            )
        if last and (last["judged_age_s"] or 0) > config.freshness_sla_s:
            late.append(
                f"last batch's {last['judged']} event queryable after "
                f"{last['judged_age_s']:.0f} s (SLA {config.freshness_sla_s:g} s)"
            )
        regions.append(
            {
                "code": code,
                "pending": pending.get("pending"),
                "oldest_pending_age_s": pending.get("oldest_pending_age_s"),
                "freshness": last,
                "events_per_minute": (rate["regions"].get(code) or []),
                "freshness_over_window": promise["regions"].get(code) or [],
                "batches": mine,
                **classify(broken, late),
            }
        )
    return {
        "regions": regions,
        "freshness_sla_s": config.freshness_sla_s,
        "max_pending_age_s": rules.max_age_s,
        "sources": {
            "pending": backlog,
            "freshness": meta(fresh),
            "events_per_minute": meta(rate),
            "batches": meta(batches),
            "freshness_over_window": meta(promise),
        },
        "freshness_over_window": {k: promise[k] for k in ("since", "until", "bucket_s", "goals")},
    }


def region_detail(
    warehouse: BigQuery,
    kafka: KafkaSettings,
    config: PipelineConfig,
    code: str,
    window_hours: float = 24,
    now: datetime | None = None,
    per_region: int = 30,
) -> dict[str, Any]:
    """One region: its row of the overview with more batches, and its quarantine."""
    now = now or datetime.now(UTC)
    region = config.region(code)
    reader = Reader(warehouse, config)
    one = dataclasses.replace(config, regions=(region,))
    regions = regions_overview(reader, kafka, one, now, per_region, window_hours)
    return {
        "generated_at": now.isoformat(),
        "window_hours": window_hours,
        "project": warehouse.project,
        "region": regions["regions"][0],
        "sources": regions["sources"],
        "freshness_sla_s": regions["freshness_sla_s"],
        "freshness_over_window": regions["freshness_over_window"],
        "quarantine": quarantine_overview(reader, config, window_hours, now, region=region.code),
    }

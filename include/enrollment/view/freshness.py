"""The promise over the page's window, per region: how long events took from Kafka to queryable
in BigQuery and to visible in each sink, as p50 and p95 per time bucket, with the goal each is
held to (``freshness_sla_s`` for BigQuery, ``canary.within_s`` for every sink).

One figure per batch, the one the freshness gate judges: the age of the batch's p95 event (by
age; its oldest for a batch measured before the p95 was kept). The p50 and p95 of a bucket are
taken over its batches, not over single events (no per-event times are kept outside the events
table, and reading it would cost the window's whole volume).

- **BigQuery**: the warehouse cycle's ``<ops>.metrics`` rows (``source = 'ingest'``), at the time
  they were measured.
- **Each sink**: nothing new is recorded. The sync commit's ledger row (stage ``sync_<sink>``)
  says when the batch was synced, the ``warehouse`` row when it became queryable (both stamped
  by BigQuery's clock), so the batch's age in the sink is its age when queryable plus the time
  between the two rows. A batch synced late (after an outage, a resync) shows late: it was.

Recovery batches are left out (their events are old on purpose; the cycle keeps no freshness for
them). The filters are constant timestamps: the window, and the sync plans' lookback before it
for the batches a sink synced in the window, so the cost does not grow with history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.clients.bigquery import sql_timestamp as ts
from enrollment.config import PipelineConfig
from enrollment.view.reader import LEDGER_LOOKBACK_DAYS, Reader, section, window_bounds

BIGQUERY = "bigquery"

LABELS = {BIGQUERY: "queryable in BigQuery"}  # a sink's: "visible in <sink>"

# Bucket lengths (minutes) a chart may use: the shortest that gives at most MAX_BUCKETS points.
BUCKET_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)

MAX_BUCKETS = 60


def bucket_seconds(window_s: float) -> int:
    """The shortest of ``BUCKET_MINUTES`` that splits the window into at most ``MAX_BUCKETS``
    buckets (30 to 60 points for the page's windows of 1 h to 31 days)."""
    for minutes in BUCKET_MINUTES:
        if window_s <= minutes * 60 * MAX_BUCKETS:
            return minutes * 60
    return BUCKET_MINUTES[-1] * 60


def buckets_of(since: datetime, until: datetime, bucket_s: int) -> tuple[datetime, int]:
    """The first bucket's start (``since`` rounded down to a multiple of the bucket on the UTC
    clock, so the points stay put between refreshes) and how many buckets reach ``until``."""
    epoch = int(since.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % bucket_s, UTC)
    return start, max(1, -(-int((until - start).total_seconds()) // bucket_s))


def freshness_sql(
    metrics: str,
    ledger: str,
    since: datetime,
    until: datetime,
    start: datetime,
    bucket_s: int,
) -> str:
    """Per region, path (``bigquery`` or the sink's ledger stage) and bucket: the batches and the
    p50 and p95 of their judged age. ``@regions`` and ``@stages`` are array parameters. (``AT`` is
    a reserved word in BigQuery: the time a batch reached a path is ``reached_at``.)"""
    lookback = ts(since - timedelta(days=LEDGER_LOOKBACK_DAYS))
    return f"""WITH fresh AS (
    SELECT region, batch_id, MIN(measured_at) AS measured_at,
      COALESCE(MAX(IF(name = 'freshness_p95_s', value, NULL)),
               MAX(IF(name = 'freshness_oldest_s', value, NULL))) AS age_s
    FROM {metrics}
    WHERE measured_at >= {lookback} AND measured_at < {ts(until)} AND source = 'ingest'
      AND name IN ('freshness_p95_s', 'freshness_oldest_s') AND region IN UNNEST(@regions)
      AND NOT STARTS_WITH(batch_id, 'recovery-')
    GROUP BY region, batch_id),
  reached AS (
    SELECT region, '{BIGQUERY}' AS path, measured_at AS reached_at, age_s FROM fresh
    WHERE measured_at >= {ts(since)}
    UNION ALL
    SELECT F.region, S.stage AS path, S.recorded_at AS reached_at,
      F.age_s + TIMESTAMP_DIFF(S.recorded_at, W.recorded_at, MILLISECOND) / 1000 AS age_s
    FROM {ledger} S
    JOIN {ledger} W ON W.batch_id = S.batch_id AND W.stage = 'warehouse'
    JOIN fresh F ON F.batch_id = S.batch_id
    WHERE S.recorded_at >= {ts(since)} AND S.recorded_at < {ts(until)}
      AND S.stage IN UNNEST(@stages) AND S.ok
      AND W.recorded_at >= {lookback} AND W.recorded_at < {ts(until)} AND W.ok)
SELECT region, path,
  DIV(TIMESTAMP_DIFF(reached_at, {ts(start)}, SECOND), {int(bucket_s)}) AS bucket,
  COUNT(*) AS batches,
  APPROX_QUANTILES(age_s, 100)[OFFSET(50)] AS p50_s,
  APPROX_QUANTILES(age_s, 100)[OFFSET(95)] AS p95_s
FROM reached WHERE age_s IS NOT NULL
GROUP BY region, path, bucket
ORDER BY region, path, bucket"""


def freshness_series(
    rows: Sequence[dict[str, Any]],
    start: datetime,
    bucket_s: int,
    buckets: int,
    regions: Sequence[str],
    paths: Sequence[str],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Query rows as region → path → a dense list of ``buckets`` points (``at``: the bucket's
    start; ``p50_s``, ``p95_s``: None where no batch reached that path in the bucket — a gap in
    the chart, never a zero age). A sink's rows name its ledger stage (``sync_<sink>``)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {
        region: {
            path: [
                {
                    "at": (start + timedelta(seconds=i * bucket_s)).isoformat(),
                    "p50_s": None,
                    "p95_s": None,
                    "batches": 0,
                }
                for i in range(buckets)
            ]
            for path in paths
        }
        for region in regions
    }
    for r in rows:
        path = str(r["path"]).removeprefix("sync_")
        i = r["bucket"]
        series = out.get(r["region"], {}).get(path)
        if series is None or i is None or not 0 <= int(i) < buckets:
            continue
        series[int(i)].update(
            {
                "p50_s": None if r["p50_s"] is None else round(float(r["p50_s"]), 1),
                "p95_s": None if r["p95_s"] is None else round(float(r["p95_s"]), 1),
                "batches": int(r["batches"] or 0),
            }
        )
    return out


def freshness_over_window(
    reader: Reader,
    config: PipelineConfig,
    regions: list[str],
    window_hours: float = 24,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Per region and path (``bigquery``, then each sink): the goal and the p50 / p95 series over
    the window (``freshness_series``)."""
    now = now or datetime.now(UTC)
    since, until = window_bounds(window_hours, now)
    bucket_s = bucket_seconds((until - since).total_seconds() // 60 * 60)  # whole minutes
    start, buckets = buckets_of(since, until, bucket_s)
    paths = [BIGQUERY, *config.sinks]
    goals = {
        path: config.freshness_sla_s if path == BIGQUERY else config.canary.within_s
        for path in paths
    }

    def body() -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        if reader.exists("metrics") and reader.exists("ledger"):
            from google.cloud import bigquery

            rows = reader.run(
                freshness_sql(
                    reader.w.table("metrics", ops=True),
                    reader.w.table("ledger", ops=True),
                    since,
                    until,
                    start,
                    bucket_s,
                )
                + f"\nLIMIT {len(regions) * len(paths) * buckets}",
                [
                    bigquery.ArrayQueryParameter("regions", "STRING", list(regions)),
                    bigquery.ArrayQueryParameter(
                        "stages", "STRING", [f"sync_{s}" for s in config.sinks]
                    ),
                ],
            )
        series = freshness_series(rows, start, bucket_s, buckets, regions, paths)
        return {
            "regions": {
                region: [
                    {
                        "path": path,
                        "label": LABELS.get(path, f"visible in {path}"),
                        "goal_s": goals[path],
                        "points": series[region][path],
                    }
                    for path in paths
                ]
                for region in regions
            }
        }

    return section(reader.source("metrics"), body, {"regions": {}}) | {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "bucket_s": bucket_s,
        "goals": {BIGQUERY: config.freshness_sla_s, "sinks": config.canary.within_s},
    }

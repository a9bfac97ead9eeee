"""Lag and gridlock detection: how far each region's consumer group and each sink are behind,
recorded every minute in ``<ops>.lag`` (a metrics table people query and plot), and the rules
that raise an alert.

- Kafka, per region and partition (every partition the cluster reports): records pending, the
  age of the oldest pending record.
- The warehouse, per region: landed batches waiting for the one writer, the age of the oldest;
  and batches the writer set aside (objects missing or unreadable).
- Sinks, per sink and region: warehoused batches the sink has not synced yet.
- Alert when a region's pending records grew at every one of the last ``grow_minutes``
  measurements (a consumer that falls further behind: a stall or gridlock), or when the oldest
  pending record (or landed batch waiting for the warehouse) is older than ``max_age_s``, or a
  sink is more than ``max_sink_batches`` behind or its oldest unsynced batch older than
  ``sink_late_s`` (``sink_broken_s``: broken), or a batch is set aside, or a topic's partitions
  on the cluster are not the configured count (all are ingested; the configuration is stale).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from enrollment.clients.kafka import KafkaSettings, partition_drift
from enrollment.config import LagRules, PipelineConfig
from enrollment.core.layout import SET_ASIDE_PREFIX
from enrollment.ingest.backlog import measure
from enrollment.ingest.pending import pending_batches, set_aside_batches
from enrollment.sync.plan import backlogs

if TYPE_CHECKING:
    import google.cloud.storage as gcs

    from enrollment.clients.bigquery import BigQuery
    from enrollment.sync.run import SyncRun


LAG_SCHEMA = [
    ("measured_at", "TIMESTAMP"),
    ("kind", "STRING"),
    ("region", "STRING"),
    ("partition", "INT64"),
    ("sink", "STRING"),
    ("pending", "INT64"),
    ("oldest_age_s", "FLOAT64"),
    ("growth_per_min", "FLOAT64"),
]


@dataclass
class LagRow:
    # "kafka" (records pending), "warehouse" (landed batches waiting), "set_aside" (batches set
    # aside) or "sink" (not synced)
    kind: str
    region: str
    partition: int | None
    sink: str | None
    pending: int
    oldest_age_s: float | None
    growth_per_min: float | None = None


def kafka_lag(
    kafka: KafkaSettings, config: PipelineConfig, now: float | None = None
) -> list[LagRow]:
    now = time.time() if now is None else now
    rows = []
    for region in config.regions:
        backlog = measure(kafka, config.consumer_group, region.topic, region.partitions)
        stamps = dict(backlog.oldest_by_partition)
        for partition, start, end in backlog.ranges:
            age = (
                max(0.0, now - stamps[partition] / 1000)
                if partition in stamps
                else (0.0 if end == start else None)
            )
            rows.append(LagRow("kafka", region.code, partition, None, end - start, age))
    return rows


def warehouse_lag(
    bucket: gcs.Bucket, config: PipelineConfig, now: float | None = None
) -> list[LagRow]:
    """Per region: landed batches not yet warehoused, and how long ago the oldest was claimed."""
    now = time.time() if now is None else now
    waiting = pending_batches(bucket, config.consumer_group)
    aside = set_aside_batches(bucket, config.consumer_group)
    rows = []
    for region in config.regions:
        mine = [b for b in waiting if b.region == region.code]
        claimed = [datetime.fromisoformat(b.claimed_at).timestamp() for b in mine if b.claimed_at]
        rows.append(
            LagRow(
                "warehouse",
                region.code,
                None,
                None,
                len(mine),
                round(max(0.0, now - min(claimed)), 1) if claimed else 0.0,
            )
        )
        held = sum(
            1
            for name in aside
            if name.startswith(f"{SET_ASIDE_PREFIX}{config.consumer_group}/{region.code}/")
        )
        if held:
            rows.append(LagRow("set_aside", region.code, None, None, held, None))
    return rows


def sink_lag(sync_run: SyncRun, config: PipelineConfig) -> list[LagRow]:
    rows = []
    for sink, plans in backlogs(sync_run.warehouse, sync_run.bucket.name, config).items():
        for region, plan in plans.items():
            age = (
                time.time() - min(_epoch(b["warehoused_at"]) for b in plan.batches)
                if plan.batches
                else 0.0
            )
            rows.append(LagRow("sink", region, None, sink, len(plan.batches), round(age, 1)))
    return rows


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def alerts(
    rows: list[LagRow],
    history: dict[str, list[int]],
    rules: LagRules,
    config: PipelineConfig | None = None,
) -> list[str]:
    """What is wrong now. ``history``: region -> its total pending records at the previous
    measurements, oldest first (this measurement not included); ``config``: the configured
    partition counts, compared with the partitions measured (the cluster's)."""
    return [message for _, message in findings(rows, history, rules, config)]


def findings(
    rows: list[LagRow],
    history: dict[str, list[int]],
    rules: LagRules,
    config: PipelineConfig | None = None,
) -> list[tuple[str, str]]:
    """``alerts`` with each one's kind: "late" (data waits longer than the rules allow) or
    "broken" (a batch set aside, partitions that differ from the configuration)."""
    late: list[str] = []
    broken: list[str] = []
    totals: dict[str, int] = {}
    partitions: dict[str, set[int | None]] = {}
    for row in rows:
        if row.kind == "kafka":
            totals[row.region] = totals.get(row.region, 0) + row.pending
            partitions.setdefault(row.region, set()).add(row.partition)
            if row.oldest_age_s is not None and row.oldest_age_s > rules.max_age_s:
                late.append(
                    f"{row.region} partition {row.partition}: oldest pending record "
                    f"{row.oldest_age_s:.0f} s old (> {rules.max_age_s:.0f} s)"
                )
        elif row.kind == "warehouse":
            if row.oldest_age_s is not None and row.oldest_age_s > rules.max_age_s:
                late.append(
                    f"{row.region}: a landed batch has waited {row.oldest_age_s:.0f} s "
                    f"for the warehouse (> {rules.max_age_s:.0f} s; "
                    f"{row.pending} waiting) — see the warehouse DAG"
                )
        elif row.kind == "set_aside":
            broken.append(
                f"{row.region}: {row.pending} landed batch(es) set aside by the warehouse "
                "(objects missing or unreadable; "
                f"see the ledger's set_aside rows, repair, then requeue)"
            )
        else:
            waited = row.oldest_age_s or 0.0
            if waited > rules.sink_broken_s:
                broken.append(
                    f"sink {row.sink} {row.region}: its oldest warehoused batch not synced has "
                    f"waited {waited / 3600:.1f} h (> {rules.sink_broken_s / 3600:.0f} h; "
                    f"{row.pending} waiting) — see the sync_{row.sink} DAG"
                )
            elif waited > rules.sink_late_s:
                late.append(
                    f"sink {row.sink} {row.region}: its oldest warehoused batch not synced has "
                    f"waited {waited:.0f} s (> {rules.sink_late_s:.0f} s; {row.pending} waiting)"
                )
            elif row.pending > rules.max_sink_batches:
                late.append(
                    f"sink {row.sink} {row.region}: {row.pending} warehoused batches not synced "
                    f"(> {rules.max_sink_batches})"
                )
    for region, total in totals.items():
        series = [*(history.get(region) or [])[-rules.grow_minutes :], total]
        if len(series) > rules.grow_minutes and all(b > a for a, b in pairwise(series)):
            late.append(
                f"{region}: pending records grew at each of the last {rules.grow_minutes} "
                f"measurements ({' → '.join(f'{n:,}' for n in series)})"
            )
    for configured in config.regions if config else ():
        drift = partition_drift(
            configured.topic, configured.partitions, len(partitions.get(configured.code, ()))
        )
        if configured.code in partitions and drift:
            broken.append(f"{configured.code}: {drift}")
    return [("late", m) for m in late] + [("broken", m) for m in broken]


def as_dicts(rows: list[LagRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def record(warehouse: BigQuery, rows: list[LagRow], rules: LagRules) -> dict[str, list[int]]:
    """Appends this measurement to ``<ops>.lag`` (growth per minute against the previous one) and
    returns each region's totals at the previous measurements, oldest first."""
    from google.cloud import bigquery

    # Created (and empty) before the history is read; quoted column names: `partition` is
    # reserved.
    warehouse.insert_rows("lag", LAG_SCHEMA, [], partition="measured_at", cluster="kind, region")
    now = datetime.now(UTC)
    since = now - timedelta(minutes=rules.grow_minutes + 2)
    previous = warehouse.run(
        "SELECT kind, region, `partition`, sink, pending, measured_at "
        f"""FROM {warehouse.table("lag", ops=True)}
        WHERE measured_at > @since ORDER BY measured_at""",
        [bigquery.ScalarQueryParameter("since", "TIMESTAMP", since)],
    )
    history: dict[str, dict[datetime, int]] = {}
    last: dict[tuple[str, str, int | None, str | None], tuple[int, datetime]] = {}
    for r in previous:
        if r["kind"] == "kafka":
            by_time = history.setdefault(r["region"], {})
            by_time[r["measured_at"]] = by_time.get(r["measured_at"], 0) + r["pending"]
        last[(r["kind"], r["region"], r["partition"], r["sink"])] = (r["pending"], r["measured_at"])
    for row in rows:
        before = last.get((row.kind, row.region, row.partition, row.sink))
        if before is not None:
            minutes = max((now - before[1]).total_seconds() / 60, 1 / 60)
            row.growth_per_min = round((row.pending - before[0]) / minutes, 1)
    warehouse.insert_rows("lag", LAG_SCHEMA, [asdict(r) | {"measured_at": now} for r in rows])
    return {
        region: [total for _, total in sorted(by_time.items())]
        for region, by_time in history.items()
    }

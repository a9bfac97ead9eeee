"""Quarantine re-processing: messages quarantined under an older contract, validated again with
today's and, where now valid, brought through the normal warehouse and sink path exactly once.

``recover`` plans (``plan``), then lands the recoverable messages of each region as **one recovery
batch**, exactly as ``land`` lands a batch (``ingest.shape.shape_batch`` and
``ingest.land.write_batch``), under an id derived from the set of messages
(``recovery-<region>-<hash>``), and queues it for the pipeline's warehouse writer
(``ingest.pending.mark_pending``): the ``warehouse`` DAG and the sink DAGs carry it. Then each
message is recorded in ``<ops>.recovered`` (keyed on region, partition, offset: a message is
recovered at most once) and each origin batch gets a ``recovered`` ledger row.

Exactly once: the same set of messages is the same batch id, its objects are write-once and its
pending record too, and a batch the warehouse already wrote is not queued again; a crash between
landing and recording converges on the next run. The warehouse dedups event ids in its window
anyway. Nothing here writes ``events``, ``partners`` or ``quarantine``: the warehouse DAG stays
their one writer (the quarantine rows stay, the ``recovered`` table says which came back).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enrollment.clients.bigquery import sql_timestamp as _ts
from enrollment.core.batch import Landed, landing_prefix, recovery_batch_id
from enrollment.core.errors import GateError
from enrollment.core.windows import Window, day_start
from enrollment.ingest.land import write_batch
from enrollment.ingest.pending import mark_pending
from enrollment.ingest.shape import shape_batch
from enrollment.ingest.validation.validate import validate_guarded
from enrollment.ops.recovery.plan import RegionPlan, plan
from enrollment.ops.recovery.request import MAX_WINDOW, RecoveryRequest
from enrollment.warehouse.ledger import Ledger
from enrollment.warehouse.tables import ensure_ledger

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings
    from enrollment.config import PipelineConfig
    from enrollment.core.pii import Keyring

log = logging.getLogger(__name__)


RECOVERED_SCHEMA = [
    ("region", "STRING"),
    ("kafka_partition", "INT64"),
    ("kafka_offset", "INT64"),
    ("origin_batch_id", "STRING"),
    ("recovery_batch_id", "STRING"),
    ("event_id", "STRING"),
    ("reasons", "STRING"),
    ("recovered_at", "TIMESTAMP"),
    ("dag_run", "STRING"),
]


RECOVERED_KEY = ("region", "kafka_partition", "kafka_offset")


# Recorded rows per MERGE: 9 query parameters each, well under BigQuery's limits.
ROWS_PER_STATEMENT = 500


def _warehoused(w: BigQuery, batch_id: str) -> bool:
    """The warehouse already wrote this recovery batch (its ledger row, within a constant
    lookback)."""
    ensure_ledger(w)
    now = datetime.now(UTC)
    return bool(
        Ledger(w).warehoused(
            [batch_id],
            Window(
                day_start(now) - MAX_WINDOW - timedelta(days=1), day_start(now) + timedelta(days=1)
            ),
        )
    )


def land_recovery(
    w: BigQuery, bucket: Bucket, keyring: Keyring, config: PipelineConfig, rp: RegionPlan
) -> dict[str, Any]:
    """The region's recoverable messages as one recovery batch, landed as ``land`` lands one and
    queued for the pipeline's warehouse writer; its ids and counts."""
    import pyarrow.compute as pc

    t0 = time.monotonic()
    messages = rp.messages
    assert messages is not None, "plan() sets the messages of a region with recoverable ones"
    keys = list(
        zip(
            messages.column("kafka_partition").to_pylist(),
            messages.column("kafka_offset").to_pylist(),
            strict=True,
        )
    )
    batch_id = recovery_batch_id(rp.region, config.consumer_group, rp.topic, keys)
    result = validate_guarded(messages.column("value").to_pylist())
    messages, valid, quarantine, _duplicates = shape_batch(
        result, messages, batch_id, rp.region, keyring
    )
    if valid.num_rows != messages.num_rows or quarantine.num_rows:
        raise GateError(
            f"recovery gate, batch {batch_id}: {messages.num_rows} messages planned as valid, "
            f"{valid.num_rows} valid now"
        )
    prefix = landing_prefix(
        batch_id
    )  # landing/<REGION>/<id>: where the sinks read a batch's objects (sync.Plan)
    valid, quarantine = write_batch(bucket, prefix, batch_id, valid, quarantine, keyring)
    stamps = messages.column("kafka_timestamp")
    first, last = pc.min(stamps).as_py(), pc.max(stamps).as_py()

    def uri(name: str) -> str:
        return f"gs://{bucket.name}/{prefix}/{name}.parquet"

    landed = Landed(
        batch_id=batch_id,
        region=rp.region,
        offsets=messages.num_rows,
        valid=valid.num_rows,
        quarantined=0,
        duplicates=0,
        valid_uri=uri("valid"),
        quarantine_uri=uri("quarantine"),
        seconds=round(time.monotonic() - t0, 3),
        group=config.consumer_group,
        # Claimed now: the lag monitor measures how long it waits, not how old its messages are.
        claimed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        partners_uri=uri("partners"),
        first_kafka_ms=int(first.timestamp() * 1000),
        last_kafka_ms=int(last.timestamp() * 1000),
    )
    queued = not _warehoused(w, batch_id)
    if queued:  # a re-run after the warehouse wrote it must not hand it over again
        mark_pending(bucket, landed)
    return {"batch_id": batch_id, "events": valid.num_rows, "queued": queued}


def _ensure_recovered(w: BigQuery) -> str:
    table = w.table("recovered", ops=True)
    schema = ", ".join(f"`{c}` {t}" for c, t in RECOVERED_SCHEMA)
    w.run(f"CREATE TABLE IF NOT EXISTS {table} ({schema})")
    return table


def _record(w: BigQuery, rp: RegionPlan, batch_id: str, dag_run: str) -> int:
    """The recovered messages, each once whatever the runs (a MERGE that never updates)."""
    from google.cloud import bigquery

    table = _ensure_recovered(w)
    now = datetime.now(UTC)
    rows = [
        {
            "region": c.region,
            "kafka_partition": c.kafka_partition,
            "kafka_offset": c.kafka_offset,
            "origin_batch_id": c.origin_batch_id,
            "recovery_batch_id": batch_id,
            "event_id": c.event_id,
            "reasons": c.reasons,
            "recovered_at": now,
            "dag_run": dag_run,
        }
        for c in rp.recoverable
    ]
    columns = ", ".join(f"`{c}`" for c, _ in RECOVERED_SCHEMA)
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        params: list[bigquery.ScalarQueryParameter] = []
        selects: list[str] = []
        for i, row in enumerate(chunk):
            params += [
                bigquery.ScalarQueryParameter(f"c{i}_{j}", kind, row[c])
                for j, (c, kind) in enumerate(RECOVERED_SCHEMA)
            ]
            selects.append(
                "SELECT "
                + ", ".join(f"@c{i}_{j} AS `{c}`" for j, (c, _) in enumerate(RECOVERED_SCHEMA))
            )
        on = " AND ".join(f"T.`{c}` = S.`{c}`" for c in RECOVERED_KEY)
        values = ", ".join(f"S.`{c}`" for c, _ in RECOVERED_SCHEMA)
        w.run(
            f"""MERGE {table} T USING ({" UNION ALL ".join(selects)}) S ON {on}
            WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})""",
            params,
        )
    return len(rows)


def record_ledger(w: BigQuery, since: datetime) -> None:
    """Per origin batch of a message recovered since the window's first day (this run's, and any
    an earlier run recovered whose ledger step never ran), its ``recovered`` ledger row: its
    landed numbers, ``quarantined`` those still quarantined and ``recovered`` every message of it
    recovered so far (counted from the ``recovered`` table, so writing it again gives the same
    row). The origin's ``land`` row was recorded after its messages arrived: the ledger is read
    from the window's first day on."""
    ensure_ledger(w)
    recovered = _ensure_recovered(w)
    ledger, lo = w.table("ledger", ops=True), _ts(day_start(since) - timedelta(days=1))
    cols = [
        "batch_id",
        "region",
        "stage",
        "offsets_in",
        "valid",
        "quarantined",
        "duplicates",
        "rows_merged",
        "seconds",
        "ok",
        "detail",
        "recorded_at",
        "skipped",
        "recovered",
    ]
    w.run(
        f"""MERGE {ledger} T USING (
            SELECT L.batch_id, L.region, 'recovered' AS stage, L.offsets_in, L.valid,
                   L.quarantined - R.n AS quarantined, L.duplicates,
                   R.n AS rows_merged, 0.0 AS seconds, TRUE AS ok,
                   CONCAT('recovered ', CAST(R.n AS STRING), ' of ', CAST(L.quarantined AS STRING),
                          ' quarantined: ', R.batches) AS detail,
                   CURRENT_TIMESTAMP() AS recorded_at, COALESCE(L.skipped, 0) AS skipped,
                   R.n AS recovered
            FROM {ledger} L JOIN (
                SELECT origin_batch_id, COUNT(*) AS n,
                       STRING_AGG(DISTINCT recovery_batch_id, ', ') AS batches
                FROM {recovered}
                WHERE recovered_at >= {lo} GROUP BY origin_batch_id) R
              ON R.origin_batch_id = L.batch_id
            WHERE L.recorded_at >= {lo} AND L.stage = 'land') S
        ON T.recorded_at >= {lo} AND T.batch_id = S.batch_id AND T.stage = S.stage
        WHEN MATCHED AND (T.recovered IS NULL OR T.recovered != S.recovered)
          THEN UPDATE SET {", ".join(f"{c} = S.{c}" for c in cols[3:])}
        WHEN NOT MATCHED THEN INSERT ({", ".join(cols)})
          VALUES ({", ".join("S." + c for c in cols)})"""
    )


def recover(
    w: BigQuery,
    bucket: Bucket,
    keyring: Keyring,
    kafka: KafkaSettings,
    config: PipelineConfig,
    request: RecoveryRequest,
    dag_run: str = "",
    ledger: bool = True,
) -> dict[str, Any]:
    """Plans again (the plan never travels: it holds message bytes) and recovers; the counts, with
    ``recovered`` where the plan said ``recoverable``, and each region's recovery batch with its
    ``origin_batches``. Without ``ledger`` the origins' ledger rows are left to the caller
    (``record_ledger``, in the writer's slot: the DAG reads Kafka and lands outside it); a run
    that finds everything recovered already still writes the rows an earlier run left out."""
    done = plan(w, bucket, keyring, kafka, config, request)
    batches: dict[str, dict[str, Any]] = {}
    for code, rp in sorted(done.regions.items()):
        if not rp.recoverable:
            continue
        batches[code] = land_recovery(w, bucket, keyring, config, rp)
        # Recorded only once landed and queued: a crash before this line lands the same batch
        # again.
        _record(w, rp, batches[code]["batch_id"], dag_run)
        batches[code]["origin_batches"] = sorted({c.origin_batch_id for c in rp.recoverable})
        log.info(
            "recovery %s: %d messages recovered as batch %s (queued for the warehouse: %s)",
            code,
            len(rp.recoverable),
            batches[code]["batch_id"],
            batches[code]["queued"],
        )
    if ledger:
        record_ledger(w, request.since)
    return done.counts(recovered=True) | {"batches": batches}

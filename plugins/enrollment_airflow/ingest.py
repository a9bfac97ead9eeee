"""The factory of the per-region ingest DAGs: one task, ``land`` (claim, land, commit), a train.

Regions parallelise where it is cheap: each region claims and lands its own batches. What they
land waits as *pending* for the one warehouse writer (``enrollment_airflow.warehouse``), which
the pending trigger wakes for each batch. One task per train of batches, not four tasks per
batch: on two cores every task process costs seconds of CPU before it does any work
(``enrollment.ingest.train``).

DAG files call ``ingest_dag(region)`` once per configured region; every piece of logic is in the
``enrollment`` package. XCom carries manifests (ids, URIs, counts), never rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task

from enrollment.config import MAX_BATCH_BYTES_LIMIT, MAX_BATCH_LIMIT, Region, load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args
from enrollment_airflow.triggers import BacklogTrigger, PendingTrigger


# The assets' URI schemes start with "x-": Airflow leaves such a scheme as it is, where any other
# makes it load every provider's URI handlers (the Google provider's import google.cloud.storage)
# to normalise it — in every parse of the DAG files and every task: measured 0.47–0.54 → 0.17–0.20
# CPU-s a parse of the ingest, warehouse and sync files.
def backlog_asset(region: Region, group: str) -> Asset:
    """The region's pending records as an asset, watched by the backlog trigger in the triggerer."""
    trigger = BacklogTrigger(
        region=region.code,
        topic=region.topic,
        partitions=region.partitions,
        group=group,
        min_records=region.min_records,
        max_age_s=region.max_age_s,
    )
    return Asset(
        name=f"commerce_backlog_{region.code.lower()}",
        uri=f"x-kafka-backlog://enrollment/{region.topic}",
        watchers=[AssetWatcher(name=f"backlog_{region.code.lower()}", trigger=trigger)],
    )


def landed_asset(region: Region) -> Asset:
    """The region's landed batches as an asset: updated by each ingest run that landed any (the
    warehouse wakes on each batch's pending record instead: ``pending_asset``)."""
    return Asset(
        name=f"landed_{region.code.lower()}", uri=f"x-enrollment-landing://batches/{region.code}"
    )


def pending_asset(bucket: str, group: str) -> Asset:
    """The warehouse's queue (every region's landed batches not yet warehoused) as an asset,
    watched by the pending trigger: it wakes the warehouse for each batch a train lands."""
    trigger = PendingTrigger(bucket=bucket, group=group)
    return Asset(
        name="pending_batches",
        uri=f"x-enrollment-pending://{bucket}/{group}",
        watchers=[AssetWatcher(name="pending", trigger=trigger)],
    )


def warehouse_asset() -> Asset:
    """The warehouse tables as an asset: updated by each warehouse cycle, watched by the sink
    DAGs."""
    # The URI names no dataset: one asset whatever the deployment's datasets.
    return Asset(name="warehouse", uri="x-enrollment-warehouse://partners")


DOC_MD = """
### Ingest: {region}

Lands the **{region}** region's SAP Commerce events from Kafka topic `{topic}` in Cloud Storage,
micro-batch after micro-batch, losing nothing. **Runs when** the backlog trigger (in the
triggerer) sees {min_records:,} records pending or the oldest pending record {max_age_s:g} s old;
a manual run takes whatever is pending.

One task, **land**, a **train**: it lands a batch, waits up to {max_age_s:g} s for the next to be
worth landing by the trigger's own rule, lands it, and so on, for at most {train_s:g} s or
{train_batches} batches (`train_s`, `train_batches`); the trigger wakes the next run for what
comes after. Each batch of the train goes through every step below on its own, with its own id,
gate, pending record and offset commit; the run's XCom lists them (`batches`) with totals and
why the train stopped (`ended`: drained, idle, max_s, max_batches). A train that fails has
committed the batches before the one that failed; the retry claims that one again.

1. **claim** freezes the offset range per partition — every partition the cluster has, whatever
   the configuration says — from the consumer group `{group}`'s committed offsets to the end seen
   now (at most `max_batch` offsets). The batch id and every object name derive from the group and
   the range; claiming again before the batch is landed returns the same range. A committed offset
   past where the group's batches were landed (retention deleted them unread) is a **gap**; one
   before it (the group's offsets expired) a **rewind** — the claim starts at the landed end; both
   become ledger rows (stage `gap`, not ok; stage `rewind`) and errors in the task log.
2. **land** reads exactly that range — up to `max_batch_bytes`: past it the claim shrinks to what
   was read, the rest is the next batch's — validates every message against the contracts and writes
   `valid.parquet` and `quarantine.parquet` (reasons and raw bytes) under
   `gs://{bucket}/landing/{region}/<batch id>/`, write-once. **Gate:** offsets in the range =
   valid + quarantined + duplicates + skipped (offsets holding no message: transaction markers,
   compacted records), or the task fails. A message stamped more than 1 hour after or 7 days
   before the claim lands with the claim's time instead (a ledger row, stage `clock`).
3. The batch is recorded as **pending** for the warehouse (`gs://{bucket}/pending/{region}/`),
   and only then are the offsets committed.

Each pending record wakes the **`warehouse`** DAG within about a second (the pending trigger on
the asset `pending_batches`): the one writer of the warehouse for all regions, which takes every
pending batch (this one included, or the next cycle if this one fails), writes the ledger and
wakes the sinks. The run's success updates the asset `landed_{region_lower}` (lineage: which
region landed when).

**Reading the ledger** (`{ops}.ledger`, one row per batch and stage):
`offsets_in = valid + quarantined + duplicates + skipped` must hold on every row;
`SELECT * FROM {ops}.ledger WHERE region = '{region}' ORDER BY recorded_at DESC`.
Why a message was refused: `SELECT reasons, COUNT(*) FROM {dataset}.quarantine GROUP BY 1`.

Every run may run twice: names derive from offsets, objects are write-once. A manual run takes
`max_batch` and `max_batch_bytes` as parameters. Owner: enrollment-data team.
"""


def ingest_dag(region: Region) -> DAG:
    config = load_config()
    with DAG(
        dag_id=f"ingest_{region.code.lower()}",
        # Event-driven: measured ~1 s from event to first task, against ~0.8 s more and a 2-3
        # s blind window between runs for a continuous DAG with a deferrable sensor.
        schedule=[backlog_asset(region, config.consumer_group)],
        start_date=datetime(2026, 1, 1),
        # Every run takes what is pending: there is nothing to catch up per interval.
        catchup=False,
        # Batches of a region follow each other: the next claim starts where this one commits.
        max_active_runs=1,
        default_args=default_args("ingest"),
        **DAG_DEFAULTS,
        tags=[str(Tag.INGEST)],
        doc_md=DOC_MD.format(
            region=region.code,
            region_lower=region.code.lower(),
            topic=region.topic,
            group=config.consumer_group,
            bucket=config.landing_bucket,
            dataset=config.warehouse_dataset,
            ops=config.ops_dataset,
            min_records=region.min_records,
            max_age_s=region.max_age_s,
            train_s=region.train_s,
            train_batches=region.train_batches,
        ),
        # Bounded: one batch is held in one task's memory (a typo of a zero too many must not
        # OOM a worker).
        params={
            "max_batch": Param(
                region.max_batch,
                type="integer",
                minimum=1,
                maximum=max(MAX_BATCH_LIMIT, region.max_batch),
                description="Most offsets one batch claims",
            ),
            "max_batch_bytes": Param(
                region.max_batch_bytes,
                type="integer",
                minimum=1024,
                maximum=max(MAX_BATCH_BYTES_LIMIT, region.max_batch_bytes),
                description=(
                    "Most message bytes (keys + values) one batch reads; the claim shrinks to fit"
                ),
            ),
        },
    ) as dag:
        # A train stops claiming after train_s (2 min by default); a batch of max_batch offsets
        # lands in well under a minute, and reading gives up after 120 s without its offsets; so
        # land_timeout_s (15 min by default) is a hang — a broker or Cloud Storage call that never
        # returns — not work. The retry claims the unfinished batch again.
        @task(
            task_id="land",
            outlets=[landed_asset(region)],
            execution_timeout=timedelta(seconds=region.land_timeout_s),
        )
        def land_batch(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            from enrollment.ingest.train import TrainBounds, land_train
            from enrollment_airflow.runtime import Runtime

            params = params or {}  # Airflow passes the run's params
            rt = Runtime.for_task(config)
            keyring = rt.keyring  # before the claim: no key, nothing landed (tax ids tokenised)
            rt.require(["kafka", "gcs"])  # once a train: a wrong password fails before a claim
            train = land_train(
                rt.kafka,
                config.consumer_group,
                region,
                rt.bucket,
                keyring,
                TrainBounds(region.train_s, region.train_batches, linger_s=region.max_age_s),
                max_batch=int(params["max_batch"]),
                max_bytes=int(params.get("max_batch_bytes") or region.max_batch_bytes),
                on_step=lambda _, step, batch_id: (
                    rt.working_on([batch_id]) if step == "claimed" else None
                ),
            )
            if not train.landed:
                raise AirflowSkipException(f"nothing pending on {region.topic}")
            return train.as_dict()

        land_batch()
    return dag

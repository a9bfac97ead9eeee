"""The factory of the ``warehouse`` DAG: the one writer of the warehouse, for every region.

Four regional writers MERGEing into the same tables would serialise behind the emulator's lock
and abort each other on BigQuery (at most 2 mutating DML per table at once; concurrent writes to
the same partitions fail "Could not serialize access … due to concurrent update"). So the
regions only land, and this DAG — one cycle at a time, in a pool of one slot — takes every
landed, not yet warehoused batch and writes each table once per cycle
(``enrollment.warehouse.cycle``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import DAG, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, WAREHOUSE_POOL, Tag, default_args
from enrollment_airflow.ingest import pending_asset, warehouse_asset

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

DAG_ID = "warehouse"

DOC_MD = """
### Warehouse: the one writer, every region

Takes every batch the ingest DAGs landed and the warehouse has not written yet — every region,
oldest claim first, up to {max_rows:,} offsets a cycle — and writes each table **once per cycle**:

1. **cycle** — `{dataset}.events` appended (an event id resent by a producer is dropped against
   the events that arrived in the last {window} day(s) before the cycle's, read once a cycle for
   their ids: a constant partition filter, so a cycle's cost does not grow with history;
   readers who want every resend removed, whenever it came, read the view
   `{dataset}.events_unique`); `{dataset}.partners` merged from the cycle's partner changes (each
   field keeps the newest event's value); `{dataset}.quarantine` appended. **Gate** per batch on
   what the cycle wrote, read back from its own arrival days: every valid event id held once,
   mandatory columns filled, every quarantined offset there, every partner at its version.
   Then, per batch, the state of the partners it touched is read once from `{dataset}.partners`
   and handed over to the sinks (`gs://{bucket}/handover/<region>/<batch>.parquet`), then the
   `land` and `warehouse` ledger rows (`{ops}.ledger`) and the batches' metrics
   (`{ops}.metrics`). A batch that fails its gate stays pending and is named; the others are
   committed. A batch whose landed objects are missing or unreadable is **set aside** first, and
   so is one that failed its gate in {set_aside_after} cycles (ledger row `set_aside`, not ok; its
   record moved to `gs://{bucket}/set_aside/{group}/`; one `broken` alert, and the lag monitor
   names it while it waits) and the cycle goes on with the others: requeue it once repaired with
   `enrollment.ingest.pending.requeue`, or land it again from Kafka with the DAG
   `reland_batch` when its objects are gone. Its success updates the asset `warehouse`, which
   wakes the sink DAGs.
2. **freshness** — fails the run when a batch's p95 event (by age) took more than {sla:g} s
   from Kafka to queryable (`freshness_sla_s`): the data is in, the red run is the alert (a gate
   that measured lateness, not a stage that broke — that one is **cycle**). Recovery batches
   (`recovery-…`, from the `requeue_quarantine` DAG) are left out: they carry their messages'
   original Kafka timestamps on purpose, old by design, never late.

**Runs when** a batch is recorded pending — by any region's ingest train or a requeue; the
pending trigger in the triggerer watches `gs://{bucket}/pending/{group}/` every second (asset
`pending_batches`) — and every `{cron}` (UTC) to take batches a failed cycle left. One
**cycle** at a time, in the pool `{pool}` (1 slot, shared with the replay's warehouse stage and
the erasure): never two writers of a table. Two runs may be active, so that a cycle follows the
last one at once, not after its freshness step. Every statement is idempotent and the
ledger rows come last: a cycle killed anywhere and run again writes everything exactly once.

What waits: `gcloud storage ls gs://{bucket}/pending/{group}/` (one record per landed batch not
yet written).
Owner: enrollment-data team.
"""


def warehouse_dag() -> DAG:
    config = load_config()
    settings = config.warehouse
    with DAG(
        dag_id=DAG_ID,
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(settings.catch_up_every, timezone="UTC"),
            assets=AssetAny(pending_asset(config.landing_bucket, config.consumer_group)),
        ),
        start_date=datetime(2026, 1, 1),
        # A cycle takes everything pending: there is nothing per interval to catch up.
        catchup=False,
        # The one writer is the pool (1 slot: never two cycles, nor a cycle beside a replay or an
        # erasure); a second run may start, so that its cycle follows the last one's at once and
        # the freshness gate of a run is not in the next cycle's way.
        max_active_runs=2,
        default_args=default_args("ingest"),
        **DAG_DEFAULTS,
        tags=[str(Tag.INGEST)],
        doc_md=DOC_MD.format(
            max_rows=settings.max_cycle_rows,
            dataset=config.warehouse_dataset,
            ops=config.ops_dataset,
            window=settings.dedup_window_days,
            sla=config.freshness_sla_s,
            cron=settings.catch_up_every,
            bucket=config.landing_bucket,
            group=config.consumer_group,
            pool=WAREHOUSE_POOL,
            set_aside_after=settings.set_aside_after,
        ),
    ) as dag:
        # Each BigQuery job is cancelled after job_timeout_s; a cycle sends about ten of them in
        # sequence and reads small objects, so cycle_timeout_s (30 min by default, at least one
        # job's timeout) means something hangs, and the one writer's slot must come free.
        @task(
            task_id="cycle",
            outlets=[warehouse_asset()],
            pool=WAREHOUSE_POOL,
            execution_timeout=timedelta(seconds=settings.cycle_timeout_s),
        )
        def cycle(**context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            from enrollment.ingest.pending import pending_batches
            from enrollment.ops import metrics
            from enrollment.warehouse.cycle import raise_failed, run_cycle
            from enrollment_airflow.alerts import set_aside
            from enrollment_airflow.runtime import Runtime

            rt = Runtime.for_task(config)
            rt.require(["bigquery", "gcs"])
            batches = pending_batches(rt.bucket, config.consumer_group, settings.max_cycle_rows)
            if not batches:
                raise AirflowSkipException("no landed batch is waiting for the warehouse")
            rt.working_on(b.batch_id for b in batches)
            result = run_cycle(rt.warehouse, batches, settings)
            # Set aside once (its record leaves the queue): one alert, and the run goes on.
            for batch_id, why in result.set_aside.items():
                set_aside(
                    cast("Context", context),
                    f"batch {batch_id} set aside (the cycle went on with the others): {why}",
                )
            metrics.record_batches(
                rt.warehouse,
                "ingest",
                [b | {"warehouse_s": result.seconds} for b in result.batches],
            )
            raise_failed(result)
            return result.as_dict()

        @task(task_id="freshness", retries=0)  # a retry could only find the batches older
        def freshness(cycled: dict[str, Any]) -> dict[str, Any]:
            from enrollment.core.errors import GateError
            from enrollment.warehouse.gates import cycle_freshness_gate
            from enrollment_airflow.alerts import Late
            from enrollment_airflow.runtime import Runtime

            Runtime.for_task(config).working_on(b["batch_id"] for b in cycled["batches"])
            try:
                return cycle_freshness_gate(cycled["batches"], config.freshness_sla_s)
            except GateError as late:  # the data is in: the alert says late, not broken
                raise Late(str(late)) from None

        freshness(cycle())  # type: ignore[arg-type]  # an XComArg stands for the dict at run time
    return dag

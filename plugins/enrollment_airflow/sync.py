"""The factory of the sink DAGs: one per configured sink, one task: write → gate → commit over the
regions.

Each sink has its own DAG (not a task group inside the ingest DAGs): a sink that is down or
throttled retries with backoff without holding back the ingest or the other sinks. It runs when
any region's warehouse asset is updated, and on a cron as well, so it catches up after an outage
even when no new batch arrives. XCom carries plans and counts (batch ids, URIs), never rows.

One task runs the three steps for every region (not a task per step or per region): on a small
machine each task process costs seconds of CPU before it does any work — measured in the load
test, the sinks' task processes were the largest consumer of the two cores. Every step is
idempotent, so a retry redoes the three. A region that fails does not hold back the others:
they are written, gated and committed, then the task fails naming it, and the next run (or the
retry) takes it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from airflow.sdk import (
    DAG,
    AssetAny,
    AssetOrTimeSchedule,
    Context,
    CronTriggerTimetable,
    Param,
    task,
)

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args
from enrollment_airflow.ingest import warehouse_asset

MAX_BATCHES = (
    500  # a run reads each batch's partner changes: beyond this, let the next run take the rest
)
MAX_RESYNC = 1000

DOC_MD = """
### Sync: {sink}

Brings the **{sink}** sink up to date with the warehouse, every region at once, in one task,
**sync**, of three steps (a region that fails does not hold back the others; the task then fails
naming it, and the next run takes it again). The task goes round again while batches wait, for
at most {train_s:g} s (`sync.train_s`): one task for many rounds, each round as below. When no
batch waits it waits up to {linger_s:g} s (`sync.linger_s`) for the warehouse's next cycle.

1. **write** — plans each region's warehoused batches that have no `sync_{sink}` ledger row yet
   (the last {lookback} days, oldest first, at most `max_batches`), reads the state of the
   partners they touched as their warehouse cycles handed it over
   (`gs://{bucket}/handover/<region>/<batch>.parquet`; one row per partner, newest version wins;
   a batch without one, and a resync, read `{dataset}.partners` instead), and writes them
   (module `{module}`). Every write is idempotent: version-guarded or an upsert.
2. **gate** — reads back from the service what was written (documents, real-time get or the
   service's per-row results) and checks partners = written + unchanged + rejected.
3. **commit** — rows the service refused go to `{dataset}.sink_quarantine` with its message; one
   ledger row per batch (stage `sync_{sink}`, every region's in one statement): what marks a batch
   synced; the watermark
   (`{ops}.sink_watermarks`) records the newest one for people to read.

**Refusals never stop a region**: a value the service refuses is one partner in the sink
quarantine. A batch whose landed objects are gone or unreadable is **set aside**: a `sync_{sink}`
ledger row with `ok = false` and the reason
(`SELECT batch_id, detail FROM {ops}.ledger WHERE stage = 'sync_{sink}' AND NOT ok`), an error in
the log and an alert; the other batches go on. Once repaired, trigger this DAG with
`resync_batches` = those batch ids: they are synced again from the warehouse's current state (from
its events when the landed objects are gone) and their rows replaced.

**Runs when** the `warehouse` asset is updated (after each warehouse cycle), and every
`{cron}` (UTC) to catch up after an outage. **Catch-up is automatic**: the next run takes every
batch without a `sync_{sink}` ledger row. To sync batches again, delete their `sync_{sink}`
ledger rows, or use the `replay` DAG (every write is idempotent).

Where it stands: `SELECT * FROM {ops}.sink_watermarks WHERE sink = '{sink}'`;
what it refused:
`SELECT * FROM {dataset}.sink_quarantine WHERE sink = '{sink}' ORDER BY recorded_at DESC`.
Owner: enrollment-data team.
"""


def sync_dag(sink_name: str) -> DAG:
    config = load_config()
    options = config.sinks[sink_name]
    with DAG(
        dag_id=f"sync_{sink_name}",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(config.sync_catch_up_every, timezone="UTC"),
            assets=AssetAny(warehouse_asset()),
        ),
        start_date=datetime(2026, 1, 1),
        # A run syncs everything since the watermark: there is nothing per interval to catch up.
        catchup=False,
        max_active_runs=1,  # one writer per sink: the watermark moves in order
        default_args=default_args("sinks"),
        **DAG_DEFAULTS,
        tags=[str(Tag.SYNC)],
        doc_md=DOC_MD.format(
            sink=sink_name,
            module=options["module"],
            dataset=config.warehouse_dataset,
            bucket=config.landing_bucket,
            ops=config.ops_dataset,
            cron=config.sync_catch_up_every,
            lookback=config.sync_lookback_days,
            train_s=config.sync_train_s,
            linger_s=config.sync_linger_s,
        ),
        params={
            "max_batches": Param(
                config.sync_max_batches,
                type="integer",
                minimum=1,
                maximum=max(MAX_BATCHES, config.sync_max_batches),
                description="Most batches one run takes per region",
            ),
            "resync_batches": Param(
                [],
                type="array",
                items={"type": "string"},
                maxItems=MAX_RESYNC,
                description=(
                    "Batch ids to sync again from the warehouse first "
                    "(batches set aside, once repaired)"
                ),
            ),
        },
    ) as dag:
        # A round's work is bounded (max_batches per region, each write ridden through throttling
        # and short outages: Marketing Cloud waits up to 10 min per request, Solr 2 min), and a
        # train starts no round after train_s; 45 min is far beyond a healthy catch-up run. A task
        # hung on a dead connection would otherwise hold the sink's only run slot
        # (max_active_runs=1) forever; killed, it is retried and catches up.
        @task(task_id="sync", execution_timeout=timedelta(minutes=45))
        def sync(**context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            from enrollment_airflow.alerts import set_aside
            from enrollment_airflow.runtime import Runtime

            params = context["params"]
            rt = Runtime.for_task(config)
            rt.require(["bigquery", "gcs", *options.get("needs", [])])
            run = rt.sync_run
            # A batch set aside does not fail the run: it alerts now, and the run goes on.
            run.alert = lambda message: set_aside(cast("Context", context), message)
            with rt.sinks(sink_name) as sinks:
                sink = sinks[sink_name]
                resync = list(params.get("resync_batches") or [])
                rt.working_on(resync)
                resynced = run.resync(sink, resync) if resync else {}
                committed = run.train(
                    sink,
                    [r.code for r in config.regions],
                    int(params["max_batches"]),
                    config.sync_lookback_days,
                    config.sync_train_s,
                    working_on=rt.working_on,
                    linger_s=config.sync_linger_s,
                    poll_s=config.sync_poll_s,
                )
            if not committed["rounds"]:
                if resynced:
                    return {"resynced": resynced}
                raise AirflowSkipException(
                    f"{sink_name}: every warehoused batch is synced, in every region"
                )
            return committed | ({"resynced": resynced} if resynced else {})

        sync()
    return dag

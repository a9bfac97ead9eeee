"""The factory of the sink DAGs: one per configured sink, write → gate → commit per region.

Each sink has its own DAG (not a task group inside the ingest DAGs): a sink that is down or
throttled retries with backoff without holding back the ingest or the other sinks. It runs when
any region's warehouse asset is updated, and on a cron as well, so it catches up after an outage
even when no new batch arrives. XCom carries plans and counts (batch ids, URIs), never rows.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, Param, task, task_group

from enrollment.config import load_config
from enrollment_airflow.defaults import DEFAULT_ARGS, Tag
from enrollment_airflow.ingest import warehouse_asset

DOC_MD = """
### Sync: {sink}

Brings the **{sink}** sink up to date with the warehouse, each region on its own:

1. **write** — plans the region's batches the warehouse recorded after this sink's watermark
   (at most `max_batches`), reads the partners they touched and their current state from
   `{dataset}.partners` (one row per partner: newest version wins), and writes them (module
   `{module}`). Every write is idempotent: version-guarded or an upsert.
2. **gate** — reads back from the service what was written (documents, real-time get or the
   service's per-row results) and checks partners = written + unchanged + rejected.
3. **commit** — rows the service refused go to `{dataset}.sink_quarantine` with its message; one
   ledger row per batch (stage `sync_{sink}`); the watermark moves past the batches.

**Runs when** any region's warehouse asset is updated (after each ingest), and every
`{cron}` (UTC) to catch up after an outage. **Catch-up is automatic**: the next run takes every
batch since the watermark. To sync again from scratch, delete the sink's rows from
`{ops}.sink_watermarks` (every write is idempotent).

Where it stands: `SELECT * FROM {ops}.sink_watermarks WHERE sink = '{sink}'`;
what it refused: `SELECT * FROM {dataset}.sink_quarantine WHERE sink = '{sink}' ORDER BY recorded_at DESC`.
Owner: enrollment-data team.
"""


def sync_dag(sink_name: str) -> DAG:
    config = load_config()
    options = config.sinks[sink_name]
    with DAG(
        dag_id=f"sync_{sink_name}",
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(config.sync_catch_up_every, timezone="UTC"),
                                     assets=AssetAny(*(warehouse_asset(r) for r in config.regions))),
        start_date=datetime(2026, 1, 1),
        catchup=False,  # a run syncs everything since the watermark: there is nothing per interval to catch up
        max_active_runs=1,  # one writer per sink: the watermark moves in order
        default_args=DEFAULT_ARGS,
        tags=[str(Tag.SYNC)],
        doc_md=DOC_MD.format(sink=sink_name, module=options["module"], dataset=config.warehouse_dataset, ops=config.ops_dataset,
                             cron=config.sync_catch_up_every),
        params={"max_batches": Param(config.sync_max_batches, type="integer", minimum=1, description="Most batches one run takes per region")},
    ) as dag:
        for region in config.regions:

            @task_group(group_id=region.code.lower())
            def region_sync(region_code: str = region.code):
                @task(task_id="write")
                def write(params=None) -> dict:
                    from airflow.sdk.exceptions import AirflowSkipException

                    from enrollment_airflow.connections import sink_from_connections, sync_run_from_connections

                    run, sink = sync_run_from_connections(config), sink_from_connections(config, sink_name)
                    try:
                        plan = run.plan(sink_name, region_code, int(params["max_batches"]))
                        if not plan.batches:
                            raise AirflowSkipException(f"{sink_name} {region_code}: nothing after the watermark")
                        return run.write(sink, plan)
                    finally:
                        sink.close()

                @task(task_id="gate")
                def gate(written: dict) -> dict:
                    from enrollment_airflow.connections import sink_from_connections, sync_run_from_connections

                    sink = sink_from_connections(config, sink_name)
                    try:
                        return sync_run_from_connections(config).gate(sink, written)
                    finally:
                        sink.close()

                @task(task_id="commit")
                def commit(written: dict, gated: dict) -> dict:
                    from enrollment_airflow.connections import sync_run_from_connections

                    return sync_run_from_connections(config).commit(written) | gated

                written = write()
                commit(written, gate(written))

            region_sync()
    return dag

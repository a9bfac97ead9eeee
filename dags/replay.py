"""Replay and backfill: the warehouse and sync stages again, from the batches landed in GCS."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, WAREHOUSE_POOL, Tag, default_args

if TYPE_CHECKING:
    from airflow.sdk.types import DagRunProtocol as DagRun

CONFIG = load_config()
REGIONS = [r.code for r in CONFIG.regions]
# Batches a warehouse chunk writes while it holds the writer's slot: a batch's cycle takes ~2-4 s
# here (less on BigQuery), so a chunk stays far inside its 5 minutes.
CHUNK_BATCHES = 10
SINKS = list(CONFIG.sinks)
STAGES = ["warehouse", "sync"]

DOC_MD = f"""
### Replay

Runs the **warehouse** and **sync** stages again for the batches of a region and a range of days
that were landed in `gs://{CONFIG.landing_bucket}/landing/` (Kafka is not read again):

- **warehouse** MERGEs each batch again into events, partners and quarantine, with the ingest's
  gates; a ledger row is written only where it is missing or wrong. One mapped task per chunk of
  at most {CHUNK_BATCHES} batches of a region, each holding the one writer's slot for its writes
  only (the batches are found and read before, outside it) and for at most 5 minutes: the live
  warehouse cycle, whose priority is higher, runs between chunks, so a replay of a day never
  holds the line back. A batch already warehoused
  is left alone unless **`restore`** is on: then the rows missing from its tables (deleted by
  hand, lost in a table restore) are written again, nothing is doubled, and its ledger balance
  is checked;
- **sync** (one mapped task per sink) writes the partners those batches touched to the sink again,
  in their current state, reads them back, and records a ledger row per batch. Sink watermarks
  do not move: the regular sync runs neither skip nor repeat anything because of a replay.

Idempotent: a second replay of the same range changes nothing. Typical use: the reconciliation
listed partners missing in a sink → replay that region and day with `stages = ["sync"]` and that
sink.

**From the UI**: *Trigger* with the form: `region`, `date_from` / `date_to` (UTC, inclusive),
`stages`, `sinks`. **From the command line** (one run per day of the range; without dates in the
conf each run replays the day of its logical date, today's included):
`airflow backfill create --dag-id replay --from-date 2026-11-20 --to-date 2026-11-22
--dag-run-conf '{{"region": "EMEA", "stages": ["sync"], "sinks": ["solr"]}}'`.

Its daily timetable (00:00 UTC) only gives backfills one run per day: a scheduled run skips at
once. It is not paused (Airflow 3.3 does not run backfills of a paused DAG: they stay queued).
Owner: enrollment-data team.
"""


@dag(
    dag_id="replay",
    schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance"),
    **DAG_DEFAULTS,
    params={
        "region": Param(
            "ALL", type="string", enum=["ALL", *REGIONS], description="The region to replay, or ALL"
        ),
        "date_from": Param(
            None,
            type=["null", "string"],
            format="date",
            description="First day (UTC); empty: the run's data interval",
        ),
        "date_to": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Last day (UTC, inclusive); empty: as date_from",
        ),
        "stages": Param(
            STAGES,
            type="array",
            items={"type": "string", "enum": STAGES},
            description="Stages to run again",
        ),
        "restore": Param(
            False,
            type="boolean",
            description="Warehouse stage: write again the rows missing from batches already "
            "warehoused (after rows were lost); off: only batches the warehouse has not written",
        ),
        "sinks": Param(
            SINKS,
            type="array",
            items={"type": "string", "enum": SINKS},
            description="Sinks to sync again (the sync stage)",
        ),
    },
)
def replay() -> None:
    @task
    def select(
        params: dict[str, Any] | None = None,
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        dag_run: DagRun | None = None,
    ) -> list[dict[str, Any]]:
        """The batches landed in the range, per region oldest first, in chunks of at most
        CHUNK_BATCHES (each batch's record: ids, counts and object names, never rows)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from enrollment.ops.replay import days, landed_batches
        from enrollment_airflow.runtime import Runtime

        run_type = getattr(dag_run, "run_type", None)
        if str(getattr(run_type, "value", run_type)) == "scheduled":
            raise AirflowSkipException(
                "the schedule only gives backfills one run per day: trigger or backfill a replay"
            )
        params = params or {}
        rt = Runtime.for_task()  # the configuration in force when the task runs
        first, last = days(
            params.get("date_from"), params.get("date_to"), data_interval_start, data_interval_end
        )
        regions = REGIONS if params["region"] == "ALL" else [params["region"]]
        landed = {r: landed_batches(rt.sync_run, rt.config, r, first, last) for r in regions}
        return [
            {
                "label": f"{r} {i // CHUNK_BATCHES + 1}",
                "region": r,
                "batches": [b.as_dict() for b in found[i : i + CHUNK_BATCHES]],
            }
            for r, found in landed.items()
            for i in range(0, len(found), CHUNK_BATCHES)
        ]

    # Never beside a warehouse cycle: one writer of each table. A chunk holds the slot for its
    # writes only, at most 5 minutes: then it must come free (the line's cycle waits behind it).
    @task(
        pool=WAREHOUSE_POOL,
        execution_timeout=timedelta(minutes=5),
        map_index_template="{{ chunk.label }}",
    )
    def warehouse(chunk: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from enrollment.core.batch import Landed
        from enrollment.ops.replay import replay_warehouse
        from enrollment_airflow.runtime import Runtime

        if "warehouse" not in (params or {})["stages"]:
            raise AirflowSkipException("stage warehouse not chosen")
        rt = Runtime.for_task()  # the configuration in force when the task runs
        rt.require(["bigquery", "gcs"])
        batches = [Landed.from_dict(b) for b in chunk["batches"]]
        rt.working_on(b.batch_id for b in batches)
        return {
            chunk["region"]: replay_warehouse(
                rt.sync_run, batches, restore=bool((params or {}).get("restore"))
            )
        }

    # After warehouse, also when that stage was not chosen; skipped with select (a scheduled run).
    @task(trigger_rule="none_failed_min_one_success")
    def sinks_to_sync(params: dict[str, Any] | None = None) -> list[str]:
        params = params or {}
        return [s for s in SINKS if s in params["sinks"]] if "sync" in params["stages"] else []

    @task(trigger_rule="none_failed_min_one_success", map_index_template="{{ sink }}")
    def sync(sink: str, selected: list[dict[str, Any]]) -> dict[str, Any]:
        from enrollment.ops.replay import replay_sync
        from enrollment_airflow.runtime import Runtime

        rt = Runtime.for_task()  # the configuration in force when the task runs
        rt.require(["bigquery", "gcs", *rt.config.sinks[sink].get("needs", [])])
        batches: dict[str, list[str]] = {}
        for chunk in selected:
            batches.setdefault(chunk["region"], []).extend(b["batch_id"] for b in chunk["batches"])
        rt.working_on(b for ids in batches.values() for b in ids)
        with rt.sinks(sink) as sinks:
            return {
                region: replay_sync(
                    rt.sync_run, sinks[sink], region, ids, rt.config.sync_max_batches
                )
                for region, ids in batches.items()
            }

    selected = select()
    warehoused = warehouse.expand(chunk=selected)
    chosen = sinks_to_sync()
    [selected, warehoused] >> chosen
    sync.partial(selected=selected).expand(sink=chosen)


replay()

"""Daily reconciliation: Kafka → ledger → BigQuery → every sink, per region and day."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from enrollment.config import load_config
from enrollment_airflow.alerts import on_failure
from enrollment_airflow.defaults import Tag, default_args

CONFIG = load_config()
REGIONS = [r.code for r in CONFIG.regions]

DOC_MD = f"""
### Daily reconciliation

At `{CONFIG.reconciliation["at"]}` (UTC) it reconciles **the day before**, one mapped task per
region. The unit is the batches claimed that day (their claim records in the landing bucket)
that the consumer group has committed past; for them it compares

| comparison | expected | found |
|---|---|---|
| kafka → ledger | offsets consumed from Kafka | the ledger's `offsets_in` (every batch has its rows) |
| ledger balance | ledger rows | rows where offsets = valid + quarantined + duplicates + skipped, and ok (a `gap` or `set_aside` row never is) |
| ledger → events | valid events the ledger counts | those event ids in `{CONFIG.warehouse_dataset}.events` |
| ledger → quarantine | quarantined + duplicates | rows in `{CONFIG.warehouse_dataset}.quarantine` |
| events → partners | partners of the day's events | their rows in `{CONFIG.warehouse_dataset}.partners` |
| partners → *sink* | partners the sink has synced | those the service holds in that state (read back) |

A task **fails** when anything differs, listing the comparisons and the partner ids involved; all
findings are in `{CONFIG.ops_dataset}.reconciliation` (a run again for the same day replaces them):
`SELECT * FROM {CONFIG.ops_dataset}.reconciliation WHERE NOT ok ORDER BY day DESC`.
Rows a sink refused (its quarantine) and partners not synced yet are counted, not differences.
To repair what it finds, run **replay** for the region and day.

**Catch-up is on**: unpausing covers every day since `{CONFIG.reconciliation["start_date"]}`; past days:
`airflow backfill create --dag-id reconciliation --from-date 2026-11-01 --to-date 2026-11-20`
(each run reconciles the day before its date). A manual run reconciles the `day` parameter.
Owner: enrollment-data team.
"""


@dag(
    dag_id="reconciliation",
    schedule=CronTriggerTimetable(CONFIG.reconciliation["at"], timezone="UTC"),
    start_date=datetime.fromisoformat(str(CONFIG.reconciliation["start_date"])),
    catchup=True,
    max_active_runs=2,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance") | {"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="The day to reconcile (UTC); empty: the day before the run's date",
        ),
        "regions": Param(
            REGIONS,
            type="array",
            items={"type": "string", "enum": REGIONS},
            description="Regions to reconcile",
        ),
    },
)
def reconciliation():
    @task
    def regions(params=None) -> list[str]:
        return [r for r in REGIONS if r in (params.get("regions") or REGIONS)]

    @task(map_index_template="{{ region }}", on_failure_callback=on_failure)
    def reconcile(region: str, params=None, logical_date=None) -> dict:
        from datetime import date

        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.health import require
        from enrollment.reconciliation import Reconciliation
        from enrollment_airflow.connections import (
            endpoints_from_connections,
            sink_from_connections,
            sync_run_from_connections,
        )

        config = load_config()  # the configuration in force when the task runs
        day = (
            date.fromisoformat(params["day"])
            if params.get("day")
            else (logical_date - timedelta(days=1)).date()
        )
        endpoints = endpoints_from_connections()
        require(
            [
                "kafka",
                "gcs",
                "bigquery",
                *{s for o in config.sinks.values() for s in o.get("needs", [])},
            ],
            endpoints,
            config,
        )
        sinks = {name: sink_from_connections(config, name) for name in config.sinks}
        try:
            report = Reconciliation(
                sync_run_from_connections(config), sinks, endpoints.kafka_bootstrap, config
            ).day(config.region(region), day)
        finally:
            for sink in sinks.values():
                sink.close()
        if report.differences:
            raise AirflowFailException(
                f"{region} {day}: " + " | ".join(f.describe() for f in report.differences)
            )
        return report.summary()

    reconcile.expand(region=regions())


reconciliation()

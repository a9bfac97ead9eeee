"""Daily reconciliation: Kafka → ledger → BigQuery → every sink, per region and day."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args, markdown_table

CONFIG = load_config()
REGIONS = [r.code for r in CONFIG.regions]

DATASET = CONFIG.warehouse_dataset
COMPARISONS = markdown_table(
    ("comparison", "expected", "found"),
    (
        "kafka → ledger",
        "offsets consumed from Kafka",
        "the ledger's `offsets_in` (every batch has its rows)",
    ),
    (
        "ledger balance",
        "ledger rows",
        "rows where offsets = valid + quarantined + duplicates + skipped, and ok "
        "(a `gap` or `set_aside` row never is)",
    ),
    (
        "ledger → events",
        "valid events the ledger counts",
        f"those event ids in `{DATASET}.events`",
    ),
    ("ledger → quarantine", "quarantined + duplicates", f"rows in `{DATASET}.quarantine`"),
    ("events → partners", "partners of the day's events", f"their rows in `{DATASET}.partners`"),
    (
        "partners → *sink*",
        "partners the sink has synced",
        "those the service holds in that state (read back)",
    ),
)

DOC_MD = f"""
### Daily reconciliation

At `{CONFIG.reconciliation.at}` (UTC) it reconciles **the day before**, one mapped task per
region. The unit is the batches claimed that day (their claim records in the landing bucket)
that the consumer group has committed past; for them it compares

{COMPARISONS}

A task **fails** when anything differs, listing the comparisons and the partner ids involved; all
findings are in `{CONFIG.ops_dataset}.reconciliation` (a run again for the same day replaces them):
`SELECT * FROM {CONFIG.ops_dataset}.reconciliation WHERE NOT ok ORDER BY day DESC`.
Rows a sink refused (its quarantine) and partners not synced yet are counted, not differences.
To repair what it finds, run **replay** for the region and day.

**Catch-up is on**: unpausing covers every day since `{CONFIG.reconciliation.start_date}`; past
days:
`airflow backfill create --dag-id reconciliation --from-date 2026-11-01 --to-date 2026-11-20`
(each run reconciles the day before its date). A manual run reconciles the `day` parameter.
Owner: enrollment-data team.
"""


@dag(
    dag_id="reconciliation",
    schedule=CronTriggerTimetable(CONFIG.reconciliation.at, timezone="UTC"),
    start_date=datetime.fromisoformat(str(CONFIG.reconciliation.start_date)),
    catchup=True,
    max_active_runs=2,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance") | {"retries": 1, "retry_delay": timedelta(minutes=1)},
    **DAG_DEFAULTS,
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
def reconciliation() -> None:
    @task
    def regions(params: dict[str, Any] | None = None) -> list[str]:
        return [r for r in REGIONS if r in ((params or {}).get("regions") or REGIONS)]

    @task(map_index_template="{{ region }}")
    def reconcile(
        region: str, params: dict[str, Any] | None = None, logical_date: datetime | None = None
    ) -> dict[str, Any]:
        from datetime import date

        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.ops.reconciliation import Reconciliation
        from enrollment_airflow.runtime import Runtime

        params = params or {}
        rt = Runtime.for_task()  # the configuration in force when the task runs
        config = rt.config
        day = (
            date.fromisoformat(params["day"])
            if params.get("day")
            else (cast(datetime, logical_date) - timedelta(days=1)).date()
        )
        needs = {s for o in config.sinks.values() for s in o.get("needs", [])}
        rt.require(["kafka", "gcs", "bigquery", *needs])
        with rt.sinks() as sinks:
            report = Reconciliation(rt.sync_run, sinks, rt.kafka, config).day(
                config.region(region), day
            )
        if report.differences:
            raise AirflowFailException(
                f"{region} {day}: " + " | ".join(f.describe() for f in report.differences)
            )
        return report.summary()

    reconcile.expand(region=regions())


reconciliation()

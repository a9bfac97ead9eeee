"""Housekeeping: what is only transient is deleted once its retention has passed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args, markdown_table

CONFIG = load_config()
R = CONFIG.retention

RETENTION_TABLE = markdown_table(
    ("what", "kept", "why it exists"),
    (
        "`sinks/<sink>/<REGION>/*.parquet`",
        f"{R.handover_days} days",
        "the partners a sync run handed to a sink (read back by the same run's gate and commit)",
    ),
    (
        "`claims/<REGION>/from-*.json`",
        f"{R.claims_days} days",
        "claim records: reconciliation and replay find a day's batches by them — a day older "
        "than this can no longer be replayed",
    ),
    (
        "tables `_cycle_*`, `_stage_*`",
        f"{R.staging_hours} hours",
        "staging tables a killed cycle, reconciliation or sync left behind (each drops its own)",
    ),
)

DOC_MD = f"""
### Housekeeping

At `{R.at}` (UTC) it deletes what is only transient, by age, in the landing bucket
`{CONFIG.landing_bucket}` and the dataset `{CONFIG.warehouse_dataset}`:

{RETENTION_TABLE}

Never touched: landed batches, `pending/` and `set_aside/` records, the claim chain
(`claims/<REGION>/landed-*`), the welcome-journey claims (`sinks/<sink>/journeys/`), the warehouse
tables. Set in `retention:` of `pipeline.yaml`. Bucket lifecycle rules and table expiration are not
relied on (the emulators ignore them); on Google Cloud they may be added as a second line.
Owner: enrollment-data team.
"""


@dag(
    dag_id="housekeeping",
    schedule=CronTriggerTimetable(R.at, timezone="UTC"),
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance") | {"retries": 1, "retry_delay": timedelta(minutes=5)},
    **DAG_DEFAULTS,
)
def housekeeping() -> None:
    @task(execution_timeout=timedelta(minutes=30))  # deletes by listing: 30 min is a hang
    def sweep() -> dict[str, Any]:
        from enrollment.ops import housekeeping as hk
        from enrollment_airflow.runtime import Runtime

        rt = Runtime.for_task()
        return hk.sweep(rt.bucket, rt.warehouse.client, rt.config).as_dict()

    sweep()


housekeeping()

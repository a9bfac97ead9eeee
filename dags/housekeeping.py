"""Housekeeping: what is only transient is deleted once its retention has passed."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from enrollment.config import load_config
from enrollment_airflow.alerts import on_failure
from enrollment_airflow.defaults import Tag, default_args

CONFIG = load_config()
R = CONFIG.retention

DOC_MD = f"""
### Housekeeping

At `{R.at}` (UTC) it deletes what is only transient, by age, in the landing bucket
`{CONFIG.landing_bucket}` and the dataset `{CONFIG.warehouse_dataset}`:

| what | kept | why it exists |
|---|---|---|
| `sinks/<sink>/<REGION>/*.parquet` | {R.handover_days} days | the partners a sync run handed to a sink (read back by the same run's gate and commit) |
| `claims/<REGION>/from-*.json` | {R.claims_days} days | claim records: reconciliation and replay find a day's batches by them — a day older than this can no longer be replayed |
| tables `_cycle_*`, `_stage_*` | {R.staging_hours} hours | staging tables a killed cycle, reconciliation or sync left behind (each drops its own) |

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
)
def housekeeping():
    @task(execution_timeout=timedelta(minutes=30), on_failure_callback=on_failure)
    def sweep() -> dict:
        from enrollment import housekeeping as hk
        from enrollment.config import load_config
        from enrollment_airflow.connections import warehouse_from_connections

        config = load_config()
        w = warehouse_from_connections(config)
        return hk.sweep(w.storage.bucket(config.landing_bucket), w.client, config).as_dict()

    sweep()


housekeeping()

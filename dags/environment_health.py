"""Environment health, every five minutes: one round trip per service, recorded in BigQuery."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args

SERVICES = ["kafka", "gcs", "bigquery", "firestore", "solr", "marketing-cloud"]

DOC_MD = """
### Environment health

Every five minutes, one mapped task per service does a small round trip where the pipeline
works: Kafka (region topics present, produce, consume, commit), Cloud Storage (write-once object
in the landing bucket, read back), BigQuery (datasets, a query), Firestore (write, read back),
Solr (core ping), Marketing Cloud (OAuth2 token). A failing task is named after its service and
its log says what did not answer.

**verdict** records every service's result (ok, seconds, detail) in `enrollment_ops.health`
and fails naming the services that are down:
`SELECT * FROM enrollment_ops.health ORDER BY checked_at DESC LIMIT 20`.
(When BigQuery itself is down the verdict cannot record it; its failure says so.)

The ingest and sync tasks do a quicker check of what they need before they start, so they fail
within seconds naming the service instead of timing out deep inside a task.
Owner: enrollment-data team.
"""


@dag(
    dag_id="environment_health",
    schedule=CronTriggerTimetable("*/5 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args("monitors") | {"retries": 1, "retry_delay": timedelta(seconds=20)},
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    **DAG_DEFAULTS,
)
def environment_health() -> None:
    @task(map_index_template="{{ service }}")
    def check_service(service: str) -> dict[str, Any]:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.ops.health import check
        from enrollment_airflow.runtime import Runtime

        result = check(service, Runtime.for_task().endpoints)
        # Kept even when the task fails, for the verdict.
        get_current_context()["ti"].xcom_push(key="check", value=result.as_dict())
        if not result.ok:
            raise AirflowFailException(f"{service} failed its round trip: {result.detail}")
        return result.as_dict()

    @task(trigger_rule="all_done")
    def verdict() -> dict[str, float]:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.ops.health import Check, record
        from enrollment_airflow.runtime import Runtime

        context = get_current_context()
        pulled = context["ti"].xcom_pull(
            task_ids="check_service", key="check", map_indexes=list(range(len(SERVICES)))
        )
        checks = [Check(**c) for c in pulled or [] if c]
        missing = sorted(set(SERVICES) - {c.service for c in checks})
        checks += [
            Check(service=s, ok=False, seconds=0.0, detail="the check did not report")
            for s in missing
        ]
        rt = Runtime.for_task()
        record(checks, context["run_id"], rt.project, credentials=rt.endpoints.credentials)
        down = [f"{c.service} ({c.detail})" for c in checks if not c.ok]
        if down:
            raise AirflowFailException("down: " + "; ".join(down))
        return {c.service: c.seconds for c in checks}

    check_service.expand(service=SERVICES) >> verdict()


environment_health()

"""Smoke test of the local stack: one round trip per service, from inside Airflow."""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args

SERVICES = ["kafka", "gcs", "bigquery", "firestore", "solr", "marketing-cloud"]

DOC_MD = """
### Stack smoke test

Checks every service the pipeline depends on with a small round trip, one mapped task per
service: Kafka (produce, consume, commit), Cloud Storage (write-once object, read back),
BigQuery (datasets, a query), Firestore (write, read back), Solr (core ping), Marketing Cloud
(OAuth2 token).

**When it fails** the failing task is named after the service, and its log says what did not
answer. Endpoints come from the connections `kafka_default`, `google_cloud_default`,
`solr_default`, `marketing_cloud_default`. On the local stack run `make status`.

Owner: enrollment-data team.
"""


@dag(
    dag_id="stack_smoke",
    schedule=None,
    catchup=False,
    default_args=default_args("monitors"),
    tags=[str(Tag.SMOKE), str(Tag.OPS)],
    doc_md=DOC_MD,
    **DAG_DEFAULTS,
)
def stack_smoke() -> None:
    @task(map_index_template="{{ service }}", retries=0)
    def check_service(service: str) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from enrollment.ops.health import check
        from enrollment_airflow.runtime import Runtime

        result = check(service, Runtime.for_task().endpoints)
        if not result.ok:
            raise AirflowFailException(f"{service} failed its round trip: {result.detail}")
        return result.as_dict()

    check_service.expand(service=SERVICES)


stack_smoke()

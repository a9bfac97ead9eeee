"""Landing a set-aside batch again from Kafka; see enrollment.ingest.reland."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, Tag, default_args

CONFIG = load_config()
REGIONS = [r.code for r in CONFIG.regions]

DOC_MD = f"""
### Reland a batch

A batch the warehouse **set aside** because its landed objects are gone (the alert and the lag
monitor name it; its record is under `gs://{CONFIG.landing_bucket}/set_aside/`) is read from
Kafka again — exactly its claimed offset range, while Kafka still holds it — validated, its
objects written again, and queued for the warehouse: the next cycle writes it, and its
`set_aside` ledger row turns ok. The group's offsets do not move.

**Trigger** with the `region` and the `batch_id` the alert named. An object still there is kept:
delete an *unreadable* one first (`gcloud storage rm`). The run fails, changing nothing, when the
batch is not set aside, its claim record is gone (`retention.claims_days`), or Kafka's retention
has deleted part of its range: then the batch stays set aside and its messages are lost to the
pipeline (the ledger row says so). A batch set aside after failing its gate needs a fix, then
`enrollment.ingest.pending.requeue`, not this.

Idempotent: a second run finds nothing set aside and says so. Owner: enrollment-data team.
"""


@dag(
    dag_id="reland_batch",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance"),
    **DAG_DEFAULTS,
    params={
        "region": Param(REGIONS[0], type="string", enum=REGIONS, description="The batch's region"),
        "batch_id": Param(
            "",
            type="string",
            pattern="^[a-z0-9-]*$",
            description="The set-aside batch, as the alert named it (e.g. emea-0123456789abcdef)",
        ),
    },
)
def reland_batch() -> None:
    @task(retries=0)  # every refusal is final until an operator acts
    def reland(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Lands the batch again from Kafka and queues it for the warehouse."""
        from enrollment.ingest.reland import reland as reland_from_kafka
        from enrollment_airflow.runtime import Runtime

        params = params or {}
        if not params.get("batch_id"):
            raise ValueError("reland_batch: give the batch_id the set-aside alert named")
        rt = Runtime.for_task()  # the configuration in force when the task runs
        rt.require(["kafka", "gcs"])
        rt.working_on([params["batch_id"]])
        landed = reland_from_kafka(
            rt.kafka,
            rt.bucket,
            rt.keyring,
            rt.config.consumer_group,
            params["region"],
            rt.config.region(params["region"]).topic,
            params["batch_id"],
        )
        return {
            k: getattr(landed, k)
            for k in ("batch_id", "region", "offsets", "valid", "quarantined", "duplicates")
        }

    reland()


reland_batch()

"""Quarantine re-processing: quarantined messages validated again with today's contracts; see
enrollment.ops.recovery."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, task

from enrollment.config import load_config
from enrollment_airflow.defaults import DAG_DEFAULTS, WAREHOUSE_POOL, Tag, default_args
from enrollment_airflow.runtime import Runtime

if TYPE_CHECKING:
    from enrollment.ops.recovery.request import RecoveryRequest

CONFIG = load_config()
REGIONS = [r.code for r in CONFIG.regions]

DOC_MD = f"""
### Requeue quarantine

Once a contract is fixed (a producer's new field accepted, a market rule corrected), brings the
messages it quarantined back. **Trigger** with `region` (or ALL), the window `since` to `until`
(the messages' Kafka arrival, UTC, at most 31 days; empty: the last 7 days), the `reasons` to take
(a filter matches a reason equal to it or starting `<filter>:`; empty: every reason but
`duplicate_event_id`) and `dry_run` (**true by default**: a manual trigger changes nothing unless
asked).

1. **plan** — the window's rows of `{CONFIG.warehouse_dataset}.quarantine` (partitions pruned),
   minus those already in `{CONFIG.ops_dataset}.recovered`; each message's **original bytes read
   back from Kafka** (the quarantine holds them masked) and validated with today's contracts.
   Counted per region and reason: `candidates` = `already_recovered` + `expired` (no longer in
   Kafka: retention) + `still_invalid` + `erased` (partner erased) + `already_in_events` (a fixed
   resend got there first) + `recoverable`.
2. **recover** (not in a dry run) — per region, the recoverable
   messages landed as **one recovery batch** (`recovery-<region>-…`, tax ids tokenised, partner
   changes folded, write-once objects in `gs://{CONFIG.landing_bucket}/landing/<region>/`) and
   queued for the `warehouse` DAG, which writes them into `events` and `partners` (it stays the
   **only writer of `events`**) and wakes the sink DAGs (Firestore, Solr, Marketing Cloud). The
   messages are recorded in `{CONFIG.ops_dataset}.recovered` (one row per message, ever).
3. **ledger** (the warehouse writer's slot, at most 5 minutes: the Kafka reads and the landing
   happen before, outside it) — each origin batch gets a ledger row `recovered`: offsets = valid
   + quarantined (still) + duplicates + skipped + recovered.
4. **report** — the counts (XCom and log): never a partner id or a message byte.

Safe to run again: a recovered message is never recovered twice, the same set of messages is the
same batch (its objects write-once), a batch the warehouse already wrote is not queued again.
A recovery batch carries its messages' **old Kafka timestamps on purpose**: the warehouse's
freshness gate leaves it out, the lag monitor measures it from when it was queued, and the daily
reconciliation's Kafka → ledger comparison does not count it (it has no claim). The quarantine
rows stay (history); `recovered` says which came back. Owner: enrollment-data team.
"""


def _request(params: dict[str, Any] | None) -> RecoveryRequest:
    """The run's params checked; a parameter that cannot be honoured fails the run at once,
    unretried."""
    from airflow.sdk.exceptions import AirflowFailException

    from enrollment.core.errors import RequestError
    from enrollment.ops.recovery.request import RecoveryRequest

    try:
        return RecoveryRequest.parse(params or {}, REGIONS)
    except RequestError as exc:
        raise AirflowFailException(f"requeue_quarantine: {exc}") from None


def _runtime() -> Runtime:
    """The task's clients, once Kafka, Cloud Storage and BigQuery answer."""
    rt = Runtime.for_task()  # the configuration in force when the task runs
    rt.require(["kafka", "gcs", "bigquery"])
    return rt


@dag(
    dag_id="requeue_quarantine",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=[str(Tag.OPS)],
    doc_md=DOC_MD,
    default_args=default_args("maintenance"),
    **DAG_DEFAULTS,
    params={
        "region": Param(
            "ALL",
            type="string",
            enum=["ALL", *REGIONS],
            description="The region whose quarantine to re-process, or ALL",
        ),
        "since": Param(
            None,
            type=["null", "string"],
            description=(
                "Window start, ISO 8601 (UTC), e.g. 2026-11-23T00:00:00Z; "
                "empty: 7 days before until"
            ),
        ),
        "until": Param(
            None,
            type=["null", "string"],
            description="Window end, ISO 8601 (UTC); empty: now. At most 31 days after since",
        ),
        "reasons": Param(
            [],
            type="array",
            items={"type": "string"},
            description=(
                "Reason codes to take (e.g. country_not_in_region, missing); "
                "empty: every reason but duplicate_event_id"
            ),
        ),
        "dry_run": Param(
            True,
            type="boolean",
            description="Only count what would be recovered (the default): nothing is written",
        ),
    },
)
def requeue_quarantine() -> None:
    @task(retries=1)
    def plan(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """What would be recovered, counted by region and reason."""
        from enrollment.ops.recovery import plan as recovery_plan

        request = _request(params)
        rt = _runtime()
        return recovery_plan.plan(
            rt.warehouse, rt.bucket, rt.keyring, rt.kafka, rt.config, request
        ).counts()

    # Reads Kafka, lands and queues: the one writer's slot is not needed (the warehouse DAG
    # writes the batch); its ledger rows are the next task's.
    @task(execution_timeout=timedelta(minutes=60))
    def recover(
        planned: dict[str, Any], params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from enrollment.ops.recovery import run as recovery_run

        request = _request(params)
        if request.dry_run:
            raise AirflowSkipException("dry run: nothing recovered (see plan's counts)")
        rt = _runtime()
        return recovery_run.recover(
            rt.warehouse,
            rt.bucket,
            rt.keyring,
            rt.kafka,
            rt.config,
            request,
            dag_run=str(run_id),
            ledger=False,
        )

    # Writes ledger rows: never beside a warehouse cycle, and for minutes at most.
    @task(pool=WAREHOUSE_POOL, execution_timeout=timedelta(minutes=5))
    def ledger(recovered: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, int]:
        """Each origin batch's ``recovered`` ledger row (counted from the recovered table: the
        same row however often it is written), and those of an earlier run whose ledger step
        failed for good (its messages are recovered already: only this step brings them)."""
        from enrollment.ops.recovery import run as recovery_run

        request = _request(params)
        rt = Runtime.for_task()  # the configuration in force when the task runs
        rt.require(["bigquery"])
        recovery_run.record_ledger(rt.warehouse, request.since)
        return {code: len(b["origin_batches"]) for code, b in recovered["batches"].items()}

    @task(trigger_rule="none_failed")
    def report(planned: dict[str, Any]) -> dict[str, Any]:
        """The run's result: the recovery's counts, or the plan's in a dry run."""
        import logging

        from airflow.sdk import get_current_context

        done = get_current_context()["ti"].xcom_pull(task_ids="recover")
        result = (done or planned) | {"dry_run": done is None}
        total = result["total"]
        logging.getLogger(__name__).info(
            "requeue_quarantine %s: %s",
            "dry run" if done is None else "recovered",
            ", ".join(f"{k} {v}" for k, v in total.items()),
        )
        return result

    planned = plan()
    recovered = recover(planned)
    ledger(recovered) >> report(planned)


requeue_quarantine()

"""The ``requeue_quarantine`` DAG on the running Airflow: a dry run for every region succeeds, its
result is counts by region and reason (no ids), and it writes nothing."""

from __future__ import annotations

import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.ingest.pending import pending_batches
from enrollment.ops.recovery.plan import OUTCOMES

pytestmark = [pytest.mark.integration]


def recovered_rows(w) -> int:
    have = {t.table_id for t in w.client.list_tables(f"{w.project}.{w.ops_dataset}")}
    return (
        w.run(f"SELECT COUNT(*) AS n FROM {w.table('recovered', ops=True)}")[0]["n"]
        if "recovered" in have
        else 0
    )


def test_a_dry_run_for_every_region_reports_counts_and_writes_nothing(stack, pipeline_config):
    from stack.airflow_client import AirflowClient

    config = pipeline_config
    client = AirflowClient(stack)
    client.wait_for_dag("requeue_quarantine", timeout_s=120)
    w = BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    before = recovered_rows(w)

    run_id = client.trigger("requeue_quarantine", {"region": "ALL", "dry_run": True})
    assert client.wait_for_run("requeue_quarantine", run_id, timeout_s=600) == "success", (
        client.failure_logs("requeue_quarantine", run_id)
    )
    states = {t["task_id"]: t["state"] for t in client.task_states("requeue_quarantine", run_id)}
    assert states == {
        "plan": "success",
        "recover": "skipped",
        "ledger": "skipped",
        "report": "success",
    }
    result = client.http.get(
        f"/dags/requeue_quarantine/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value"
    ).json()["value"]
    assert result["dry_run"] is True and result["request"]["regions"] == [
        r.code for r in config.regions
    ]
    assert sorted(result["regions"]) == sorted(r.code for r in config.regions)
    keys = {"candidates", *OUTCOMES}
    for region in result["regions"].values():
        assert set(region["total"]) == keys and all(
            set(c) == keys for c in region["by_reason"].values()
        )
        assert region["total"]["candidates"] == sum(region["total"][o] for o in OUTCOMES)
    assert result["total"]["candidates"] == sum(
        r["total"]["candidates"] for r in result["regions"].values()
    )
    assert recovered_rows(w) == before, "a dry run records nothing"
    assert not [
        b
        for b in pending_batches(bucket, config.consumer_group)
        if b.batch_id.startswith("recovery-")
    ]

"""Replay from the command line's path: `airflow backfill create` (here its REST twin), on the
running scheduler, for today's batches. The replay re-syncs today's LATAM batches to Firestore and,
since the sink is already in step, changes nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.ingest.backlog import total_pending
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.generator import Simulator
from enrollment.sync.plan import region_plan
from enrollment.sync.run import SyncRun
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]


def test_a_backfill_of_replay_resyncs_todays_batches_and_changes_nothing(stack, pipeline_config):
    from stack.airflow_client import AirflowClient

    config, region = pipeline_config, pipeline_config.region("LATAM")
    client = AirflowClient(stack)
    carriers = ["ingest_latam", "warehouse", "sync_firestore"]
    for dag_id in [*carriers, "replay"]:
        client.wait_for_dag(dag_id, timeout_s=120)
    warehouse = BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )
    run = SyncRun(warehouse, storage_client(stack.project).bucket(config.landing_bucket))

    # Today's LATAM batches, landed, warehoused and synced by the running DAGs.
    produce(
        stack.kafka,
        [
            m
            for m in Simulator(seed=int(time.time()), config=config).take(2000)
            if m.topic == region.topic
        ],
    )
    for dag_id in carriers:
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    try:
        deadline = time.monotonic() + 420

        def busy() -> (
            bool
        ):  # a run paused halfway would leave a landed batch without its warehouse ledger row
            return any(
                client.http.get(
                    f"/dags/{dag_id}/dagRuns", params={"state": ["running", "queued"]}
                ).json()["total_entries"]
                for dag_id in carriers
            )

        # Landed, not yet warehoused: between land's end and the warehouse run the asset starts,
        # nothing is busy.
        def queued() -> bool:
            return any(
                b.region == "LATAM" for b in pending_batches(run.bucket, config.consumer_group)
            )

        while (
            total_pending(stack.kafka, config.consumer_group, [region])
            or busy()
            or queued()
            or region_plan(run.warehouse, run.bucket.name, "firestore", "LATAM").batches
        ):
            assert time.monotonic() < deadline, (
                "LATAM was not ingested and synced to Firestore within 7 minutes"
            )
            time.sleep(5)
    finally:
        for dag_id in carriers:
            client.http.patch(f"/dags/{dag_id}", json={"is_paused": True})
    ledger = f"`{stack.project}.{config.ops_dataset}.ledger`"
    sync_rows = sorted(
        tuple(r.values())
        for r in warehouse.run(
            f"SELECT * FROM {ledger} WHERE region = 'LATAM' AND stage = 'sync_firestore'"
        )
    )

    # The backfill covers yesterday's logical date and names today in its conf: today's logical date
    # may already have a run (the schedule's own, which
    # skips), and a backfill reuses an existing run.
    now = datetime.now(UTC)
    day = (now - timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    request = {
        "dag_id": "replay",
        "from_date": day,
        "to_date": day,
        "reprocess_behavior": "completed",
        "max_active_runs": 1,
        "dag_run_conf": {
            "region": "LATAM",
            "date_from": now.date().isoformat(),
            "stages": ["sync"],
            "sinks": ["firestore"],
        },
    }
    # On SQLite Airflow refuses a backfill while another writer holds the database (503): ask again.
    for _ in range(30):
        backfill = client.http.post("/backfills", json=request)
        if backfill.status_code != 503:
            break
        time.sleep(2)
    assert backfill.status_code == 200, backfill.text
    deadline, run_id = time.monotonic() + 120, None
    while run_id is None:
        assert time.monotonic() < deadline, "the backfill created no run"
        runs = client.http.get("/dags/replay/dagRuns", params={"run_type": ["backfill"]}).json()[
            "dag_runs"
        ]
        run_id = next(
            (r["dag_run_id"] for r in runs if r["logical_date"].startswith(day[:10])), None
        )
        time.sleep(1)
    assert client.wait_for_run("replay", run_id, timeout_s=600) == "success", client.failure_logs(
        "replay", run_id
    )

    replayed = client.http.get(
        f"/dags/replay/dagRuns/{run_id}/taskInstances/sync/xcomEntries/return_value",
        params={"map_index": 0},
    ).json()["value"]
    latam = replayed["LATAM"]
    assert latam["batches"] >= 1 and latam["partners"] > 0
    assert (
        latam["unchanged"] == latam["partners"] and latam["written"] == 0 and latam["rejected"] == 0
    ), latam
    assert (
        sorted(
            tuple(r.values())
            for r in warehouse.run(
                f"SELECT * FROM {ledger} WHERE region = 'LATAM' AND stage = 'sync_firestore'"
            )
        )
        == sync_rows
    )

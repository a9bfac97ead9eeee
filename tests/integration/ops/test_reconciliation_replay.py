"""Daily reconciliation and replay, through their DAGs on a pipeline of their own: a clean day
reconciles; a Firestore document deleted behind the pipeline's back is found and named; replay
writes it again from the landed batches; a second replay changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enrollment.clients.services import Endpoints, bigquery_client, firestore_client, storage_client
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]

REGION = "EMEA"


def test_reconciliation_finds_a_deleted_document_and_replay_restores_it(
    stack, airflow_db, dagbag, isolated_pipeline
):
    from airflow.utils.state import DagRunState

    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag

    config = isolated_pipeline
    region = config.region(REGION)
    produce(
        stack.kafka,
        [
            m
            for m in Simulator(
                seed=4242, faults=FaultRates.mix(0.05), initial_partners=40, config=config
            ).take(1500)
            if m.topic == region.topic
        ],
    )
    assert ingest_dag(region).test().state == DagRunState.SUCCESS

    # Landed and still queued for the warehouse: a replay of the sync leaves those batches to the
    # live pipeline and says so; a batch neither queued nor warehoused is an error that names it.
    from enrollment.clients.bigquery import BigQuery
    from enrollment.ops.replay import landed_batches, replay_sync
    from enrollment.sinks import build_sink
    from enrollment.sync.run import SyncRun

    day = datetime.now(UTC).date()
    w = BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )
    early = SyncRun(w, storage_client(stack.project).bucket(config.landing_bucket))
    firestore = build_sink("firestore", config.sinks["firestore"], Endpoints.from_env())
    try:
        ids = [b.batch_id for b in landed_batches(early, config, REGION, day, day)]
        assert ids and replay_sync(early, firestore, REGION, ids)["queued"] == len(ids)
        with pytest.raises(ValueError, match="1 batches have no warehouse ledger row"):
            replay_sync(early, firestore, REGION, [*ids, "EMEA-never-landed"])
    finally:
        firestore.close()
    assert warehouse_dag().test().state == DagRunState.SUCCESS
    for name in config.sinks:
        assert sync_dag(name).test().state == DagRunState.SUCCESS, name
    today = datetime.now(UTC).date().isoformat()
    bq = bigquery_client(stack.project)
    ops, wh = (
        f"`{stack.project}.{config.ops_dataset}`",
        f"`{stack.project}.{config.warehouse_dataset}`",
    )

    def reconcile():
        run = dagbag.dags["reconciliation"].test(run_conf={"day": today, "regions": [REGION]})
        rows = {
            r["comparison"]: dict(r)
            for r in bq.query(
                f"SELECT * FROM {ops}.reconciliation WHERE region = '{REGION}' AND day = '{today}'"
            ).result()
        }
        return run, rows

    run, rows = reconcile()
    assert run.state == DagRunState.SUCCESS, {
        k: (v["expected"], v["actual"], v["detail"]) for k, v in rows.items() if not v["ok"]
    }
    assert set(rows) >= {
        "kafka → ledger",
        "ledger balance",
        "ledger → events",
        "ledger → quarantine",
        "events → partners",
        *(f"partners → {s}" for s in config.sinks),
    }
    assert rows["kafka → ledger"]["expected"] > 0 and rows["partners → firestore"]["expected"] > 0
    assert all(r["ok"] for r in rows.values())

    # A document lost behind the pipeline's back.
    victim = next(
        iter(
            bq.query(
                f"SELECT partner_id FROM {wh}.partners WHERE status = 'active' ORDER BY partner_id "
                "LIMIT 1"
            ).result()
        )
    )["partner_id"]
    documents = firestore_client(stack.project).collection(config.sinks["firestore"]["collection"])
    assert documents.document(victim).get().exists
    documents.document(victim).delete()

    run, rows = reconcile()
    assert run.state == DagRunState.FAILED
    assert (
        not rows["partners → firestore"]["ok"]
        and rows["partners → firestore"]["partner_ids"] == victim
    )
    assert rows["partners → firestore"]["actual"] == rows["partners → firestore"]["expected"] - 1
    assert all(r["ok"] for name, r in rows.items() if name != "partners → firestore"), (
        "only Firestore differs"
    )

    replay = dagbag.dags["replay"]
    conf = {
        "region": REGION,
        "date_from": today,
        "date_to": today,
        "stages": ["sync"],
        "sinks": ["firestore"],
    }
    assert replay.test(run_conf=conf).state == DagRunState.SUCCESS
    restored = documents.document(victim).get()
    assert (
        restored.exists
        and restored.get("partner_id") == victim
        and restored.get("status") == "active"
    )

    run, rows = reconcile()
    assert run.state == DagRunState.SUCCESS and all(r["ok"] for r in rows.values())

    # Everything again: the warehouse MERGEs and the sink writes change nothing.
    ledger_before = sorted(
        tuple(r.values()) for r in bq.query(f"SELECT * FROM {ops}.ledger").result()
    )
    events_before = next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {wh}.events").result()))["n"]
    updated_before = restored.update_time
    assert (
        replay.test(
            run_conf=conf | {"stages": ["warehouse", "sync"], "sinks": list(config.sinks)}
        ).state
        == DagRunState.SUCCESS
    )
    assert (
        sorted(tuple(r.values()) for r in bq.query(f"SELECT * FROM {ops}.ledger").result())
        == ledger_before
    )
    assert (
        next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {wh}.events").result()))["n"]
        == events_before
    )
    assert documents.document(victim).get().update_time == updated_before

    # Rows lost from the warehouse behind the pipeline's back: one batch's events and quarantine.
    lost = next(
        iter(
            bq.query(
                f"SELECT Q.batch_id FROM {wh}.quarantine Q JOIN {wh}.events E USING (batch_id) "
                f"WHERE Q.region = '{REGION}' GROUP BY Q.batch_id ORDER BY Q.batch_id LIMIT 1"
            ).result()
        )
    )["batch_id"]

    def held(table: str) -> list[tuple]:
        return sorted(
            tuple(r.values())
            for r in bq.query(f"SELECT * FROM {wh}.{table} WHERE batch_id = '{lost}'").result()
        )

    events_of, quarantine_of = held("events"), held("quarantine")
    assert events_of and quarantine_of
    for table in ("events", "quarantine"):
        bq.query(f"DELETE FROM {wh}.{table} WHERE batch_id = '{lost}'").result()
    assert held("events") == [] and held("quarantine") == []
    # restore named each time: under dag.test() a run's conf stays in the session DagBag's params
    # (an earlier test's restore would carry over).
    warehouse_only = conf | {"stages": ["warehouse"], "restore": False}

    # A replay as before writes nothing for a batch the ledger holds as warehoused ...
    assert replay.test(run_conf=warehouse_only).state == DagRunState.SUCCESS
    assert held("events") == [] and held("quarantine") == []
    run, rows = reconcile()
    assert run.state == DagRunState.FAILED and not rows["ledger → events"]["ok"]

    # ... a restore writes its rows again, once, and leaves the ledger as it was.
    ledger_before = sorted(
        tuple(r.values()) for r in bq.query(f"SELECT * FROM {ops}.ledger").result()
    )
    restore = replay.test(run_conf=warehouse_only | {"restore": True})
    assert restore.state == DagRunState.SUCCESS
    assert held("events") == events_of and held("quarantine") == quarantine_of
    assert (
        next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {wh}.events").result()))["n"]
        == events_before
    )
    assert (
        sorted(tuple(r.values()) for r in bq.query(f"SELECT * FROM {ops}.ledger").result())
        == ledger_before
    )
    run, rows = reconcile()
    assert run.state == DagRunState.SUCCESS and all(r["ok"] for r in rows.values())
    # A second restore changes nothing.
    assert replay.test(run_conf=warehouse_only | {"restore": True}).state == DagRunState.SUCCESS
    assert held("events") == events_of and held("quarantine") == quarantine_of
    assert (
        next(iter(bq.query(f"SELECT COUNT(*) AS n FROM {wh}.events").result()))["n"]
        == events_before
    )

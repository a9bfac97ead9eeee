"""Batches the warehouse cannot write, through the real DAGs: one that fails its gate in every
cycle is set aside after ``set_aside_after`` cycles with one ``broken`` alert, and the runs turn
green again; one whose landed objects are gone is set aside at once, landed again from Kafka by
the ``reland_batch`` DAG, and warehoused, its ledger balanced; a batch Kafka no longer holds is
refused and stays set aside."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from enrollment.clients.services import bigquery_client, storage_client
from enrollment.core.batch import Landed
from enrollment.core.layout import pending_object, set_aside_object
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import isolated, produce, succeeded

pytestmark = [pytest.mark.integration]

REGION = "APAC"
ALERTS: list[dict] = []


def record_alert(payload: dict) -> None:
    ALERTS.append(payload)


@pytest.fixture
def pipeline(stack, tmp_path, monkeypatch):
    def change(raw):
        raw["alerts"] = {"on_failure": f"{__name__}:record_alert"}

    ALERTS.clear()
    with isolated(stack, tmp_path / "pipeline.yaml", monkeypatch, change) as config:
        yield config


def _landed(stack, config, dagbag, seed: int) -> tuple[object, list[Landed]]:
    """The region's messages produced and landed by its ingest DAG; the batches pending."""
    from enrollment_airflow.ingest import ingest_dag

    region = config.region(REGION)
    produce(
        stack.kafka,
        [m for m in Simulator(seed=seed, config=config).take(900) if m.topic == region.topic],
    )
    succeeded(ingest_dag(region).test(run_conf={"max_batch": 80}))
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    batches = pending_batches(bucket, config.consumer_group)
    assert batches
    return bucket, batches


def _warehouse(monkeypatch):
    from enrollment_airflow.warehouse import warehouse_dag

    dag = warehouse_dag()
    monkeypatch.setattr(dag.get_task("cycle"), "retries", 0)  # dag.test() waits out retry delays
    return dag.test()


def _ledger(stack, config, batch_id: str) -> dict[str, dict]:
    return {
        r["stage"]: dict(r)
        for r in bigquery_client(stack.project)
        .query(
            f"SELECT * FROM `{stack.project}.{config.ops_dataset}.ledger` "
            f"WHERE batch_id = '{batch_id}'"
        )
        .result()
    }


def test_a_batch_failing_its_gate_is_set_aside_after_three_cycles_with_one_alert(
    stack, airflow_db, dagbag, pipeline, monkeypatch
):
    from airflow.utils.state import DagRunState

    config = pipeline
    bucket, batches = _landed(stack, config, dagbag, seed=2701)
    bad = batches[0]
    # A record that does not match its objects: every cycle's gate finds one valid row missing.
    record = bucket.blob(pending_object(bad.group, bad.region, bad.batch_id))
    body = json.loads(record.download_as_text())
    body["valid"] += 1
    body["quarantined"] -= 1
    record.upload_from_string(json.dumps(body), content_type="application/json")

    after = config.warehouse.set_aside_after
    assert after == 3
    for n in range(1, after):
        assert _warehouse(monkeypatch).state == DagRunState.FAILED
        assert json.loads(record.download_as_text())["failed_cycles"] == n
        assert "warehouse" not in _ledger(stack, config, bad.batch_id)
    alerts_before = len(ALERTS)  # each red run alerted once
    assert alerts_before == after - 1

    run = _warehouse(monkeypatch)
    assert run.state == DagRunState.SUCCESS, "the batch is set aside; the run goes on"
    assert not record.exists()
    assert bucket.blob(set_aside_object(bad.group, bad.region, bad.batch_id)).exists()
    row = _ledger(stack, config, bad.batch_id)["set_aside"]
    assert not row["ok"] and f"failed its gate in {after} cycles" in row["detail"]
    assert len(ALERTS) == alerts_before + 1
    alert = ALERTS[-1]
    assert alert["kind"] == "broken" and alert["task_ids"] == ["cycle"]
    assert bad.batch_id in alert["reason"] and "set aside" in alert["reason"]
    for other in batches[1:]:  # the others were committed in the first cycle
        assert _ledger(stack, config, other.batch_id)["warehouse"]["ok"]
    # Nothing waits: the next cycle skips, no alert.
    succeeded_or_skipped = _warehouse(monkeypatch)
    assert succeeded_or_skipped.state == DagRunState.SUCCESS and len(ALERTS) == alerts_before + 1


def test_a_batch_whose_objects_are_gone_is_landed_again_from_kafka(
    stack, airflow_db, dagbag, pipeline, monkeypatch
):
    from airflow.utils.state import DagRunState

    config = pipeline
    bucket, batches = _landed(stack, config, dagbag, seed=2702)
    lost, kept = batches[0], batches[-1]
    assert lost.batch_id != kept.batch_id, "two batches: one to lose, one to lose for good"
    prefix = lost.valid_uri.removeprefix(f"gs://{bucket.name}/").rsplit("/", 1)[0]
    for gone in (lost, kept):
        for blob in bucket.list_blobs(
            prefix=gone.valid_uri.removeprefix(f"gs://{bucket.name}/").rsplit("/", 1)[0] + "/"
        ):
            blob.delete()
    assert not list(bucket.list_blobs(prefix=prefix + "/"))

    run = _warehouse(monkeypatch)
    assert run.state == DagRunState.SUCCESS
    for gone in (lost, kept):
        assert not _ledger(stack, config, gone.batch_id)["set_aside"]["ok"]
    assert sorted(a["reason"].split()[1] for a in ALERTS) == sorted([lost.batch_id, kept.batch_id])

    reland = dagbag.dags["reland_batch"]
    run = reland.test(run_conf={"region": REGION, "batch_id": lost.batch_id})
    assert run.state == DagRunState.SUCCESS
    relanded = run.get_task_instance("reland").xcom_pull(task_ids="reland")
    assert (relanded["offsets"], relanded["valid"], relanded["quarantined"]) == (
        lost.offsets,
        lost.valid,
        lost.quarantined,
    )
    assert {b.name.rsplit("/", 1)[-1] for b in bucket.list_blobs(prefix=prefix + "/")} >= {
        "valid.parquet",
        "quarantine.parquet",
        "partners.parquet",
    }
    assert not bucket.blob(set_aside_object(lost.group, lost.region, lost.batch_id)).exists()

    succeeded(_warehouse(monkeypatch))
    ledger = _ledger(stack, config, lost.batch_id)
    assert ledger["warehouse"]["ok"] and ledger["set_aside"]["ok"]
    events = next(
        iter(
            bigquery_client(stack.project)
            .query(
                f"SELECT COUNT(*) AS n FROM `{stack.project}.{config.warehouse_dataset}.events` "
                f"WHERE batch_id = '{lost.batch_id}'"
            )
            .result()
        )
    )["n"]
    assert events == lost.valid

    # Again: nothing is set aside any more; the run fails and changes nothing.
    assert (
        reland.test(run_conf={"region": REGION, "batch_id": lost.batch_id}).state
        == DagRunState.FAILED
    )

    # Retention deleted the other batch's messages: refused, it stays set aside.
    region = config.region(REGION)
    admin = AdminClient(stack.kafka.admin())
    ends = {}
    consumer = Consumer(stack.kafka.consumer({"group.id": config.consumer_group}))
    try:
        for p in range(region.partitions):
            ends[p] = consumer.get_watermark_offsets(TopicPartition(region.topic, p), timeout=10)[1]
    finally:
        consumer.close()
    for future in admin.delete_records(
        [TopicPartition(region.topic, p, end) for p, end in ends.items()]
    ).values():
        future.result(30)
    run = reland.test(run_conf={"region": REGION, "batch_id": kept.batch_id})
    assert run.state == DagRunState.FAILED
    assert bucket.blob(set_aside_object(kept.group, kept.region, kept.batch_id)).exists()
    assert not _ledger(stack, config, kept.batch_id)["set_aside"]["ok"]

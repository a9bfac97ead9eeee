"""The ingest DAG of a region and the warehouse DAG, run by Airflow (``dag.test()``) against the
real stack: the ingest claims everything pending and lands it, the warehouse cycle writes it and
its ledger balances; a second run of each finds nothing."""

import pytest
from confluent_kafka import Consumer, TopicPartition

from enrollment.clients.services import bigquery_client
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]


def test_ingest_dag_lands_and_merges_a_region(stack, dagbag, airflow_db, pipeline_config):
    from airflow.utils.state import DagRunState

    region = pipeline_config.region("LATAM")
    messages = [
        m
        for m in Simulator(seed=808, faults=FaultRates.mix(0.05), initial_partners=40).take(2000)
        if m.topic == region.topic
    ]
    assert messages
    produce(stack.kafka, messages)

    dag = dagbag.dags["ingest_latam"]
    run = dag.test(run_conf={"max_batch": 1_000_000})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.SUCCESS, states
    train = run.get_task_instance("land").xcom_pull(task_ids="land")
    assert (
        train["offsets"]
        == train["valid"] + train["quarantined"] + train["duplicates"]
        == sum(b["offsets"] for b in train["batches"])
        >= len(messages)
    )

    cycle = dagbag.dags["warehouse"].test()
    assert cycle.state == DagRunState.SUCCESS, {
        ti.task_id: ti.state for ti in cycle.get_task_instances()
    }
    cycled = cycle.get_task_instance("cycle").xcom_pull(task_ids="cycle")
    for landed in train["batches"]:
        assert landed["batch_id"] in [b["batch_id"] for b in cycled["batches"]] + cycled["already"]

    consumer = Consumer(stack.kafka.consumer({"group.id": pipeline_config.consumer_group}))
    parts = [TopicPartition(region.topic, p) for p in range(region.partitions)]
    committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
    ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    consumer.close()
    assert committed == ends, "offsets committed to the end"

    valid_ids = [m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"]
    client = bigquery_client(stack.project)
    from google.cloud import bigquery

    found = list(
        client.query(
            "SELECT COUNT(*) AS n FROM "
            f"`{stack.project}.{pipeline_config.warehouse_dataset}.events` WHERE event_id IN "
            "UNNEST(@ids)",
            job_config=bigquery.QueryJobConfig(
                query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", valid_ids)]
            ),
        ).result()
    )
    assert found[0]["n"] == len(valid_ids)

    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.services import storage_client

    bq = BigQuery(
        client,
        storage_client(stack.project),
        stack.project,
        pipeline_config.warehouse_dataset,
        pipeline_config.ops_dataset,
    )
    assert set(Ledger(bq).balance(landed["batch_id"])) == {"land", "warehouse"}

    again = dag.test()
    assert {ti.task_id: ti.state for ti in again.get_task_instances()}["land"] == "skipped", (
        "nothing pending: the run skips"
    )

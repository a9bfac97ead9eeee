"""A wrong Kafka password in ``kafka_default``, as Airflow runs the ingest: the land task fails
within seconds naming the connection and what to check, before anything is claimed, landed or
committed; with the password put right, the next run lands everything that waited."""

from __future__ import annotations

import json
import os
import secrets
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from enrollment.clients.services import storage_client
from enrollment.core.layout import CLAIMS_PREFIX
from enrollment.ingest.pending import pending_names
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import produce

pytestmark = [pytest.mark.integration]


def _where_the_group_stands(stack, config, region) -> tuple[list[int], set[str], set[str]]:
    """The group's committed offsets, the region's claim records and the pending records."""
    consumer = Consumer(stack.kafka.consumer({"group.id": config.consumer_group}))
    try:
        parts = [TopicPartition(region.topic, p) for p in range(region.partitions)]
        committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
    finally:
        consumer.close()
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    claims = {b.name for b in bucket.list_blobs(prefix=f"{CLAIMS_PREFIX}{region.code}/")}
    return committed, claims, set(pending_names(bucket, config.consumer_group))


def test_a_wrong_kafka_password_fails_the_land_task_before_anything_is_claimed(
    stack, dagbag, airflow_db, pipeline_config, monkeypatch, caplog
):
    from airflow.utils.state import DagRunState, TaskInstanceState

    region = pipeline_config.region("APAC")
    messages = [m for m in Simulator(seed=2606).take(600) if m.topic == region.topic]
    assert messages
    produce(stack.kafka, messages)
    before = _where_the_group_stands(stack, pipeline_config, region)

    right = os.environ["AIRFLOW_CONN_KAFKA_DEFAULT"]
    wrong = json.loads(right)
    wrong["extra"]["sasl.password"] = "wrong-" + secrets.token_urlsafe(8)
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(wrong))
    dag = dagbag.dags[f"ingest_{region.code.lower()}"]
    # One try: dag.test() waits out retry delays (each try fails the same way).
    monkeypatch.setattr(dag.get_task("land"), "retries", 0)
    t0 = time.monotonic()
    run = dag.test()
    took = time.monotonic() - t0
    land = run.get_task_instance("land")
    assert run.state == DagRunState.FAILED and land.state == TaskInstanceState.FAILED
    assert took < 60, f"the run took {took:.0f} s"  # the check's own bound is 5 s (test: 30 s)
    said = caplog.text
    assert "connection 'kafka_default'" in said and "sasl.password" in said, said[-2000:]
    assert wrong["extra"]["sasl.password"] not in said
    assert stack.credentials["kafka_password"] not in said
    assert _where_the_group_stands(stack, pipeline_config, region) == before

    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", right)
    run = dag.test(run_conf={"max_batch": 1_000_000})
    assert run.state == DagRunState.SUCCESS
    committed, claims, _ = _where_the_group_stands(stack, pipeline_config, region)
    assert sum(committed) - sum(before[0]) >= len(messages) and claims > before[1]

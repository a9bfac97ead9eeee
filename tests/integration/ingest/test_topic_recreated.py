"""A region's topic deleted and created again under its name: its offsets start at 0 again. The
next claim sees the new topic id and starts the topic's next incarnation: its own chain, claim
records and batch ids, so nothing collides with the batches landed from the first topic, no
false gap or rewind is recorded, and every new message lands."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from enrollment.clients import objects
from enrollment.clients.kafka import topic_id
from enrollment.clients.services import storage_client
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim, read_chain
from enrollment.ingest.land import land
from enrollment.simulator.generator import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"


def _create(admin: AdminClient, topic: str, timeout_s: float = 60) -> None:
    """Created, retried while the broker still finishes deleting the old one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[
                topic
            ].result(timeout=30)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _produce(stack, topic: str, events: list[dict]) -> None:
    producer = Producer(stack.kafka.producer({"enable.idempotence": True}))
    for e in events:
        producer.produce(topic, key=e["partner_id"].encode(), value=json.dumps(e).encode())
    assert producer.flush(30) == 0


def test_a_topic_created_again_lands_as_a_new_incarnation_without_collisions(
    stack, isolated_pipeline
):
    config = isolated_pipeline
    events = [
        json.loads(m.value)
        for m in Simulator(seed=909).take(600)
        if m.topic == config.region(REGION).topic and m.expected["outcome"] == "valid"
    ]
    first, second = events[:12], events[12:20]
    admin = AdminClient(stack.kafka.admin())
    topic, group = f"recreated-{uuid.uuid4().hex[:8]}", f"recreated-{uuid.uuid4().hex[:6]}"
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    _create(admin, topic)
    try:
        _produce(stack, topic, first)
        old = claim(stack.kafka, group, REGION, topic, 2, bucket, max_batch=1000)
        landed_old = land(stack.kafka, old, bucket, Keyring.from_env())
        assert landed_old.valid == len(first) and old.incarnation == ""
        first_id = topic_id(stack.kafka, topic)
        assert read_chain(bucket, REGION, topic, group)["topic_id"] == first_id

        admin.delete_topics([topic])[topic].result(timeout=30)
        _create(admin, topic)
        _produce(stack, topic, second)
        new = claim(stack.kafka, group, REGION, topic, 2, bucket, max_batch=1000)
        assert new.incarnation == topic_id(stack.kafka, topic) != first_id
        assert new.batch_id != old.batch_id and new.claim_record != old.claim_record
        assert new.anomalies == (), "no false gap or rewind against the first topic's chain"
        assert {r.start for r in new.ranges} == {0} and new.offsets == len(second)
        landed_new = land(stack.kafka, new, bucket, Keyring.from_env())
        assert landed_new.valid == len(second)
        valid = objects.read_parquet(bucket.client, landed_new.valid_uri)
        assert sorted(valid.column("event_id").to_pylist()) == sorted(e["event_id"] for e in second)
        # The first topic's chain is as it was; the new incarnation has its own.
        assert read_chain(bucket, REGION, topic, group)["ends"] == {
            r.partition: r.end for r in old.ranges
        }
        assert read_chain(bucket, REGION, f"{topic}@{new.incarnation}", group)["ends"] == {
            r.partition: r.end for r in new.ranges
        }
        assert claim(stack.kafka, group, REGION, topic, 2, bucket, max_batch=1000) is None
    finally:
        admin.delete_topics([topic])

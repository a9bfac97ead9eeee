"""Kafka timestamps are whatever a producer set: on a topic whose future limit is raised, stamps
of 1970, of a far past and past year 9999 land, each with the land time (the claim's) in place of
its stamp and a ``clock`` anomaly for the ledger; plausible stamps stay as sent; the batch's span
(the warehouse cycle's window) stays near the land time; the events reach BigQuery."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from enrollment.clients import objects
from enrollment.clients.services import storage_client
from enrollment.core.batch import STAMP_MAX_AGE_MS, STAMP_MAX_LEAD_MS
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import anomaly_rows
from tests.integration.conftest import pipeline_warehouse

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"
DAY_MS = 86_400_000


@pytest.fixture
def permissive_topic(stack):
    """A topic that takes any stamp: Kafka 4's one-hour limit on future stamps raised."""
    admin = AdminClient(stack.kafka.admin())
    topic = f"stamps-{uuid.uuid4().hex[:8]}"
    limit = {"message.timestamp.after.max.ms": str(2**63 - 1)}
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1, config=limit)])[
        topic
    ].result(timeout=30)
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    config = next(iter(described.values())).result(timeout=30)
    assert config["message.timestamp.after.max.ms"].value == str(2**63 - 1)
    yield topic
    admin.delete_topics([topic])[topic].result(timeout=30)


def test_any_kafka_timestamp_lands_and_an_implausible_one_takes_the_land_time(
    stack, isolated_pipeline, permissive_topic
):
    config = isolated_pipeline
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    stamps = {
        "zero": 1,  # 1970 (librdkafka sends a stamp of 0 as "now"; a unit test takes 0 itself)
        "far past": 631_152_000_000,  # 1990
        "past year 9999": 253_402_300_800_000 + DAY_MS,  # 10000-01-02
        "a day ago": now_ms - DAY_MS,
        "now": now_ms,
    }
    events = [
        json.loads(m.value)
        for m in Simulator(seed=27).take(400)
        if m.topic == config.region(REGION).topic and m.expected["outcome"] == "valid"
    ][: len(stamps)]
    producer = Producer(stack.kafka.producer({"enable.idempotence": True}))
    sent = {}
    for (what, stamp), event in zip(stamps.items(), events, strict=True):
        producer.produce(
            permissive_topic,
            key=event["partner_id"].encode(),
            value=json.dumps(event).encode(),
            timestamp=stamp,
            partition=0,
        )
        sent[event["event_id"]] = what
    assert producer.flush(30) == 0

    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    group = f"stamps-{uuid.uuid4().hex[:6]}"
    manifest = claim(stack.kafka, group, REGION, permissive_topic, 2, bucket, max_batch=1000)
    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())
    assert landed.valid == len(stamps)
    claimed_ms = int(datetime.fromisoformat(manifest.claimed_at).timestamp() * 1000)

    valid = objects.read_parquet(bucket.client, landed.valid_uri)
    landed_stamps = dict(
        zip(
            valid.column("event_id").to_pylist(),
            (int(t.timestamp() * 1000) for t in valid.column("kafka_timestamp").to_pylist()),
            strict=True,
        )
    )
    assert {sent[e]: ms for e, ms in landed_stamps.items()} == {
        "zero": claimed_ms,
        "far past": claimed_ms,
        "past year 9999": claimed_ms,
        "a day ago": stamps["a day ago"],
        "now": stamps["now"],
    }
    # The cycle's window follows the batch's span: near the land time, not 1970 to year 10000.
    assert claimed_ms - STAMP_MAX_AGE_MS <= landed.first_kafka_ms <= landed.last_kafka_ms
    assert landed.last_kafka_ms <= claimed_ms + STAMP_MAX_LEAD_MS
    clock = [a for a in landed.anomalies if a["kind"] == "clock"]
    assert [(a["partition"], a["start"], a["end"]) for a in clock] == [(0, 0, 3)]
    assert "3 message(s)" in clock[0]["detail"]
    (row,) = [r for r in anomaly_rows(landed) if r["stage"] == "clock"]
    assert row["ok"] and row["offsets_in"] == 0

    w = pipeline_warehouse(stack, config)
    merge_batch(w, landed)
    found = w.run(
        f"SELECT event_id, kafka_timestamp FROM {w.table('events')} "
        f"WHERE batch_id = '{landed.batch_id}'"
    )
    assert {
        r["event_id"]: int(r["kafka_timestamp"].timestamp() * 1000) for r in found
    } == landed_stamps


def test_a_record_stamped_in_the_future_is_due_at_once_not_never(stack, permissive_topic):
    """One record below ``min_records``, stamped past year 9999: by its stamp it would never
    come of age and the backlog trigger would never wake the region's land."""
    from enrollment.ingest.backlog import measure, should_fire

    producer = Producer(stack.kafka.producer({"enable.idempotence": True}))
    producer.produce(permissive_topic, value=b"{}", timestamp=253_402_300_800_000, partition=0)
    assert producer.flush(30) == 0
    backlog = measure(stack.kafka, f"stamps-{uuid.uuid4().hex[:6]}", permissive_topic, 2)
    assert backlog.pending == 1
    assert should_fire(backlog, min_records=1000, max_age_s=10)

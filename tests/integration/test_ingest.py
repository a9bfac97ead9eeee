"""Claim → land → warehouse on the real stack, for one region's topic: BigQuery holds exactly the
expected rows, quarantine exactly the expected reasons, the ledger balances, the offsets are
committed to the end, and running every step again changes nothing."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.cloud import bigquery

from enrollment.batches import claim, land
from enrollment.services import bigquery_client, storage_client
from enrollment.simulator.generator import FaultRates, Simulator
from enrollment.warehouse import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


@pytest.fixture
def region_topic(stack):
    topic = f"test.ingest.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    yield topic
    admin.delete_topics([topic])


@pytest.fixture
def warehouse(stack, pipeline_config):
    client = bigquery_client(stack.project)
    suffix = uuid.uuid4().hex[:8]
    datasets = (f"test_wh_{suffix}", f"test_ops_{suffix}")
    for name in datasets:
        client.create_dataset(bigquery.Dataset(f"{stack.project}.{name}"))
    yield Warehouse(client=client, storage=storage_client(stack.project), project=stack.project, dataset=datasets[0], ops_dataset=datasets[1])
    for name in datasets:
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def produce(bootstrap: str, topic: str, messages) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "enable.idempotence": True})
    for m in messages:
        producer.produce(topic, key=m.key, value=m.value)
    assert producer.flush(30) == 0


def test_a_batch_with_faults_lands_and_merges_exactly(stack, pipeline_config, region_topic, warehouse):
    group = f"test-pipeline-{uuid.uuid4().hex[:6]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    messages = Simulator(seed=404, faults=FaultRates.mix(0.08), initial_partners=30).take(1500)
    produce(stack.kafka_bootstrap, region_topic, messages)

    manifest = claim(stack.kafka_bootstrap, group, "EMEA", region_topic, 2, bucket, max_batch=100_000)
    assert manifest is not None and manifest.offsets == len(messages)
    assert claim(stack.kafka_bootstrap, group, "EMEA", region_topic, 2, bucket, max_batch=100_000) == manifest, "an unfinished batch is claimed again as it was"

    landed = land(stack.kafka_bootstrap, manifest, bucket)
    expected_valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    expected_quarantine = sorted(",".join(m.expected["reasons"]) for m in messages if m.expected["outcome"] == "quarantined")
    assert landed.valid == len(expected_valid)
    assert landed.valid + landed.quarantined + landed.duplicates == len(messages)

    # The group's offsets are committed to the end, and nothing is pending any more.
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    committed = consumer.committed([TopicPartition(region_topic, p) for p in (0, 1)], timeout=10)
    ends = [consumer.get_watermark_offsets(TopicPartition(region_topic, p), timeout=10)[1] for p in (0, 1)]
    consumer.close()
    assert [tp.offset for tp in committed] == ends
    assert claim(stack.kafka_bootstrap, group, "EMEA", region_topic, 2, bucket, max_batch=100_000) is None

    counts = warehouse.merge_batch(landed)
    warehouse.record(landed, "warehouse", counts["events"], counts["seconds"])
    events = {r["event_id"] for r in warehouse.run(f"SELECT event_id FROM {warehouse.table('events')}")}
    assert events == expected_valid
    reasons = sorted(r["reasons"] for r in warehouse.run(f"SELECT reasons FROM {warehouse.table('quarantine')}"))
    assert reasons == expected_quarantine
    assert warehouse.balance(landed.batch_id)["warehouse"]["offsets_in"] == len(messages)

    # Current state: one row per partner with partner events, at its newest partner version.
    partner_versions = {}
    for m in messages:
        e = m.expected
        if e["outcome"] == "valid" and e["event_type"] in ("partner.enrolled", "partner.updated", "partner.terminated"):
            partner_versions[e["partner_id"]] = max(partner_versions.get(e["partner_id"], 0), e["partner_version"])
    rows = {r["partner_id"]: r["partner_version"] for r in warehouse.run(f"SELECT partner_id, partner_version FROM {warehouse.table('partners')}")}
    assert rows == partner_versions

    # Everything again: nothing changes.
    snapshot = warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0]["n"], warehouse.run(f"SELECT TO_JSON_STRING(t) AS j FROM {warehouse.table('partners')} t ORDER BY partner_id")
    again = land(stack.kafka_bootstrap, manifest, bucket)
    assert again.as_dict() | {"seconds": 0} == landed.as_dict() | {"seconds": 0}
    warehouse.merge_batch(again)
    assert (warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0]["n"], warehouse.run(f"SELECT TO_JSON_STRING(t) AS j FROM {warehouse.table('partners')} t ORDER BY partner_id")) == snapshot

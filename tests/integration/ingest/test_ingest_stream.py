"""The stream side of a region on the real broker: partitions added on the cluster are ingested,
offsets that hold no message (transaction markers) never stall a batch, a retention gap and a
rewound group are recorded in the ledger (and a rewind is not ingested again), and a batch past
its byte budget shrinks its claim to what it read."""

from __future__ import annotations

import io
import logging
import time
import uuid

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import storage_client
from enrollment.core.batch import Manifest
from enrollment.core.errors import GateError
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import committed_offsets, produce

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def ends(kafka: KafkaSettings, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(kafka.consumer({"group.id": "test-watermarks"}))
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def events(seed: int, n: int):
    return Simulator(seed=seed, faults=FaultRates.mix(0.0), initial_partners=20).take(n)


def landed_partitions(bucket, manifest: Manifest) -> dict[int, int]:
    table = pq.read_table(
        io.BytesIO(bucket.blob(manifest.valid_object).download_as_bytes()),
        columns=["kafka_partition"],
    )
    out: dict[int, int] = {}
    for p in table.column("kafka_partition").to_pylist():
        out[p] = out.get(p, 0) + 1
    return out


def new_group() -> str:
    return f"test-stream-{uuid.uuid4().hex[:8]}"


def test_partitions_added_on_the_cluster_are_claimed_and_landed(
    stack, pipeline_config, region_topic, caplog
):
    kafka, group = stack.kafka, new_group()
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    produce(kafka, events(801, 200), region_topic)
    first = claim(kafka, group, "AMER", region_topic, 2, bucket, max_batch=100_000)
    land(kafka, first, bucket, Keyring.from_env())

    admin = AdminClient(kafka.admin())
    admin.create_partitions([NewPartitions(region_topic, 4)])[region_topic].result(30)
    producer = Producer(kafka.producer())
    for i, m in enumerate(events(802, 120)):
        producer.produce(
            region_topic, key=m.key, value=m.value, partition=i % 4
        )  # half of them to the new partitions
    assert producer.flush(30) == 0

    with caplog.at_level(logging.WARNING, logger="enrollment.batches"):
        second = claim(
            kafka, group, "AMER", region_topic, 2, bucket, max_batch=100_000
        )  # the configuration still says 2
    assert {r.partition for r in second.ranges} == {0, 1, 2, 3}
    assert "has 4 partitions on the cluster, the configuration says 2" in caplog.text
    landed = land(kafka, second, bucket, Keyring.from_env())
    assert (
        landed.offsets
        == 120
        == landed.valid + landed.quarantined + landed.duplicates + landed.skipped
    )
    assert (
        landed_partitions(bucket, second).get(2) == 30
        and landed_partitions(bucket, second).get(3) == 30
    )
    assert committed_offsets(kafka, group, region_topic, 4) == ends(kafka, region_topic, 4), (
        "every partition committed to its end"
    )
    assert claim(kafka, group, "AMER", region_topic, 2, bucket, max_batch=100_000) is None


def test_transaction_markers_never_stall_a_batch_and_the_ledger_balances(
    stack, pipeline_config, region_topic, warehouse
):
    kafka, group = stack.kafka, new_group()
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    producer = Producer(kafka.producer({"transactional.id": f"test-tx-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(30)
    messages = events(803, 160)
    # Four committed transactions of 30 and an aborted one of 10, each over both partitions: each
    # transaction leaves a marker per partition; the aborted messages are never delivered.
    for lo, hi, commit in [
        (0, 30, True),
        (30, 60, True),
        (60, 70, False),
        (70, 100, True),
        (100, 130, True),
    ]:
        producer.begin_transaction()
        for i in range(lo, hi):
            producer.produce(
                region_topic, key=messages[i].key, value=messages[i].value, partition=i % 2
            )
        # On the broker before the abort (an abort purges what is still queued here).
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    delivered = [m for i, m in enumerate(messages[:130]) if not 60 <= i < 70]
    deadline = time.monotonic() + 30
    while sum(ends(kafka, region_topic, 2)) < 130 + 5 * 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the coordinator writes the last markers after the commit returns
    offsets = sum(ends(kafka, region_topic, 2))
    assert offsets == 140

    manifest = claim(kafka, group, "EMEA", region_topic, 2, bucket, max_batch=100_000)
    t0 = time.monotonic()
    landed = land(kafka, manifest, bucket, Keyring.from_env())
    assert time.monotonic() - t0 < 60, (
        "the read ends at the partitions' positions, never waits for a marker"
    )
    assert landed.offsets == offsets and landed.skipped == offsets - len(delivered) == 20
    assert landed.valid + landed.quarantined + landed.duplicates == len(delivered)
    assert committed_offsets(kafka, group, region_topic, 2) == ends(kafka, region_topic, 2)

    merge_batch(warehouse, landed)
    rows = Ledger(warehouse).balance(
        landed.batch_id
    )  # raises unless offsets = valid + quarantined + duplicates + skipped
    assert (
        rows["land"]["skipped"] == rows["warehouse"]["skipped"] == 20
        and rows["land"]["offsets_in"] == offsets
    )
    held = warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0]["n"]
    assert held == landed.valid


def test_a_retention_gap_is_a_ledger_row_and_the_region_goes_on(
    stack, pipeline_config, region_topic, warehouse
):
    kafka, group = stack.kafka, new_group()
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    produce(kafka, events(804, 100), region_topic)
    merge_batch(
        warehouse,
        land(
            kafka,
            claim(kafka, group, "LATAM", region_topic, 2, bucket, max_batch=100_000),
            bucket,
            Keyring.from_env(),
        ),
    )
    landed_to = committed_offsets(kafka, group, region_topic, 2)

    produce(kafka, events(805, 100), region_topic)
    # Retention deletes 7 records of partition 0 that the group has not read yet.
    admin = AdminClient(kafka.admin())
    for future in admin.delete_records(
        [TopicPartition(region_topic, 0, landed_to[0] + 7)]
    ).values():
        future.result(30)

    manifest = claim(kafka, group, "LATAM", region_topic, 2, bucket, max_batch=100_000)
    assert [(a["kind"], a["partition"], a["start"], a["end"]) for a in manifest.anomalies] == [
        ("gap", 0, landed_to[0], landed_to[0] + 7)
    ]
    assert manifest.ranges[0].start == landed_to[0] + 7
    landed = land(kafka, manifest, bucket, Keyring.from_env())
    assert landed.offsets == sum(ends(kafka, region_topic, 2)) - sum(landed_to) - 7
    assert committed_offsets(kafka, group, region_topic, 2) == ends(kafka, region_topic, 2)

    merge_batch(warehouse, landed)
    gap = warehouse.run(
        f"SELECT * FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = '{landed.batch_id}' "
        "AND stage = 'gap'"
    )
    assert len(gap) == 1 and not gap[0]["ok"] and gap[0]["offsets_in"] == gap[0]["skipped"] == 7
    assert (
        f"partition 0: offsets {landed_to[0]}-{landed_to[0] + 7} (7) deleted before they were read"
        in gap[0]["detail"]
    )
    with pytest.raises(GateError, match="stage gap"):
        Ledger(warehouse).balance(landed.batch_id)  # a loss is never a balanced ledger
    # The next batch is clean: the gap was recorded once.
    produce(kafka, events(806, 20), region_topic)
    assert claim(kafka, group, "LATAM", region_topic, 2, bucket, max_batch=100_000).anomalies == ()


def test_a_rewound_group_is_recorded_and_not_ingested_again(
    stack, pipeline_config, region_topic, warehouse
):
    kafka, group = stack.kafka, new_group()
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    batches = []
    for seed, n in ((807, 100), (808, 50)):
        produce(kafka, events(seed, n), region_topic)
        batches.append(
            land(
                kafka,
                claim(kafka, group, "APAC", region_topic, 2, bucket, max_batch=100_000),
                bucket,
                Keyring.from_env(),
            )
        )
        merge_batch(warehouse, batches[-1])
    landed_to = committed_offsets(kafka, group, region_topic, 2)

    # The group's offsets expired: it starts again from the beginning.
    consumer = Consumer(kafka.consumer({"group.id": group, "enable.auto.commit": False}))
    consumer.commit(
        offsets=[TopicPartition(region_topic, p, 0) for p in (0, 1)], asynchronous=False
    )
    consumer.close()
    produce(kafka, events(809, 30), region_topic)

    manifest = claim(kafka, group, "APAC", region_topic, 2, bucket, max_batch=100_000)
    assert [r.start for r in manifest.ranges] == landed_to, (
        "the claim starts where the landed batches end"
    )
    assert sorted(
        (a["kind"], a["partition"], a["start"], a["end"]) for a in manifest.anomalies
    ) == [("rewind", p, 0, landed_to[p]) for p in (0, 1) if landed_to[p]]
    landed = land(kafka, manifest, bucket, Keyring.from_env())
    assert landed.offsets == 30
    assert committed_offsets(kafka, group, region_topic, 2) == ends(kafka, region_topic, 2)

    merge_batch(warehouse, landed)
    rewind = Ledger(warehouse).balance(landed.batch_id)["rewind"]
    assert rewind["ok"] and rewind["offsets_in"] == rewind["duplicates"] == sum(landed_to) == 150
    counts = warehouse.run(
        f"SELECT event_id, COUNT(*) AS n FROM {warehouse.table('events')} GROUP BY event_id"
    )
    assert len(counts) == sum(b.valid for b in batches) + landed.valid and all(
        r["n"] == 1 for r in counts
    )


def test_a_batch_past_its_byte_budget_shrinks_its_claim(stack, pipeline_config, region_topic):
    kafka, group = stack.kafka, new_group()
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    messages = events(810, 300)
    produce(kafka, messages, region_topic)
    budget = sum(len(m.value) + len(m.key or b"") for m in messages[:60])

    manifest = claim(kafka, group, "EMEA", region_topic, 2, bucket, max_batch=100_000)
    assert manifest.offsets == 300
    first = land(kafka, manifest, bucket, Keyring.from_env(), max_bytes=budget)
    assert 0 < first.offsets < 300 and first.batch_id != manifest.batch_id
    recorded = Manifest.from_json(bucket.blob(manifest.claim_record).download_as_text())
    assert recorded.batch_id == first.batch_id and recorded.offsets == first.offsets, (
        "the claim record holds the shrunk range"
    )
    assert sum(committed_offsets(kafka, group, region_topic, 2)) == first.offsets

    landed, total = [first], first.offsets
    while (
        nxt := claim(kafka, group, "EMEA", region_topic, 2, bucket, max_batch=100_000)
    ) is not None:
        landed.append(land(kafka, nxt, bucket, Keyring.from_env(), max_bytes=budget))
        total += landed[-1].offsets
        assert len(landed) < 20
    assert total == 300 and len(landed) >= 4
    assert all(b.offsets == b.valid + b.quarantined + b.duplicates + b.skipped for b in landed)
    assert committed_offsets(kafka, group, region_topic, 2) == ends(kafka, region_topic, 2)

"""Kafka: produce keyed events, consume them in a consumer group, commit, read the offsets back."""

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_region_topics_exist_with_their_partitions(stack, pipeline_config):
    topics = AdminClient(stack.kafka.admin()).list_topics(timeout=10).topics
    for region in pipeline_config.regions:
        assert region.topic in topics, region.code
        assert len(topics[region.topic].partitions) == region.partitions


def test_produce_consume_with_group_and_committed_offsets(stack):
    topic, group = f"test.smoke.{uuid.uuid4().hex[:8]}", f"test-group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(stack.kafka.admin())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    try:
        producer = Producer(stack.kafka.producer({"enable.idempotence": True}))
        sent = {f"partner-{i}".encode(): f"event-{i}".encode() for i in range(50)}
        for key, value in sent.items():
            producer.produce(topic, key=key, value=value)
        assert producer.flush(30) == 0

        consumer = Consumer(
            stack.kafka.consumer(
                {"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}
            )
        )
        consumer.subscribe([topic])
        received = {}
        for _ in range(200):
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                assert msg.error() is None, msg.error()
                received[msg.key()] = msg.value()
            if len(received) == len(sent):
                break
        assert received == sent
        consumer.commit(asynchronous=False)
        consumer.close()

        # Read the committed offsets back with a fresh consumer of the same group.
        check = Consumer(stack.kafka.consumer({"group.id": group, "enable.auto.commit": False}))
        committed = check.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        ends = [
            check.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)
        ]
        check.close()
        assert [tp.offset for tp in committed] == ends
        assert sum(ends) == len(sent)
    finally:
        admin.delete_topics([topic])

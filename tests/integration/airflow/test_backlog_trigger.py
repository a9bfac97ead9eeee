"""The backlog trigger against the real broker: it fires on pending records, not again for the
same work, again once the group has committed and new records wait long enough; and the running
Airflow's triggerer wakes a region's ingest DAG through its asset watcher."""

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from enrollment_airflow.triggers import BacklogTrigger
from tests.integration.airflow.triggering import new_runs, next_event, run_trigger

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def _produce(kafka, topic, n):
    producer = Producer(kafka.producer())
    for i in range(n):
        producer.produce(topic, key=f"k{i}".encode(), value=b"{}")
    assert producer.flush(10) == 0


def test_the_backlog_reads_a_timestamp_only_when_the_count_does_not_decide(stack):
    from enrollment.ingest.backlog import measure

    topic, group = f"test.backlog.{uuid.uuid4().hex[:8]}", f"test-backlog-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(stack.kafka.admin())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    try:
        before = time.time()
        _produce(stack.kafka, topic, 6)
        aged = measure(stack.kafka, group, topic, 2, enough=100)
        assert (
            aged.pending == 6
            and aged.oldest_timestamp_ms is not None
            and aged.oldest_timestamp_ms >= int(before * 1000) - 1000
        )
        assert {p for p, _ in aged.oldest_by_partition} == {
            p for p, start, end in aged.ranges if end > start
        }
        counted = measure(stack.kafka, group, topic, 2, enough=5)
        assert counted.pending == 6 and counted.oldest_timestamp_ms is None, (
            "enough records pending: no record fetched"
        )
    finally:
        admin.delete_topics([topic])


def test_one_watch_follows_the_backlog_across_questions(stack):
    """The trigger's watch keeps its Kafka clients between polls: each answer is still today's
    (commits, new records, the count deciding or not), and it answers again once closed."""
    from enrollment.ingest.backlog import BacklogWatch

    topic, group = f"test.backlog.{uuid.uuid4().hex[:8]}", f"test-backlog-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(stack.kafka.admin())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    watch = BacklogWatch(stack.kafka, group, topic, 2)
    try:
        assert watch.measure(enough=100).pending == 0
        _produce(stack.kafka, topic, 8)
        first = watch.measure(enough=100)
        assert first.pending == 8 and {p for p, _ in first.oldest_by_partition} == {
            p for p, start, end in first.ranges if end > start
        }
        assert watch.measure(enough=5).oldest_timestamp_ms is None, "the count decides"
        # The group lands partition 0: only partition 1 is pending and timed.
        ends = {p: end for p, _, end in first.ranges}
        consumer = Consumer(stack.kafka.consumer({"group.id": group}))
        consumer.commit(offsets=[TopicPartition(topic, 0, ends[0])], asynchronous=False)
        consumer.close()
        landed = watch.measure(enough=100)
        by_partition = {p: (start, end) for p, start, end in landed.ranges}
        assert landed.pending == ends[1] and by_partition[0] == (ends[0], ends[0])
        assert {p for p, _ in landed.oldest_by_partition} == ({1} if ends[1] else set())
        # A newer record on partition 0: its own timestamp, not one remembered from before.
        time.sleep(1.1)
        after = time.time()
        producer = Producer(stack.kafka.producer())
        producer.produce(topic, value=b"{}", partition=0)
        assert producer.flush(10) == 0
        newer = dict(watch.measure(enough=100).oldest_by_partition)
        assert newer[0] >= int(after * 1000) - 50, newer
        watch.close()
        assert watch.measure(enough=100).pending == ends[1] + 1, "a closed watch asks afresh"
    finally:
        watch.close()
        admin.delete_topics([topic])


def test_trigger_fires_once_per_piece_of_work(stack):
    topic, group = f"test.backlog.{uuid.uuid4().hex[:8]}", f"test-backlog-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(stack.kafka.admin())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    try:
        _produce(stack.kafka, topic, 10)
        trigger = BacklogTrigger(
            region="TEST",
            topic=topic,
            partitions=2,
            group=group,
            min_records=10,
            max_age_s=2.0,
            poll_s=0.2,
        )

        async def scenario():
            events: asyncio.Queue = asyncio.Queue()
            pump = asyncio.create_task(run_trigger(trigger, events))
            first = await next_event(events, 15)
            assert first is not None and first.payload["pending"] == 10
            assert await next_event(events, 1.0) is None, "the same work fires once"
            # The land stage commits the batch; one new record then waits past max_age_s.
            consumer = Consumer(stack.kafka.consumer({"group.id": group}))
            ends = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in (0, 1)
            ]
            consumer.commit(
                offsets=[TopicPartition(topic, p, e) for p, e in zip((0, 1), ends, strict=True)],
                asynchronous=False,
            )
            consumer.close()
            _produce(stack.kafka, topic, 1)
            t0 = time.monotonic()
            second = await next_event(events, 15)
            assert second is not None and second.payload["pending"] == 1
            assert time.monotonic() - t0 >= 1.0 and second.payload["oldest_age_s"] >= 2.0
            pump.cancel()

        asyncio.run(scenario())
    finally:
        admin.delete_topics([topic])


def test_a_missing_connection_fires_a_clear_event_and_the_trigger_keeps_running(stack):
    trigger = BacklogTrigger(
        region="TEST",
        topic="test.backlog.none",
        partitions=2,
        group="test-backlog-none",
        min_records=1,
        max_age_s=1.0,
        kafka_conn_id="no_such_kafka_connection",
        poll_s=0.2,
    )

    async def scenario():
        events: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(run_trigger(trigger, events))
        first = await next_event(events, 15)
        assert (
            first is not None
            and "no_such_kafka_connection" in first.payload["error"]
            and first.payload["region"] == "TEST"
        )
        assert await next_event(events, 6.0) is None, "the same error fires once"
        assert not pump.done(), "the trigger keeps looking for its connection"
        pump.cancel()

    asyncio.run(scenario())


def test_running_airflow_wakes_the_ingest_dag_through_the_backlog_watcher(stack, pipeline_config):
    from stack.airflow_client import AirflowClient

    client = AirflowClient(stack)
    client.wait_for_dag("ingest_apac", timeout_s=120)
    before = {r["dag_run_id"] for r in new_runs(client, "ingest_apac", set())}
    client.http.patch("/dags/ingest_apac", json={"is_paused": False}).raise_for_status()
    try:
        _produce(
            stack.kafka, pipeline_config.region("APAC").topic, 5
        )  # not JSON events: quarantined, still accounted
        deadline, run = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            runs = new_runs(client, "ingest_apac", before)
            done = [r for r in runs if r["state"] in ("success", "failed")]
            if done:
                run = done[0]
                break
            time.sleep(2)
        assert run is not None, "no run of ingest_apac was triggered by the backlog"
        assert run["run_type"] == "asset_triggered" and run["state"] == "success", run
    finally:
        client.http.patch("/dags/ingest_apac", json={"is_paused": True})

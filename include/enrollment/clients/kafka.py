"""Kafka, as the pipeline reads it: a consumer of the pipeline's group that is assigned ranges
(never subscribed), the topic's partitions as the cluster reports them, what is pending per
partition, and committing a landed range. Offsets and metadata only: no record is decoded here,
and nothing here imports pyarrow or pandas (the backlog trigger imports this in the triggerer)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from enrollment.core.batch import Manifest

if TYPE_CHECKING:
    from confluent_kafka import Consumer

log = logging.getLogger(__name__)


def group_consumer(bootstrap: str, group: str) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )


def _retriable(exc: BaseException) -> bool:
    """Kafka errors that pass by themselves: a coordinator moving or still loading (a fresh or
    restarted broker answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a few seconds)."""
    from confluent_kafka import KafkaException

    return (
        isinstance(exc, KafkaException)
        and bool(exc.args)
        and hasattr(exc.args[0], "retriable")
        and exc.args[0].retriable()
    )


_kafka_retry = retry(
    retry=retry_if_exception(_retriable),
    wait=wait_exponential(multiplier=0.5, max=5),
    stop=stop_after_delay(60),
    reraise=True,
)


_drift_warned: set[tuple[str, int, int]] = set()


def topic_partitions(
    consumer: Consumer, topic: str, expected: int | None = None, timeout: float = 10.0
) -> list[int]:
    """The topic's partitions as the cluster reports them (metadata). When they are not the
    ``expected`` (configured) count it warns, once per process and count: every partition is read
    all the same, and the configuration should be updated."""
    from confluent_kafka import KafkaException

    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise (
            KafkaException(metadata.error)
            if metadata is not None
            else RuntimeError(f"kafka: topic {topic} not in the cluster's metadata")
        )
    partitions = sorted(metadata.partitions)
    if (
        expected is not None
        and len(partitions) != expected
        and (topic, expected, len(partitions)) not in _drift_warned
    ):
        _drift_warned.add((topic, expected, len(partitions)))
        log.warning(
            "kafka: topic %s has %d partitions on the cluster, the configuration says %d: "
            "reading all %d; update `partitions`",
            topic,
            len(partitions),
            expected,
            len(partitions),
        )
    return partitions


def partition_drift(topic: str, expected: int, actual: int) -> str | None:
    """An alert's words when the cluster's partitions are not the configured count, else None."""
    if actual == expected:
        return None
    return (
        f"topic {topic} has {actual} partitions on the cluster, the configuration says {expected} "
        f"(all {actual} are ingested; update `partitions` in the pipeline configuration)"
    )


@_kafka_retry
def pending_ranges(
    bootstrap: str, group: str, topic: str, partitions: int | None = None, timeout: float = 10.0
) -> list[tuple[int, int, int]]:
    """(partition, committed or earliest offset, end offset) for every partition of the topic on
    the cluster; ``partitions`` is the configured count, only compared. Reads offsets only."""
    consumer = group_consumer(bootstrap, group)
    try:
        return ranges_of(consumer, topic, partitions, timeout)
    finally:
        consumer.close()


def ranges_of(
    consumer: Consumer, topic: str, partitions: int | None = None, timeout: float = 10.0
) -> list[tuple[int, int, int]]:
    """``pending_ranges`` over a consumer of the group the caller keeps (and reuses)."""
    from confluent_kafka import TopicPartition

    ids = topic_partitions(consumer, topic, partitions, timeout)
    committed = consumer.committed([TopicPartition(topic, p) for p in ids], timeout=timeout)
    out: list[tuple[int, int, int]] = []
    for tp in committed:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=timeout
        )
        start = tp.offset if tp.offset >= 0 else low
        out.append((tp.partition, max(start, low), high))
    return out


@_kafka_retry
def commit_range(bootstrap: str, manifest: Manifest) -> None:
    """Moves the group past the batch; called only once the batch is durable."""
    from confluent_kafka import TopicPartition

    consumer = group_consumer(bootstrap, manifest.group)
    try:
        # Every partition, the empty ones too: after a rewind the group's offset moves back to
        # the landed end.
        consumer.commit(
            offsets=[TopicPartition(manifest.topic, r.partition, r.end) for r in manifest.ranges],
            asynchronous=False,
        )
    finally:
        consumer.close()

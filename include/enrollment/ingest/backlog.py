"""How far the pipeline's consumer group is behind a topic: offsets and timestamps only.

The backlog trigger asks this every second, over one ``BacklogWatch`` (two Kafka clients kept
for the trigger's life); it reads offsets, at most one record batch per lagging partition for its
timestamp (none once enough records are pending), and never commits."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enrollment.clients.kafka import KafkaSettings, group_consumer, pending_ranges, ranges_of
from enrollment.core.batch import STAMP_MAX_AGE_MS, implausible_stamp

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from enrollment.config import Region


@dataclass(frozen=True)
class Backlog:
    topic: str
    ranges: tuple[tuple[int, int, int], ...]  # (partition, committed or earliest, end)
    oldest_timestamp_ms: int | None  # Kafka timestamp of the oldest pending record
    oldest_by_partition: tuple[
        tuple[int, int], ...
    ] = ()  # (partition, its oldest pending record's timestamp ms)

    @property
    def pending(self) -> int:
        return sum(end - start for _, start, end in self.ranges)

    @property
    def fingerprint(self) -> str:
        """Identifies the work: changes when the group commits (a batch landed)."""
        return ",".join(f"{p}:{start}" for p, start, _ in self.ranges)

    def oldest_age_s(self, now: float | None = None) -> float:
        if self.oldest_timestamp_ms is None:
            return 0.0
        return max(0.0, (now if now is not None else time.time()) - self.oldest_timestamp_ms / 1000)


class BacklogWatch:
    """One topic's backlog, measured again and again over the same two Kafka clients: the backlog
    trigger asks every second, and clients made and closed per question cost 2–3 times the CPU
    (bench/backlog.py) and the broker a group-coordinator lookup each time. A client that fails
    is dropped and made again at the next question (a restarted broker, a moved coordinator)."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str, partitions: int | None = None):
        self.kafka, self.group = kafka, group
        self.topic, self.partitions = topic, partitions
        self._offsets: Consumer | None = None  # committed offsets and watermarks
        self._peek: Consumer | None = None  # the first record of a lagging partition

    def measure(self, enough: int | None = None) -> Backlog:
        """Offsets per partition — every partition the cluster reports; ``partitions`` is the
        configured count, only compared (a warning when it differs) — and the timestamp of the
        oldest pending record of each lagging partition — unless ``enough`` records are pending:
        then the count decides and no record is fetched at all (at the peak it always does)."""
        try:
            if self._offsets is None:
                self._offsets = group_consumer(self.kafka, self.group)
            ranges = tuple(ranges_of(self._offsets, self.topic, self.partitions))
            behind = [(p, start) for p, start, end in ranges if end > start]
            if enough is not None and sum(end - start for _, start, end in ranges) >= enough:
                behind = []
            by_partition = self._first_timestamps(behind) if behind else {}
        except Exception:
            self.close()
            raise
        # An implausible stamp (core.batch.implausible_stamp: far ahead, or before retention)
        # says nothing of the record's age: it counts as old as a plausible one can be, so the
        # record is due now (a stamp in the future would otherwise never come of age).
        now_ms = int(time.time() * 1000)
        by_partition = {
            p: now_ms - STAMP_MAX_AGE_MS if implausible_stamp(ms, now_ms) else ms
            for p, ms in by_partition.items()
        }
        return Backlog(
            topic=self.topic,
            ranges=ranges,
            oldest_timestamp_ms=min(by_partition.values(), default=None),
            oldest_by_partition=tuple(sorted(by_partition.items())),
        )

    def _first_timestamps(self, behind: list[tuple[int, int]]) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        if self._peek is None:
            # The smallest fetch limits librdkafka accepts: the broker still answers with the first
            # record batch of a partition, and nothing more (the pipeline's consumer pulls 16 MB).
            self._peek = Consumer(
                self.kafka.consumer(
                    {
                        "group.id": self.group,
                        "enable.auto.commit": False,
                        "enable.partition.eof": False,
                        "message.max.bytes": 1000,
                        "fetch.max.bytes": 1000,
                        "max.partition.fetch.bytes": 1,
                        "fetch.wait.max.ms": 100,
                    }
                )
            )
        consumer = self._peek
        assigned = [TopicPartition(self.topic, p, start) for p, start in behind]
        by_partition: dict[int, int] = {}
        consumer.assign(assigned)
        try:
            deadline = time.monotonic() + 5
            while len(by_partition) < len(behind) and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=len(behind), timeout=0.5):
                    partition = msg.partition()  # None only on an error event
                    if (
                        msg.error() is None
                        and partition is not None
                        and partition not in by_partition
                    ):
                        by_partition[partition] = msg.timestamp()[1]
                        consumer.pause([TopicPartition(self.topic, partition)])
        finally:
            # The next question assigns afresh: nothing paused or buffered carries over.
            consumer.resume(assigned)
            consumer.unassign()
        return by_partition

    def close(self) -> None:
        for client in (self._offsets, self._peek):
            if client is not None:
                client.close()
        self._offsets = self._peek = None


def measure(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    partitions: int | None = None,
    enough: int | None = None,
) -> Backlog:
    """One question (``BacklogWatch.measure``) on clients made and closed for it."""
    watch = BacklogWatch(kafka, group, topic, partitions)
    try:
        return watch.measure(enough)
    finally:
        watch.close()


def total_pending(kafka: KafkaSettings, group: str, regions: Iterable[Region]) -> int:
    """Records the group has still to land across regions (offsets only, no timestamps)."""
    return sum(
        end - start
        for r in regions
        for _, start, end in pending_ranges(kafka, group, r.topic, r.partitions)
    )


def should_fire(
    backlog: Backlog, min_records: int, max_age_s: float, now: float | None = None
) -> bool:
    """A batch is worth it when enough is pending, or when what is pending has waited long
    enough."""
    return backlog.pending > 0 and (
        backlog.pending >= min_records or backlog.oldest_age_s(now) >= max_age_s
    )

"""How far the pipeline's consumer group is behind a topic: offsets and timestamps only.

The backlog trigger asks this every second; it reads offsets, at most one record batch per
lagging partition for its timestamp (none once enough records are pending), and never commits."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enrollment.clients.kafka import pending_ranges

if TYPE_CHECKING:
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


def measure(
    bootstrap: str, group: str, topic: str, partitions: int | None = None, enough: int | None = None
) -> Backlog:
    """Offsets per partition — every partition the cluster reports; ``partitions`` is the
    configured count, only compared (a warning when it differs) — and the timestamp of the oldest
    pending record of each lagging partition — unless ``enough`` records are pending: then the
    count decides and no record is fetched at all (the backlog trigger asks every second; at the
    peak the count always decides)."""
    from confluent_kafka import Consumer, TopicPartition

    ranges = tuple(pending_ranges(bootstrap, group, topic, partitions))
    oldest: int | None = None
    by_partition: dict[int, int] = {}
    behind = [(p, start) for p, start, end in ranges if end > start]
    if enough is not None and sum(end - start for _, start, end in ranges) >= enough:
        behind = []
    if behind:
        # The smallest fetch limits librdkafka accepts: the broker still answers with the first
        # record batch of a partition, and nothing more (the pipeline's consumer pulls up to 16 MB).
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "message.max.bytes": 1000,
                "fetch.max.bytes": 1000,
                "max.partition.fetch.bytes": 1,
                "fetch.wait.max.ms": 100,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, p, start) for p, start in behind])
            seen: set[int] = set()
            deadline = time.monotonic() + 5
            while len(seen) < len(behind) and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=len(behind), timeout=0.5):
                    partition = msg.partition()  # None only on an error event
                    if msg.error() is None and partition is not None and partition not in seen:
                        seen.add(partition)
                        stamp = msg.timestamp()[1]
                        by_partition[partition] = stamp
                        oldest = stamp if oldest is None else min(oldest, stamp)
                        consumer.pause([TopicPartition(topic, partition)])
        finally:
            consumer.close()
    return Backlog(
        topic=topic,
        ranges=ranges,
        oldest_timestamp_ms=oldest,
        oldest_by_partition=tuple(sorted(by_partition.items())),
    )


def total_pending(bootstrap: str, group: str, regions: Iterable[Region]) -> int:
    """Records the group has still to land across regions (offsets only, no timestamps)."""
    return sum(
        end - start
        for r in regions
        for _, start, end in pending_ranges(bootstrap, group, r.topic, r.partitions)
    )


def should_fire(
    backlog: Backlog, min_records: int, max_age_s: float, now: float | None = None
) -> bool:
    """A batch is worth it when enough is pending, or when what is pending has waited long
    enough."""
    return backlog.pending > 0 and (
        backlog.pending >= min_records or backlog.oldest_age_s(now) >= max_age_s
    )

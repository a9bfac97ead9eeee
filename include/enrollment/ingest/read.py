"""Reading a claimed range from Kafka, exactly: assigned partitions, read up to each one's
*position* (offsets without a message — transaction markers, compacted records — never stall a
region), stopped at the batch's byte budget; and the offsets retention deleted before they were
read (a gap, found against the partition's low watermark)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from enrollment.clients.kafka import KafkaSettings, group_consumer
from enrollment.core.batch import (
    STAMP_MAX_AGE_MS,
    STAMP_MAX_LEAD_MS,
    Anomaly,
    Manifest,
    PartitionRange,
)


def read_range(
    kafka: KafkaSettings, manifest: Manifest, timeout_s: float = 120.0, max_bytes: int | None = None
) -> tuple[pa.Table, tuple[PartitionRange, ...]]:
    """The manifest's messages (partition, offset, timestamp, key, value), and the ranges read:
    the manifest's, or shorter ones when ``max_bytes`` (keys + values) was reached first.

    A partition is done when the consumer's *position* reaches the range end: offsets that hold
    no message (transaction markers, aborted or compacted records) are passed, never waited for."""
    from confluent_kafka import TopicPartition

    consumer = group_consumer(kafka, manifest.group)
    wanted = {r.partition: r for r in manifest.ranges if r.size > 0}
    parts: list[int] = []
    offsets: list[int] = []
    stamps: list[int] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    size, full = 0, False
    try:
        consumer.assign([TopicPartition(manifest.topic, p, r.start) for p, r in wanted.items()])
        next_offset = {p: r.start for p, r in wanted.items()}
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(wanted) and not full:
            if time.monotonic() > deadline:
                short = {p: (next_offset[p], r.end) for p, r in wanted.items() if p not in done}
                raise TimeoutError(
                    f"kafka: batch {manifest.batch_id} still misses offsets {short} "
                    f"after {timeout_s:.0f} s"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    raise RuntimeError(f"kafka: reading batch {manifest.batch_id}: {msg.error()}")
                p, o = msg.partition(), msg.offset()
                assert p is not None and o is not None, "set on every message without an error"
                if p in done or o >= wanted[p].end or o < next_offset[p]:
                    continue  # beyond the batch (the next batch reads it), or seen already
                value, key = msg.value(), msg.key()
                weight = len(value or b"") + len(key or b"")
                if max_bytes is not None and parts and size + weight > max_bytes:
                    full = True  # the budget: the batch ends before this message
                    break
                size += weight
                parts.append(p)
                offsets.append(o)
                stamps.append(msg.timestamp()[1])
                keys.append(key)
                values.append(value)
                next_offset[p] = o + 1
            if full:
                break
            for tp in consumer.position(
                [TopicPartition(manifest.topic, p) for p in wanted if p not in done]
            ):
                if (
                    next_offset[tp.partition] >= wanted[tp.partition].end
                    or tp.offset >= wanted[tp.partition].end
                ):
                    done.add(tp.partition)
            if done:
                consumer.pause([TopicPartition(manifest.topic, p) for p in done])
    finally:
        consumer.close()
    # Shrunk to what was read: a partition not done ends after its last message read.
    ranges = (
        manifest.ranges
        if not full
        else tuple(
            r
            if r.size == 0 or r.partition in done
            else PartitionRange(r.partition, r.start, next_offset[r.partition])
            for r in manifest.ranges
        )
    )
    return pa.table(
        {
            "kafka_partition": pa.array(parts, pa.int32()),
            "kafka_offset": pa.array(offsets, pa.int64()),
            "kafka_timestamp": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array(keys, pa.binary()),
            "value": pa.array(values, pa.binary()),
        }
    ), ranges


def settle_stamps(read: pa.Table, at_ms: int) -> tuple[pa.Table, list[Anomaly]]:
    """``read`` with every implausible Kafka timestamp (``core.batch.implausible_stamp``) replaced
    by ``at_ms``, the land time; one ``clock`` anomaly per partition that had any (the offsets
    and the stamps as sent, in ms). Per message: no stamp stops a batch or a region."""
    stamps = read.column("kafka_timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
    wrong = (stamps < at_ms - STAMP_MAX_AGE_MS) | (stamps > at_ms + STAMP_MAX_LEAD_MS)
    if not wrong.any():
        return read, []
    partitions = read.column("kafka_partition").to_numpy()
    offsets = read.column("kafka_offset").to_numpy()
    anomalies: list[Anomaly] = []
    for p in np.unique(partitions[wrong]):
        mine = wrong & (partitions == p)
        anomalies.append(
            {
                "kind": "clock",
                "partition": int(p),
                "start": int(offsets[mine].min()),
                "end": int(offsets[mine].max()) + 1,
                "detail": (
                    f"partition {p}: {int(mine.sum())} message(s) stamped outside [land time - "
                    f"{STAMP_MAX_AGE_MS // 86_400_000} d, + {STAMP_MAX_LEAD_MS // 60_000} min] "
                    f"(stamps {int(stamps[mine].min())}..{int(stamps[mine].max())} ms, land time "
                    f"{at_ms} ms): partitioned and aged by the land time"
                ),
            }
        )
    settled = pa.array(np.where(wrong, at_ms, stamps), pa.int64()).cast(
        pa.timestamp("ms", tz="UTC")
    )
    index = read.schema.get_field_index("kafka_timestamp")
    return read.set_column(index, "kafka_timestamp", settled), anomalies


def lost_below_watermark(kafka: KafkaSettings, manifest: Manifest, read: pa.Table) -> list[Anomaly]:
    """Offsets of the range deleted (retention) between the claim and the read: the consumer was
    reset to the partition's earliest offset past them. Gaps, never 'offsets without a message'."""
    from confluent_kafka import TopicPartition

    counts = pc.value_counts(read.column("kafka_partition")).to_pylist() if read.num_rows else []
    seen = {c["values"]: c["counts"] for c in counts}
    short = [r for r in manifest.ranges if r.size and seen.get(r.partition, 0) < r.size]
    if not short:
        return []
    consumer = group_consumer(kafka, manifest.group)
    try:
        out: list[Anomaly] = []
        for r in short:
            low, _ = consumer.get_watermark_offsets(
                TopicPartition(manifest.topic, r.partition), timeout=10
            )
            if low > r.start:
                end = min(low, r.end)
                out.append(
                    {
                        "kind": "gap",
                        "partition": r.partition,
                        "start": r.start,
                        "end": end,
                        "detail": f"{manifest.topic} partition {r.partition}: "
                        f"offsets {r.start}-{end} ({end - r.start}) deleted after the claim, "
                        "before they were read",
                    }
                )
        return out
    finally:
        consumer.close()

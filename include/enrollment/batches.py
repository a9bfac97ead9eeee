"""Micro-batches: claim an offset range, land it in Cloud Storage, then commit the offsets.

- ``claim`` freezes, per partition, the range from the pipeline group's committed offset to the
  end seen now (capped). The batch id and every object name derive from that range, and the
  manifest is written once, under a name derived from the start offsets: claiming again before
  the batch is landed returns the same range.
- ``land`` reads exactly that range (assign, not subscribe), validates it, writes the valid and
  the quarantined rows as write-once Parquet objects, checks the gate (offsets in the range =
  valid + quarantined, duplicates among the quarantined), records the batch as **pending** for
  the warehouse (``pending/<group>/<region>/<batch id>.json``) and only then commits the offsets.
- The warehouse writer takes every pending batch, and clears the record once the batch's ledger
  rows are written: a batch that fails anywhere after ``land`` is taken by the next cycle.

Everything after ``land`` reads the landed objects, never Kafka.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from .partners import partner_changes
from .validation import ValidationResult, validate_batch


class GateError(RuntimeError):
    """A gate found numbers that do not balance; the message says which."""


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset of the batch
    end: int  # one past the last offset

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Manifest:
    region: str
    topic: str
    group: str
    bucket: str
    ranges: tuple[PartitionRange, ...]
    claimed_at: str = field(default="", compare=False)

    @property
    def batch_id(self) -> str:
        """Derived from the offset range only: the same range is always the same batch."""
        key = self.topic + "|" + ",".join(f"{r.partition}:{r.start}-{r.end}" for r in self.ranges)
        return f"{self.region.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    @property
    def offsets(self) -> int:
        return sum(r.size for r in self.ranges)

    @property
    def prefix(self) -> str:
        # No key=value folders: the emulator (DuckDB) would read them as Hive partition columns.
        return f"landing/{self.region}/{self.batch_id}"

    @property
    def valid_object(self) -> str:
        return f"{self.prefix}/valid.parquet"

    @property
    def quarantine_object(self) -> str:
        return f"{self.prefix}/quarantine.parquet"

    @property
    def raw_object(self) -> str:
        return f"{self.prefix}/raw.parquet"

    @property
    def partners_object(self) -> str:
        return f"{self.prefix}/partners.parquet"

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"batch_id": self.batch_id, "offsets": self.offsets}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(region=data["region"], topic=data["topic"], group=data["group"], bucket=data["bucket"],
                   ranges=tuple(PartitionRange(**r) for r in data["ranges"]), claimed_at=data.get("claimed_at", ""))


def claim_object(region: str, topic: str, starts: dict[int, int]) -> str:
    """Where the claim starting at these offsets is recorded (one per start, write-once)."""
    key = topic + "|" + ",".join(f"{p}:{o}" for p, o in sorted(starts.items()))
    return f"claims/{region}/from-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _consumer(bootstrap: str, group: str):
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "enable.partition.eof": False, "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024})


def _retriable(exc: BaseException) -> bool:
    """Kafka errors that pass by themselves: a coordinator moving or still loading (a fresh or
    restarted broker answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a few seconds)."""
    from confluent_kafka import KafkaException

    return isinstance(exc, KafkaException) and bool(exc.args) and hasattr(exc.args[0], "retriable") and exc.args[0].retriable()


_kafka_retry = retry(retry=retry_if_exception(_retriable), wait=wait_exponential(multiplier=0.5, max=5), stop=stop_after_delay(60), reraise=True)


@_kafka_retry
def pending_ranges(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 10.0) -> list[tuple[int, int, int]]:
    """(partition, committed or earliest offset, end offset) per partition. Reads offsets only."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, group)
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
        out = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout)
            start = tp.offset if tp.offset >= 0 else low
            out.append((tp.partition, max(start, low), high))
        return out
    finally:
        consumer.close()


def claim(bootstrap: str, group: str, region: str, topic: str, partitions: int, bucket, max_batch: int) -> Manifest | None:
    """Freezes the next batch of a region, or returns the unfinished one; None when nothing is pending."""
    from google.api_core.exceptions import PreconditionFailed

    pending = pending_ranges(bootstrap, group, topic, partitions)
    record = bucket.blob(claim_object(region, topic, {p: start for p, start, _ in pending}))
    if record.exists():
        return Manifest.from_json(record.download_as_text())
    cap = max(1, -(-max_batch // max(1, partitions)))
    ranges = tuple(PartitionRange(p, start, min(end, start + cap)) for p, start, end in pending)
    if sum(r.size for r in ranges) == 0:
        return None
    manifest = Manifest(region=region, topic=topic, group=group, bucket=bucket.name, ranges=ranges,
                        claimed_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    try:
        record.upload_from_string(manifest.to_json(), content_type="application/json", if_generation_match=0)
    except PreconditionFailed:  # a concurrent claim of the same start won: use its range
        return Manifest.from_json(record.download_as_text())
    return manifest


def read_range(bootstrap: str, manifest: Manifest, timeout_s: float = 120.0) -> pa.Table:
    """Exactly the manifest's messages: partition, offset, timestamp, key, value."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, manifest.group)
    wanted = {r.partition: r for r in manifest.ranges if r.size > 0}
    parts, offsets, stamps, keys, values = [], [], [], [], []
    try:
        consumer.assign([TopicPartition(manifest.topic, p, r.start) for p, r in wanted.items()])
        next_offset = {p: r.start for p, r in wanted.items()}
        deadline = time.monotonic() + timeout_s
        while any(next_offset[p] < r.end for p, r in wanted.items()):
            if time.monotonic() > deadline:
                short = {p: (next_offset[p], r.end) for p, r in wanted.items() if next_offset[p] < r.end}
                raise TimeoutError(f"kafka: batch {manifest.batch_id} still misses offsets {short} after {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    raise RuntimeError(f"kafka: reading batch {manifest.batch_id}: {msg.error()}")
                p, o = msg.partition(), msg.offset()
                if o >= wanted[p].end:
                    continue  # beyond the batch: the next batch reads it
                parts.append(p)
                offsets.append(o)
                stamps.append(msg.timestamp()[1])
                keys.append(msg.key())
                values.append(msg.value())
                next_offset[p] = o + 1
    finally:
        consumer.close()
    return pa.table({"kafka_partition": pa.array(parts, pa.int32()), "kafka_offset": pa.array(offsets, pa.int64()),
                     "kafka_timestamp": pa.array(stamps, pa.timestamp("ms", tz="UTC")), "kafka_key": pa.array(keys, pa.binary()),
                     "value": pa.array(values, pa.binary())})


# What the warehouse and the sinks read of each event, flat; partner fields come from an
# enrollment's payload or an update's changes.
_PARTNER_FIELDS = ("first_name", "last_name", "email", "phone", "language")
_ADDRESS_FIELDS = ("line1", "city", "postal_code", "country")


def flatten(result: ValidationResult, messages: pa.Table, batch_id: str) -> pa.Table:
    """The valid rows as landed: envelope, Kafka coordinates, flat payload fields, the raw JSON."""
    valid = result.valid
    rows = pa.array(valid.column("source_index").to_numpy(), pa.int64())
    payload = valid.column("payload").combine_chunks()

    def field_of(*path: str) -> pa.Array:
        arr = payload
        for part in path:
            arr = pc.struct_field(arr, part)
        return arr

    enrolled = pc.equal(valid.column("event_type"), "partner.enrolled")
    columns: dict[str, pa.Array] = {
        "batch_id": pa.array([batch_id] * valid.num_rows, pa.string()),
        **{name: messages.column(name).take(rows) for name in ("kafka_partition", "kafka_offset", "kafka_timestamp")},
        **{name: valid.column(name) for name in ("event_id", "event_type", "schema_version", "region", "source_system", "occurred_at", "partner_id", "partner_version", "correlation_id")},
    }
    for name in _PARTNER_FIELDS:
        columns[name] = pc.coalesce(field_of(name), field_of("changes", name))
    for name in _ADDRESS_FIELDS:
        columns["country" if name == "country" else f"address_{name}"] = pc.coalesce(field_of("address", name), field_of("changes", "address", name))
    columns["address_state"] = field_of("address", "state")
    columns["date_of_birth"] = field_of("date_of_birth")
    columns["sponsor_id"] = field_of("sponsor_id")
    columns["tax_id_present"] = pc.if_else(enrolled, pc.is_valid(field_of("tax_id")), pa.scalar(None, pa.bool_()))
    columns["termination_reason"] = field_of("reason")
    for name in ("order_id", "order_type", "currency", "total_amount", "volume_points", "subscription_id", "plan_sku", "next_ship_date"):
        columns[name] = field_of(name)
    columns["subscription_action"] = field_of("action")
    columns["event_json"] = pc.cast(messages.column("value").take(rows), pa.string())
    return pa.table(columns)


@lru_cache(maxsize=1)
def landed_schemas() -> tuple[pa.Schema, pa.Schema]:
    """The schemas of ``valid.parquet`` and ``quarantine.parquet`` as ``land`` writes them (the
    contracts fix them: the same for every batch)."""
    empty = pa.table({"kafka_partition": pa.array([], pa.int32()), "kafka_offset": pa.array([], pa.int64()),
                      "kafka_timestamp": pa.array([], pa.timestamp("ms", tz="UTC")), "kafka_key": pa.array([], pa.binary()),
                      "value": pa.array([], pa.binary())})
    result = validate_batch([])
    return flatten(result, empty, "").drop_columns(["event_json"]).schema, quarantine_rows(result, empty, "", "").schema


def quarantine_rows(result: ValidationResult, messages: pa.Table, batch_id: str, region: str) -> pa.Table:
    q = result.quarantine
    rows = pa.array(q.column("source_index").to_numpy(), pa.int64())
    return pa.table({
        "batch_id": pa.array([batch_id] * q.num_rows, pa.string()),
        "region": pa.array([region] * q.num_rows, pa.string()),
        **{name: messages.column(name).take(rows) for name in ("kafka_partition", "kafka_offset", "kafka_timestamp")},
        "reasons": pa.array([",".join(r) for r in q.column("reasons").to_pylist()], pa.string()),
        "duplicate_only": pa.array([r == ["duplicate_event_id"] for r in q.column("reasons").to_pylist()], pa.bool_()),
        "event_id": q.column("event_id"),
        "event_type": q.column("event_type"),
        "partner_id": q.column("partner_id"),
        "raw": q.column("raw"),
    })


def write_once(bucket, name: str, table: pa.Table) -> bool:
    """Writes a Parquet object unless it exists; True when this call wrote it.

    A retried task finds the object there and leaves it: the content is a function of the offset
    range, so what is there is what would be written. Objects stay under 8 MB per part so the
    emulator honours the precondition (it ignores it on resumable uploads)."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(name)
    if blob.exists():
        return False
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    blob.metadata = {"rows": str(table.num_rows)}
    try:
        blob.upload_from_string(sink.getvalue(), content_type="application/vnd.apache.parquet", if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


@_kafka_retry
def commit_range(bootstrap: str, manifest: Manifest) -> None:
    """Moves the group past the batch; called only once the batch is durable."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, manifest.group)
    try:
        consumer.commit(offsets=[TopicPartition(manifest.topic, r.partition, r.end) for r in manifest.ranges if r.size], asynchronous=False)
    finally:
        consumer.close()


@dataclass
class Landed:
    batch_id: str
    region: str
    offsets: int
    valid: int
    quarantined: int  # not counting duplicates
    duplicates: int
    valid_uri: str
    quarantine_uri: str
    seconds: float
    group: str = ""  # the pipeline's consumer group: whose warehouse queue the batch waits in
    claimed_at: str = ""  # when the batch was claimed (ISO 8601), from its manifest
    partners_uri: str = ""  # the batch's partner changes, one row per partner (empty: landed by an older version)
    first_kafka_ms: int | None = None  # the Kafka timestamps of its oldest and newest message
    last_kafka_ms: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def land(bootstrap: str, manifest: Manifest, bucket) -> Landed:
    """Reads, validates and lands the batch; commits the offsets after the gate passes."""
    t0 = time.monotonic()
    messages = read_range(bootstrap, manifest)
    if messages.num_rows != manifest.offsets:
        raise GateError(f"land gate, batch {manifest.batch_id}: read {messages.num_rows} messages, the range holds {manifest.offsets} offsets")
    result = validate_batch(messages.column("value").to_pylist())
    valid = flatten(result, messages, manifest.batch_id)
    quarantine = quarantine_rows(result, messages, manifest.batch_id, manifest.region)
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    if valid.num_rows + quarantine.num_rows != manifest.offsets:
        raise GateError(f"land gate, batch {manifest.batch_id}: offsets {manifest.offsets} != valid {valid.num_rows} + quarantined "
                        f"{quarantine.num_rows - duplicates} + duplicates {duplicates}")
    # The raw JSON apart from the flat rows: the warehouse never loads it (it was most of every
    # row's bytes), and it stays here, write-once, joined by (batch_id, partition, offset).
    raw = valid.select(["batch_id", "kafka_partition", "kafka_offset", "event_id", "event_json"])
    valid = valid.drop_columns(["event_json"])
    write_once(bucket, manifest.valid_object, valid)
    write_once(bucket, manifest.quarantine_object, quarantine)
    write_once(bucket, manifest.raw_object, raw)
    # The batch's partner changes, folded here where regions run in parallel, so the warehouse
    # cycle reads one small object per batch instead of every event.
    write_once(bucket, manifest.partners_object, partner_changes(valid))
    stamps = messages.column("kafka_timestamp")
    first, last = (pc.min(stamps).as_py(), pc.max(stamps).as_py()) if messages.num_rows else (None, None)
    landed = Landed(batch_id=manifest.batch_id, region=manifest.region, offsets=manifest.offsets, valid=valid.num_rows,
                    quarantined=quarantine.num_rows - duplicates, duplicates=duplicates, valid_uri=manifest.uri(manifest.valid_object),
                    quarantine_uri=manifest.uri(manifest.quarantine_object), seconds=round(time.monotonic() - t0, 3), group=manifest.group,
                    claimed_at=manifest.claimed_at, partners_uri=manifest.uri(manifest.partners_object),
                    first_kafka_ms=int(first.timestamp() * 1000) if first else None, last_kafka_ms=int(last.timestamp() * 1000) if last else None)
    # Before the commit: once the offsets move on, this record is the only way to the batch.
    mark_pending(bucket, landed)
    commit_range(bootstrap, manifest)
    return landed


PENDING_PREFIX = "pending/"


def pending_object(group: str, region: str, batch_id: str) -> str:
    """The record of a landed batch the warehouse has not written yet: the work queue of the
    pipeline whose consumer group landed it."""
    return f"{PENDING_PREFIX}{group}/{region}/{batch_id}.json"


def mark_pending(bucket, landed: Landed) -> None:
    """Records the batch as landed, not warehoused; writing it again changes nothing."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(pending_object(landed.group, landed.region, landed.batch_id))
    body = json.dumps(landed.as_dict(), sort_keys=True)
    try:
        blob.upload_from_string(body, content_type="application/json", if_generation_match=0)
    except PreconditionFailed:
        pass  # a retry of land: the record is there already


def pending_batches(bucket, group: str, max_rows: int | None = None) -> list[Landed]:
    """The pipeline's landed batches not yet warehoused, every region, oldest claim first; at
    most ``max_rows`` offsets in all (and always the oldest batch, however large)."""
    from google.api_core.exceptions import NotFound

    records = []
    for blob in bucket.list_blobs(prefix=f"{PENDING_PREFIX}{group}/"):
        try:
            records.append(json.loads(blob.download_as_text()))
        except NotFound:  # cleared by a cycle meanwhile
            continue
    records.sort(key=lambda r: (r.get("claimed_at") or "", r["batch_id"]))
    out, rows = [], 0
    for r in records:
        if out and max_rows is not None and rows + r["offsets"] > max_rows:
            break
        out.append(Landed(**{k: r[k] for k in Landed.__dataclass_fields__ if k in r}))
        rows += r["offsets"]
    return out


def clear_pending(bucket, batches: list[Landed]) -> None:
    from google.api_core.exceptions import NotFound

    for landed in batches:
        try:
            bucket.blob(pending_object(landed.group, landed.region, landed.batch_id)).delete()
        except NotFound:
            pass


def claims(bucket, region: str, topic: str, group: str, start: datetime, end: datetime) -> list[Manifest]:
    """The batches claimed for a region's topic by ``group`` in [start, end) (when each claim was
    recorded), oldest first: the index that reconciliation and replay work from."""
    found = []
    for blob in bucket.list_blobs(prefix=f"claims/{region}/"):
        if blob.time_created is not None and start <= blob.time_created < end:
            manifest = Manifest.from_json(blob.download_as_text())
            if manifest.topic == topic and manifest.group == group:
                found.append(manifest)
    return sorted(found, key=lambda m: (m.claimed_at, m.batch_id))


def landed_from(bucket, manifest: Manifest) -> Landed | None:
    """A claimed batch as it was landed (its counts read from the objects), None when not landed."""
    valid_blob, quarantine_blob = bucket.blob(manifest.valid_object), bucket.blob(manifest.quarantine_object)
    if not (valid_blob.exists() and quarantine_blob.exists()):
        return None
    valid_rows = pq.read_metadata(io.BytesIO(valid_blob.download_as_bytes())).num_rows
    quarantine = pq.read_table(io.BytesIO(quarantine_blob.download_as_bytes()), columns=["duplicate_only"])
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    partners = bucket.blob(manifest.partners_object)
    return Landed(batch_id=manifest.batch_id, region=manifest.region, offsets=manifest.offsets, valid=valid_rows,
                  quarantined=quarantine.num_rows - duplicates, duplicates=duplicates, valid_uri=manifest.uri(manifest.valid_object),
                  quarantine_uri=manifest.uri(manifest.quarantine_object), seconds=0.0, group=manifest.group, claimed_at=manifest.claimed_at,
                  partners_uri=manifest.uri(manifest.partners_object) if partners.exists() else "")

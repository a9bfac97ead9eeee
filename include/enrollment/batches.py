"""Micro-batches: claim an offset range, land it in Cloud Storage, then commit the offsets.

- ``claim`` freezes, per partition **the cluster reports** (topic metadata, not configuration:
  a partition added on the cluster is ingested at once), the range from the pipeline group's
  committed offset to the end seen now (capped). The batch id and every object name derive from
  the group, topic and range, and the manifest is written once, under a name derived from the
  start offsets: claiming again before the batch is landed returns the same range.
- Each claim is chained to where the group's landed batches end
  (``claims/<region>/landed-….json``): a committed offset *past* that end means offsets were
  deleted (retention) before they were read — a **gap**; one *before* it means the group's
  offsets expired and it rewound — a **rewind**, and the claim starts at the landed end instead
  (nothing is ingested twice). Both travel with the batch and become ledger rows of their own
  (stage ``gap``/``rewind``).
- ``land`` reads exactly that range (assign, not subscribe) up to each partition's *position*
  (offsets without a message — transaction markers, compacted records — never stall it), stops
  at the batch's byte budget (the claim record is rewritten to the shrunk range first), validates
  it, writes the valid and the quarantined rows as write-once Parquet objects, checks the gate
  (offsets in the range = valid + quarantined + duplicates + skipped), records the batch as
  **pending** for the warehouse (``pending/<group>/<region>/<batch id>.json``) and only then
  commits the offsets.
- The warehouse writer takes every pending batch, and clears the record once the batch's ledger
  rows are written: a batch that fails anywhere after ``land`` is taken by the next cycle.

Everything after ``land`` reads the landed objects, never Kafka.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from .erasure import anonymise_landed, erased_among, mentioned_ids, suppressed
from .partners import partner_changes
from .pii import Keyring, mask_raw, tokenise_json
from .validation import ValidationResult, validate_batch, validate_guarded

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Bucket

log = logging.getLogger(__name__)

# A batch's byte budget when the caller names none (enrollment.config.Region).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class Anomaly(TypedDict):
    """A gap or rewind found by a claim or a read: a ledger row of its own later."""

    kind: Literal["gap", "rewind"]
    partition: int
    start: int
    end: int
    detail: str


class Chain(TypedDict):
    """Where the group's landed batches of a topic end (``read_chain``)."""

    ends: dict[int, int]  # partition → one past the last landed offset
    starts: dict[int, int]  # partition → the last landed batch's start
    claim: str  # that batch's claim record


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
    # Gaps and rewinds the claim found; ledger rows later.
    anomalies: tuple[Anomaly, ...] = field(default=(), compare=False)
    # 1: ids from topic + offsets (batches claimed before the group joined the identity keep them).
    id_scheme: int = 2

    @property
    def batch_id(self) -> str:
        """Derived from the group, topic and offset range: the same range is always the same batch,
        and two pipelines (groups) reading one topic never share a batch."""
        key = (
            ("" if self.id_scheme < 2 else self.group + "|")
            + self.topic
            + "|"
            + ",".join(f"{r.partition}:{r.start}-{r.end}" for r in self.ranges)
        )
        return f"{self.region.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    @property
    def claim_record(self) -> str:
        return claim_object(
            self.region,
            self.topic,
            {r.partition: r.start for r in self.ranges},
            self.group if self.id_scheme >= 2 else None,
        )

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
        return json.dumps(
            asdict(self) | {"batch_id": self.batch_id, "offsets": self.offsets}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(
            region=data["region"],
            topic=data["topic"],
            group=data["group"],
            bucket=data["bucket"],
            ranges=tuple(PartitionRange(**r) for r in data["ranges"]),
            claimed_at=data.get("claimed_at", ""),
            anomalies=tuple(data.get("anomalies") or ()),
            id_scheme=int(data.get("id_scheme", 1)),
        )


def landing_prefix(batch_id: str) -> str:
    """Where a batch's objects land: ``landing/<REGION>/<batch id>``, the region read from the id
    (``<region>-<hash>``, or ``recovery-<region>-<hash>`` for a recovery batch)."""
    parts = batch_id.split("-")
    region = parts[1] if parts[0] == "recovery" and len(parts) > 2 else parts[0]
    return f"landing/{region.upper()}/{batch_id}"


CLAIMS_PREFIX = "claims/"


def claim_object(region: str, topic: str, starts: dict[int, int], group: str | None = None) -> str:
    """Where the claim of ``group`` starting at these offsets is recorded (one per start; rewritten
    only to shrink it before anything is landed). Without a group: the name claims had before the
    group joined their identity."""
    key = (
        ("" if group is None else group + "|")
        + topic
        + "|"
        + ",".join(f"{p}:{o}" for p, o in sorted(starts.items()))
    )
    return f"{CLAIMS_PREFIX}{region}/from-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def chain_object(region: str, topic: str, group: str) -> str:
    """Where the group's landed batches of a topic end, per partition (updated by each land)."""
    digest = hashlib.sha256((group + "|" + topic).encode()).hexdigest()[:20]
    return f"{CLAIMS_PREFIX}{region}/landed-{digest}.json"


def read_chain(bucket: Bucket, region: str, topic: str, group: str) -> Chain | None:
    """{"ends": {partition: end}, "starts": …, "claim": record name} of the last landed batch, or
    None."""
    from google.api_core.exceptions import NotFound

    try:
        data = json.loads(bucket.blob(chain_object(region, topic, group)).download_as_text())
    except NotFound:
        return None
    return {
        "ends": {int(p): o for p, o in data["ends"].items()},
        "starts": {int(p): o for p, o in data.get("starts", {}).items()},
        "claim": data.get("claim", ""),
    }


def advance_chain(bucket: Bucket, manifest: Manifest) -> None:
    """Moves the chain to the end of a landed batch; never backwards (a late retry of an older
    batch)."""
    chain = read_chain(bucket, manifest.region, manifest.topic, manifest.group)
    ends = dict(chain["ends"]) if chain is not None else {}
    for r in manifest.ranges:
        ends[r.partition] = max(ends.get(r.partition, 0), r.end)
    body = {
        "group": manifest.group,
        "topic": manifest.topic,
        "ends": {str(p): o for p, o in sorted(ends.items())},
        "starts": {str(r.partition): r.start for r in manifest.ranges},
        "claim": manifest.claim_record,
        "batch_id": manifest.batch_id,
    }
    bucket.blob(chain_object(manifest.region, manifest.topic, manifest.group)).upload_from_string(
        json.dumps(body, sort_keys=True), content_type="application/json"
    )


def _consumer(bootstrap: str, group: str) -> Consumer:
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
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, group)
    try:
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
    finally:
        consumer.close()


def _recorded(bucket: Bucket, *names: str) -> Manifest | None:
    for name in names:
        blob = bucket.blob(name)
        if blob.exists():
            return Manifest.from_json(blob.download_as_text())
    return None


def chain_starts(
    pending: list[tuple[int, int, int]], chain: Chain | None, topic: str
) -> tuple[dict[int, int], list[Anomaly]]:
    """Where the next claim starts per partition, and the gaps and rewinds against the chain (the
    end of the group's landed batches; a partition the chain does not know started at 0)."""
    starts: dict[int, int] = {}
    anomalies: list[Anomaly] = []
    for p, start, end in pending:
        starts[p] = start
        if chain is None:
            continue  # the group's first claim of the topic (or claimed before the chain existed)
        landed = chain["ends"].get(p, 0)
        if start > landed:
            anomalies.append(
                {
                    "kind": "gap",
                    "partition": p,
                    "start": landed,
                    "end": start,
                    "detail": f"{topic} partition {p}: offsets {landed}-{start} "
                    f"({start - landed}) deleted before they were read",
                }
            )
        elif start < landed <= end:
            anomalies.append(
                {
                    "kind": "rewind",
                    "partition": p,
                    "start": start,
                    "end": landed,
                    "detail": f"{topic} partition {p}: the group rewound to {start}, "
                    f"its batches were landed to {landed}; "
                    f"offsets {start}-{landed} ({landed - start}) not ingested again",
                }
            )
            starts[p] = landed
        elif start < landed:
            anomalies.append(
                {
                    "kind": "rewind",
                    "partition": p,
                    "start": start,
                    "end": landed,
                    "detail": f"{topic} partition {p}: the partition ends at {end}, "
                    f"before the landed end {landed} "
                    f"(topic recreated or truncated?): reading from {start}",
                }
            )
    return starts, anomalies


def claim(
    bootstrap: str,
    group: str,
    region: str,
    topic: str,
    partitions: int | None,
    bucket: Bucket,
    max_batch: int,
) -> Manifest | None:
    """Freezes the next batch of a region, or returns the unfinished one; None when nothing is
    pending. ``partitions`` is the configured count: the partitions read are the cluster's."""
    from google.api_core.exceptions import PreconditionFailed

    pending = pending_ranges(bootstrap, group, topic, partitions)
    committed = {p: start for p, start, _ in pending}
    chain = read_chain(bucket, region, topic, group)
    if (
        chain
        and chain["claim"]
        and all(committed.get(p) == s for p, s in chain["starts"].items())
        and any(chain["ends"].get(p, s) != s for p, s in chain["starts"].items())
    ):
        # The last landed batch, its offsets not committed (land died after landing): land it
        # again.
        again = _recorded(bucket, chain["claim"])
        if again is not None:
            return again
    unfinished = _recorded(
        bucket,
        claim_object(region, topic, committed, group),
        claim_object(region, topic, committed),
    )
    if unfinished is not None and (
        chain is None
        or all(r.start >= chain["ends"].get(r.partition, 0) for r in unfinished.ranges)
    ):
        return unfinished
    starts, anomalies = chain_starts(pending, chain, topic)
    for a in anomalies:
        log.error("claim %s %s: %s %s", region, group, a["kind"].upper(), a["detail"])
    record = bucket.blob(claim_object(region, topic, starts, group))
    if starts != committed and (again := _recorded(bucket, record.name)) is not None:
        return again  # the unfinished claim after a rewind
    cap = max(1, -(-max_batch // max(1, len(pending))))
    ranges = tuple(
        PartitionRange(p, starts[p], max(starts[p], min(end, starts[p] + cap)))
        for p, _, end in pending
    )
    if sum(r.size for r in ranges) == 0:
        # A gap or rewind alone waits for the next batch with data: it is found again then.
        return None
    manifest = Manifest(
        region=region,
        topic=topic,
        group=group,
        bucket=bucket.name,
        ranges=ranges,
        claimed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        anomalies=tuple(anomalies),
    )
    try:
        record.upload_from_string(
            manifest.to_json(), content_type="application/json", if_generation_match=0
        )
    except PreconditionFailed:  # a concurrent claim of the same start won: use its range
        return Manifest.from_json(record.download_as_text())
    return manifest


def read_range(
    bootstrap: str, manifest: Manifest, timeout_s: float = 120.0, max_bytes: int | None = None
) -> tuple[pa.Table, tuple[PartitionRange, ...]]:
    """The manifest's messages (partition, offset, timestamp, key, value), and the ranges read:
    the manifest's, or shorter ones when ``max_bytes`` (keys + values) was reached first.

    A partition is done when the consumer's *position* reaches the range end: offsets that hold
    no message (transaction markers, aborted or compacted records) are passed, never waited for."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, manifest.group)
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


def lost_below_watermark(bootstrap: str, manifest: Manifest, read: pa.Table) -> list[Anomaly]:
    """Offsets of the range deleted (retention) between the claim and the read: the consumer was
    reset to the partition's earliest offset past them. Gaps, never 'offsets without a message'."""
    from confluent_kafka import TopicPartition

    counts = pc.value_counts(read.column("kafka_partition")).to_pylist() if read.num_rows else []
    seen = {c["values"]: c["counts"] for c in counts}
    short = [r for r in manifest.ranges if r.size and seen.get(r.partition, 0) < r.size]
    if not short:
        return []
    consumer = _consumer(bootstrap, manifest.group)
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


# What the warehouse and the sinks read of each event, flat; partner fields come from an
# enrollment's payload or an update's changes.
_PARTNER_FIELDS = ("first_name", "last_name", "email", "phone", "language")
_ADDRESS_FIELDS = ("line1", "city", "postal_code", "country")


def flatten(
    result: ValidationResult,
    messages: pa.Table,
    batch_id: str,
    tax_id_tokens: pa.Array | None = None,
) -> pa.Table:
    """The valid rows as landed: envelope, Kafka coordinates, flat payload fields, the raw JSON
    (as ``messages`` carry it: ``land`` passes them with their tax ids tokenised, and the
    tokens)."""
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
        **{
            name: messages.column(name).take(rows)
            for name in ("kafka_partition", "kafka_offset", "kafka_timestamp")
        },
        **{
            name: valid.column(name)
            for name in (
                "event_id",
                "event_type",
                "schema_version",
                "region",
                "source_system",
                "occurred_at",
                "partner_id",
                "partner_version",
                "correlation_id",
            )
        },
    }
    for name in _PARTNER_FIELDS:
        columns[name] = pc.coalesce(field_of(name), field_of("changes", name))
    for name in _ADDRESS_FIELDS:
        columns["country" if name == "country" else f"address_{name}"] = pc.coalesce(
            field_of("address", name), field_of("changes", "address", name)
        )
    columns["address_state"] = field_of("address", "state")
    columns["date_of_birth"] = field_of("date_of_birth")
    columns["sponsor_id"] = field_of("sponsor_id")
    columns["tax_id_present"] = pc.if_else(
        enrolled, pc.is_valid(field_of("tax_id")), pa.scalar(None, pa.bool_())
    )
    columns["tax_id_token"] = (
        tax_id_tokens if tax_id_tokens is not None else pa.nulls(valid.num_rows, pa.string())
    )
    # Marketing consent, as an enrollment states it or an update changes it (null: not stated).
    for name, part in (
        ("marketing_consent", "marketing_email"),
        ("consent_version", "version"),
        ("consent_captured_at", "captured_at"),
    ):
        columns[name] = pc.coalesce(
            field_of("consents", part), field_of("changes", "consents", part)
        )
    # An enrollment that states a consent without its own version answered the agreement's text.
    columns["consent_version"] = pc.if_else(
        pc.and_(enrolled, pc.is_valid(columns["marketing_consent"])),
        pc.coalesce(columns["consent_version"], field_of("agreement", "version")),
        columns["consent_version"],
    )
    columns["consent_captured_at"] = pc.cast(
        columns["consent_captured_at"], pa.timestamp("us", tz="UTC")
    )
    columns["termination_reason"] = field_of("reason")
    for name in (
        "order_id",
        "order_type",
        "currency",
        "total_amount",
        "volume_points",
        "subscription_id",
        "plan_sku",
        "next_ship_date",
    ):
        columns[name] = field_of(name)
    columns["subscription_action"] = field_of("action")
    columns["event_json"] = pc.cast(messages.column("value").take(rows), pa.string())
    return pa.table(columns)


@lru_cache(maxsize=1)
def landed_schemas() -> tuple[pa.Schema, pa.Schema]:
    """The schemas of ``valid.parquet`` and ``quarantine.parquet`` as ``land`` writes them (the
    contracts fix them: the same for every batch)."""
    empty = pa.table(
        {
            "kafka_partition": pa.array([], pa.int32()),
            "kafka_offset": pa.array([], pa.int64()),
            "kafka_timestamp": pa.array([], pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array([], pa.binary()),
            "value": pa.array([], pa.binary()),
        }
    )
    result = validate_batch([])
    return flatten(result, empty, "").drop_columns(["event_json"]).schema, quarantine_rows(
        result, empty, "", ""
    ).schema


def quarantine_rows(
    result: ValidationResult, messages: pa.Table, batch_id: str, region: str
) -> pa.Table:
    q = result.quarantine
    rows = pa.array(q.column("source_index").to_numpy(), pa.int64())
    return pa.table(
        {
            "batch_id": pa.array([batch_id] * q.num_rows, pa.string()),
            "region": pa.array([region] * q.num_rows, pa.string()),
            **{
                name: messages.column(name).take(rows)
                for name in ("kafka_partition", "kafka_offset", "kafka_timestamp")
            },
            "reasons": pa.array(
                [",".join(r) for r in q.column("reasons").to_pylist()], pa.string()
            ),
            "duplicate_only": pa.array(
                [r == ["duplicate_event_id"] for r in q.column("reasons").to_pylist()], pa.bool_()
            ),
            "event_id": q.column("event_id"),
            "event_type": q.column("event_type"),
            "partner_id": q.column("partner_id"),
            # What the operator needs to see why, with the personal values masked by shape
            # (pii.mask_raw).
            "raw": pa.array([mask_raw(r) for r in q.column("raw").to_pylist()], pa.binary()),
        }
    )


def write_once(bucket: Bucket, name: str, table: pa.Table) -> bool:
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
        blob.upload_from_string(
            sink.getvalue(), content_type="application/vnd.apache.parquet", if_generation_match=0
        )
    except PreconditionFailed:
        return False
    return True


@_kafka_retry
def commit_range(bootstrap: str, manifest: Manifest) -> None:
    """Moves the group past the batch; called only once the batch is durable."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, manifest.group)
    try:
        # Every partition, the empty ones too: after a rewind the group's offset moves back to
        # the landed end.
        consumer.commit(
            offsets=[TopicPartition(manifest.topic, r.partition, r.end) for r in manifest.ranges],
            asynchronous=False,
        )
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
    # The batch's partner changes, one row per partner (empty: landed by an older version).
    partners_uri: str = ""
    first_kafka_ms: int | None = None  # the Kafka timestamps of its oldest and newest message
    last_kafka_ms: int | None = None
    # Offsets of the range that hold no message (transaction markers, compacted or deleted records).
    skipped: int = 0
    # Gaps and rewinds found by its claim or read: ledger rows of their own.
    anomalies: list[Anomaly] = field(default_factory=list)
    requeued: bool = False  # set aside by a warehouse cycle once, repaired and queued again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenised(
    result: ValidationResult, messages: pa.Table, keyring: Keyring
) -> tuple[pa.Table, pa.Array]:
    """The messages with each valid event's tax ids replaced by their tokens
    (``pii.tokenise_json``: every other byte kept), and the token of each valid row's
    ``payload.tax_id`` (null without one). Quarantined messages are left as they are:
    ``quarantine_rows`` masks what it writes."""
    index = result.valid.column("source_index").to_pylist()
    values = messages.column("value").to_pylist()
    for i in index:
        values[i] = tokenise_json(values[i], keyring)
    payload = result.valid.column("payload").combine_chunks()
    clear = (
        pc.struct_field(payload, "tax_id").to_pylist()
        if payload.type.get_field_index("tax_id") >= 0
        else [None] * len(index)
    )
    tokens = pa.array(
        [None if v is None else keyring.token(v, "tax_id") for v in clear], pa.string()
    )
    return messages.set_column(
        messages.schema.get_field_index("value"), "value", pa.array(values, pa.binary())
    ), tokens


def shape_batch(
    result: ValidationResult, messages: pa.Table, batch_id: str, region: str, keyring: Keyring
) -> tuple[pa.Table, pa.Table, pa.Table, int]:
    """A validated batch as it lands: the messages with their valid events' tax ids tokenised,
    the flat valid rows (raw JSON still in ``event_json``), the quarantine rows and how many of
    those are in-batch duplicates only. Shared by ``land`` and ``recovery.recover``."""
    # Reasons are found on the clear values; from here on the batch's tax ids are tokens.
    messages, tax_id_tokens = tokenised(result, messages, keyring)
    valid = flatten(result, messages, batch_id, tax_id_tokens)
    quarantine = quarantine_rows(result, messages, batch_id, region)
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    return messages, valid, quarantine, duplicates


def write_batch(
    bucket: Bucket,
    prefix: str,
    batch_id: str,
    valid: pa.Table,
    quarantine: pa.Table,
    keyring: Keyring,
) -> tuple[pa.Table, pa.Table]:
    """Writes a shaped batch's four write-once objects under ``prefix`` (valid, quarantine, raw,
    partners), its erased partners anonymised first; the valid and quarantine rows as written."""
    # The raw JSON apart from the flat rows: the warehouse never loads it (it was most of every
    # row's bytes), and it stays here, write-once, joined by (batch_id, partition, offset).
    raw = valid.select(["batch_id", "kafka_partition", "kafka_offset", "event_id", "event_json"])
    valid = valid.drop_columns(["event_json"])
    changes = partner_changes(valid)
    erased = erased_among(
        set(valid.column("partner_id").to_pylist()) | mentioned_ids(quarantine),
        keyring,
        suppressed(bucket),
    )
    # Partners erased before these events arrived (a resend, a rewind): they never land in clear.
    if erased:
        (valid, raw, quarantine, changes), counts = anonymise_landed(
            valid, raw, quarantine, changes, erased
        )
        log.info(
            "land %s: %d events and %d quarantined messages of %d erased partners "
            "anonymised before landing",
            batch_id,
            counts["events"],
            counts["quarantined"],
            len(erased),
        )
    write_once(bucket, f"{prefix}/valid.parquet", valid)
    write_once(bucket, f"{prefix}/quarantine.parquet", quarantine)
    write_once(bucket, f"{prefix}/raw.parquet", raw)
    # The batch's partner changes, folded here where regions run in parallel, so the warehouse
    # cycle reads one small object per batch instead of every event.
    write_once(bucket, f"{prefix}/partners.parquet", changes)
    return valid, quarantine


def land(
    bootstrap: str,
    manifest: Manifest,
    bucket: Bucket,
    keyring: Keyring,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Landed:
    """Reads, validates and lands the batch; commits the offsets after the gate passes. A batch
    whose messages pass ``max_bytes`` shrinks to what fits, its claim record first. Nothing is
    written with a tax id in clear: they are tokenised under ``keyring`` (valid events) or masked
    (quarantined messages) first."""
    t0 = time.monotonic()
    messages, ranges = read_range(bootstrap, manifest, max_bytes=max_bytes)
    if ranges != manifest.ranges:
        # Rewritten before anything lands: a retry claims this same shrunk range, and the batch id
        # (every object name) derives from it. The rest is the next batch's.
        shrunk = replace(manifest, ranges=ranges)
        bucket.blob(manifest.claim_record).upload_from_string(
            shrunk.to_json(), content_type="application/json"
        )
        log.info(
            "land %s: %d offsets passed the byte budget (%d bytes); "
            "the batch shrinks to %d offsets, now %s",
            manifest.batch_id,
            manifest.offsets,
            max_bytes,
            shrunk.offsets,
            shrunk.batch_id,
        )
        manifest = shrunk
    read = messages.num_rows
    if (
        read > manifest.offsets
        or len(
            set(
                zip(
                    messages.column("kafka_partition").to_pylist(),
                    messages.column("kafka_offset").to_pylist(),
                    strict=True,
                )
            )
        )
        != read
    ):
        raise GateError(
            f"land gate, batch {manifest.batch_id}: read {read} messages (some twice?), "
            f"the range holds {manifest.offsets} offsets"
        )
    skipped = manifest.offsets - read  # offsets holding no message: accounted, never waited for
    anomalies = list(manifest.anomalies) + (
        lost_below_watermark(bootstrap, manifest, messages) if skipped else []
    )
    for a in anomalies[len(manifest.anomalies) :]:
        log.error("land %s %s: GAP %s", manifest.region, manifest.batch_id, a["detail"])
    result = validate_guarded(
        messages.column("value").to_pylist()
    )  # a raising validator never stops the region
    messages, valid, quarantine, duplicates = shape_batch(
        result, messages, manifest.batch_id, manifest.region, keyring
    )
    if valid.num_rows + quarantine.num_rows + skipped != manifest.offsets:
        raise GateError(
            f"land gate, batch {manifest.batch_id}: offsets {manifest.offsets} "
            f"!= valid {valid.num_rows} + quarantined "
            f"{quarantine.num_rows - duplicates} + duplicates {duplicates} + skipped {skipped}"
        )
    valid, quarantine = write_batch(
        bucket, manifest.prefix, manifest.batch_id, valid, quarantine, keyring
    )
    stamps = messages.column("kafka_timestamp")
    first, last = (
        (pc.min(stamps).as_py(), pc.max(stamps).as_py()) if messages.num_rows else (None, None)
    )
    landed = Landed(
        batch_id=manifest.batch_id,
        region=manifest.region,
        offsets=manifest.offsets,
        valid=valid.num_rows,
        quarantined=quarantine.num_rows - duplicates,
        duplicates=duplicates,
        valid_uri=manifest.uri(manifest.valid_object),
        quarantine_uri=manifest.uri(manifest.quarantine_object),
        seconds=round(time.monotonic() - t0, 3),
        group=manifest.group,
        claimed_at=manifest.claimed_at,
        partners_uri=manifest.uri(manifest.partners_object),
        first_kafka_ms=int(first.timestamp() * 1000) if first else None,
        last_kafka_ms=int(last.timestamp() * 1000) if last else None,
        skipped=skipped,
        anomalies=anomalies,
    )
    # Before the commit: once the offsets move on, this record is the only way to the batch; and
    # the chain, which the next claim checks its start against.
    mark_pending(bucket, landed)
    advance_chain(bucket, manifest)
    commit_range(bootstrap, manifest)
    return landed


PENDING_PREFIX = "pending/"


def pending_object(group: str, region: str, batch_id: str) -> str:
    """The record of a landed batch the warehouse has not written yet: the work queue of the
    pipeline whose consumer group landed it."""
    return f"{PENDING_PREFIX}{group}/{region}/{batch_id}.json"


def mark_pending(bucket: Bucket, landed: Landed) -> None:
    """Records the batch as landed, not warehoused; writing it again changes nothing."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(pending_object(landed.group, landed.region, landed.batch_id))
    body = json.dumps(landed.as_dict(), sort_keys=True)
    with contextlib.suppress(PreconditionFailed):  # a retry of land: the record is there already
        blob.upload_from_string(body, content_type="application/json", if_generation_match=0)


def pending_batches(bucket: Bucket, group: str, max_rows: int | None = None) -> list[Landed]:
    """The pipeline's landed batches not yet warehoused, every region, oldest claim first; at
    most ``max_rows`` offsets in all (and always the oldest batch, however large)."""
    from google.api_core.exceptions import NotFound

    records: list[dict[str, Any]] = []
    for blob in bucket.list_blobs(prefix=f"{PENDING_PREFIX}{group}/"):
        try:
            records.append(json.loads(blob.download_as_text()))
        except NotFound:  # cleared by a cycle meanwhile
            continue
    records.sort(key=lambda r: (r.get("claimed_at") or "", r["batch_id"]))
    out: list[Landed] = []
    rows = 0
    for r in records:
        if out and max_rows is not None and rows + r["offsets"] > max_rows:
            break
        out.append(Landed(**{k: r[k] for k in Landed.__dataclass_fields__ if k in r}))
        rows += r["offsets"]
    return out


def clear_pending(bucket: Bucket, batches: list[Landed]) -> None:
    from google.api_core.exceptions import NotFound

    for landed in batches:
        with contextlib.suppress(NotFound):
            bucket.blob(pending_object(landed.group, landed.region, landed.batch_id)).delete()


def claims(
    bucket: Bucket, region: str, topic: str, group: str, start: datetime, end: datetime
) -> list[Manifest]:
    """The batches claimed for a region's topic by ``group`` in [start, end) (when each claim was
    recorded), oldest first: the index that reconciliation and replay work from."""
    found: list[Manifest] = []
    for blob in bucket.list_blobs(prefix=f"{CLAIMS_PREFIX}{region}/from-"):
        if blob.time_created is not None and start <= blob.time_created < end:
            manifest = Manifest.from_json(blob.download_as_text())
            if manifest.topic == topic and manifest.group == group:
                found.append(manifest)
    return sorted(found, key=lambda m: (m.claimed_at, m.batch_id))


def landed_from(bucket: Bucket, manifest: Manifest) -> Landed | None:
    """A claimed batch as it was landed (its counts read from the objects), None when not
    landed."""
    valid_blob, quarantine_blob = (
        bucket.blob(manifest.valid_object),
        bucket.blob(manifest.quarantine_object),
    )
    if not (valid_blob.exists() and quarantine_blob.exists()):
        return None
    valid_rows = pq.read_metadata(io.BytesIO(valid_blob.download_as_bytes())).num_rows
    quarantine = pq.read_table(
        io.BytesIO(quarantine_blob.download_as_bytes()), columns=["duplicate_only"]
    )
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    partners = bucket.blob(manifest.partners_object)
    return Landed(
        batch_id=manifest.batch_id,
        region=manifest.region,
        offsets=manifest.offsets,
        valid=valid_rows,
        quarantined=quarantine.num_rows - duplicates,
        duplicates=duplicates,
        valid_uri=manifest.uri(manifest.valid_object),
        quarantine_uri=manifest.uri(manifest.quarantine_object),
        seconds=0.0,
        group=manifest.group,
        claimed_at=manifest.claimed_at,
        partners_uri=manifest.uri(manifest.partners_object) if partners.exists() else "",
        skipped=manifest.offsets - valid_rows - quarantine.num_rows,
        anomalies=list(manifest.anomalies),
    )

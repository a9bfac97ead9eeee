"""A micro-batch as every stage sees it: its offset ranges (``Manifest``: the batch id and every
object name derive from the group, topic and ranges), what landing it produced (``Landed``), and
the ids of the batches a recovery or a warehouse cycle makes.

The shared noun of the line: ``ingest`` makes batches, ``warehouse`` and ``sync`` read them,
``ops`` replays, erases and recovers them; none of them needs another stage's module for it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict

from enrollment.core.layout import claim_object

# A batch's byte budget when the caller names none (enrollment.config.Region).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


# A record's Kafka timestamp (CreateTime) is whatever its producer set: Kafka 4 refuses, by
# default, only stamps more than an hour ahead (message.timestamp.after.max.ms; a topic may raise
# it) and any past stamp down to 0. Outside [land time - STAMP_MAX_AGE_MS, land time +
# STAMP_MAX_LEAD_MS] a stamp is implausible: the message is partitioned and aged by its land time
# and the batch records a ``clock`` anomaly. The age bound is Kafka's default retention: older
# records than that are gone, unless a topic keeps them longer (then they count as anomalies too,
# and nothing is lost).
STAMP_MAX_LEAD_MS = 60 * 60 * 1000
STAMP_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000


def implausible_stamp(stamp_ms: int, at_ms: int) -> bool:
    return not at_ms - STAMP_MAX_AGE_MS <= stamp_ms <= at_ms + STAMP_MAX_LEAD_MS


def topic_key(topic: str, incarnation: str = "") -> str:
    """The topic in names and ids: its name, or name@topic id for a later incarnation (a topic
    deleted and created again)."""
    return f"{topic}@{incarnation}" if incarnation else topic


class Anomaly(TypedDict):
    """A gap or rewind found by a claim or a read, or implausible Kafka timestamps (``clock``) of
    a read: a ledger row of its own later."""

    kind: Literal["gap", "rewind", "clock"]
    partition: int
    start: int
    end: int
    detail: str


class Chain(TypedDict):
    """Where the group's landed batches of a topic end (``read_chain``)."""

    ends: dict[int, int]  # partition → one past the last landed offset
    starts: dict[int, int]  # partition → the last landed batch's start
    claim: str  # that batch's claim record
    topic_id: str  # the Kafka topic id its batches were read from ("" before it was recorded)


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
    # The Kafka topic id (a topic deleted and created again under its name gets a new one), and
    # the incarnation: "" for the topic as the group first landed it, else its topic id, which
    # then joins the batch's identity (the new topic's offsets start at 0 again).
    topic_id: str = field(default="", compare=False)
    incarnation: str = ""

    @property
    def topic_key(self) -> str:
        return topic_key(self.topic, self.incarnation)

    @property
    def batch_id(self) -> str:
        """Derived from the group, topic (incarnation) and offset range: the same range is always
        the same batch, and two pipelines (groups) reading one topic never share a batch."""
        key = (
            ("" if self.id_scheme < 2 else self.group + "|")
            + self.topic_key
            + "|"
            + ",".join(f"{r.partition}:{r.start}-{r.end}" for r in self.ranges)
        )
        return f"{self.region.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    @property
    def claim_record(self) -> str:
        return claim_object(
            self.region,
            self.topic_key,
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
            topic_id=data.get("topic_id", ""),
            incarnation=data.get("incarnation", ""),
        )


def batch_region(batch_id: str) -> str:
    """The region of a batch, read from its id (``<region>-<hash>``, or
    ``recovery-<region>-<hash>`` for a recovery batch)."""
    parts = batch_id.split("-")
    return (parts[1] if parts[0] == "recovery" and len(parts) > 2 else parts[0]).upper()


def landing_prefix(batch_id: str) -> str:
    """Where a batch's objects land: ``landing/<REGION>/<batch id>``."""
    return f"landing/{batch_region(batch_id)}/{batch_id}"


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
    # The Kafka timestamp of its p95 message by age (5 % of its messages are older): the freshness
    # gate judges the batch on it (None: landed by an older version; the oldest message stands in).
    p95_kafka_ms: int | None = None
    # Offsets of the range that hold no message (transaction markers, compacted or deleted records).
    skipped: int = 0
    # Gaps and rewinds found by its claim or read: ledger rows of their own.
    anomalies: list[Anomaly] = field(default_factory=list)
    requeued: bool = False  # set aside by a warehouse cycle once, repaired and queued again
    failed_cycles: int = 0  # cycles whose gate this batch failed (its pending record counts them)

    @property
    def bucket(self) -> str:
        """The landing bucket the batch landed in (from its objects' URIs)."""
        return self.valid_uri.removeprefix("gs://").split("/", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Landed:
        """A batch from its record (pending, set aside, XCom); keys it does not know (a newer
        version's) are left out."""
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})


RECOVERY_PREFIX = "recovery-"


def is_recovery_batch(batch_id: str) -> bool:
    return batch_id.startswith(RECOVERY_PREFIX)


def recovery_batch_id(region: str, group: str, topic: str, keys: Iterable[tuple[int, int]]) -> str:
    """The same set of messages is always the same batch: a re-run after a crash finds its
    objects."""
    body = group + "|" + topic + "|" + ",".join(f"{p}:{o}" for p, o in sorted(keys))
    return f"{RECOVERY_PREFIX}{region.lower()}-{hashlib.sha256(body.encode()).hexdigest()[:16]}"


def cycle_id(batches: list[Landed]) -> str:
    return hashlib.sha256("|".join(sorted(b.batch_id for b in batches)).encode()).hexdigest()[:16]

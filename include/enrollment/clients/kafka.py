"""Kafka, as the pipeline reads it: a consumer of the pipeline's group that is assigned ranges
(never subscribed), the topic's partitions as the cluster reports them, what is pending per
partition, and committing a landed range. Offsets and metadata only: no record is decoded here,
and nothing here imports pyarrow or pandas (the backlog trigger imports this in the triggerer)."""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from enrollment.core.batch import Manifest

if TYPE_CHECKING:
    from confluent_kafka import Consumer

log = logging.getLogger(__name__)


# What the pipeline decides for itself, whatever the connection says: its group and when it
# commits (only a durable batch moves the group), what it reads (committed data only), where a new
# group starts, its producers' delivery guarantees. A connection setting one is refused.
OWNED = frozenset(
    {
        "group.id",
        "group.instance.id",
        "group.protocol",
        "partition.assignment.strategy",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "isolation.level",
        "enable.partition.eof",
        "enable.idempotence",
        "transactional.id",
        "acks",
        "request.required.acks",
    }
)

# librdkafka's consumer-only (C) and producer-only (P) properties: each client is given only
# what applies to it (a producer given a consumer's property logs a warning per instance).
CONSUMER_ONLY = frozenset(
    {
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "group.protocol.type",
        "group.remote.assignor",
        "coordinator.query.interval.ms",
        "max.poll.interval.ms",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
        "offset.store.method",
        "consume_cb",
        "rebalance_cb",
        "offset_commit_cb",
        "on_commit",
        "check.crcs",
        "consume.callback.max.messages",
    }
)
PRODUCER_ONLY = frozenset(
    {
        "transaction.timeout.ms",
        "enable.gapless.guarantee",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.ms",
        "linger.ms",
        "message.send.max.retries",
        "retries",
        "queue.buffering.backpressure.threshold",
        "compression.codec",
        "compression.type",
        "compression.level",
        "batch.num.messages",
        "batch.size",
        "delivery.report.only.error",
        "dr_cb",
        "dr_msg_cb",
        "on_delivery",
        "sticky.partitioning.linger.ms",
        "request.timeout.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "queuing.strategy",
        "produce.offset.report",
        "partitioner",
        "partitioner_cb",
        "msg_order_cmp",
    }
)

_EITHER_ONLY = CONSUMER_ONLY | PRODUCER_ONLY  # what an admin client is never given

# Shown in a repr (and so in any message quoting the settings); every other value is not.
_SHOWN = ("bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms")


class KafkaSettingsError(ValueError):
    """A Kafka connection the pipeline cannot use as it stands; the message says what to change."""


# eq=False: compared and hashed by identity (a mapping of settings cannot be hashed).
@dataclass(frozen=True, repr=False, eq=False)
class KafkaSettings:
    """How to reach Kafka: the librdkafka settings of a connection (brokers, TLS, SASL, tuning;
    the Kafka provider's ``kafka_default`` extra) and where they come from, for messages. Each
    client kind takes what applies to it plus what the pipeline owns (``OWNED``, refused here).
    Its repr shows the brokers and the protocol only: passwords and keys never reach a log."""

    config: Mapping[str, Any]
    source: str = "the environment"

    def __post_init__(self) -> None:
        if not isinstance(self.config, Mapping):
            raise KafkaSettingsError(f"Kafka settings from {self.source}: not a JSON object")
        if not self.config.get("bootstrap.servers"):
            raise KafkaSettingsError(
                f"Kafka settings from {self.source}: set `bootstrap.servers` (host:port, ...)"
            )
        owned = sorted(OWNED.intersection(self.config))
        if owned:
            raise KafkaSettingsError(
                f"Kafka settings from {self.source} set {', '.join(owned)}: the pipeline sets "
                "these itself (its consumer group, commits only of landed batches, committed "
                "reads); remove them from the connection's extra (docs/deploy.md, 'Connections')"
            )

    @classmethod
    def plaintext(cls, bootstrap: str) -> KafkaSettings:
        return cls({"bootstrap.servers": bootstrap})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """``KAFKA_BOOTSTRAP_SERVERS``, and ``KAFKA_CLIENT_CONFIG`` (a JSON object of librdkafka
        settings: TLS, SASL) when set: the command-line tools' and the tests' Kafka."""
        env = os.environ if env is None else env
        source = "KAFKA_BOOTSTRAP_SERVERS/KAFKA_CLIENT_CONFIG"
        try:
            extra = json.loads(env.get("KAFKA_CLIENT_CONFIG") or "{}")
        except ValueError:
            raise KafkaSettingsError(f"{source}: KAFKA_CLIENT_CONFIG is not JSON") from None
        if not isinstance(extra, dict):
            raise KafkaSettingsError(f"{source}: KAFKA_CLIENT_CONFIG is not a JSON object")
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            extra["bootstrap.servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        return cls(extra, source)

    @property
    def bootstrap(self) -> str:
        return str(self.config["bootstrap.servers"])

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={self.config[k]!r}" for k in _SHOWN if k in self.config)
        return f"KafkaSettings({self.source}: {shown})"

    def consumer(self, owned: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in PRODUCER_ONLY} | dict(owned)

    def producer(self, owned: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in CONSUMER_ONLY} | dict(owned or {})

    def admin(self, owned: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in _EITHER_ONLY} | dict(owned or {})


def group_consumer(kafka: KafkaSettings, group: str) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(
        kafka.consumer(
            {
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
            }
        )
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


# One admin client per settings object, kept: a claim asks for the topic id every batch, and a
# new client costs ~37 ms of CPU (its TLS and SASL handshake), a question on a kept one ~0.5 ms.
_admins: weakref.WeakKeyDictionary[KafkaSettings, Any] = weakref.WeakKeyDictionary()


@_kafka_retry
def topic_id(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> str:
    """The topic's id on the cluster (Kafka gives a topic deleted and created again a new one)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = _admins.get(kafka)
    if admin is None:
        admin = _admins[kafka] = AdminClient(kafka.admin())
    try:
        described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout)
    except Exception:
        _admins.pop(kafka, None)  # made again at the next question (a moved or restarted broker)
        raise
    return str(described.topic_id)


@_kafka_retry
def pending_ranges(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    partitions: int | None = None,
    timeout: float = 10.0,
) -> list[tuple[int, int, int]]:
    """(partition, committed or earliest offset, end offset) for every partition of the topic on
    the cluster; ``partitions`` is the configured count, only compared. Reads offsets only."""
    consumer = group_consumer(kafka, group)
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
def commit_range(kafka: KafkaSettings, manifest: Manifest) -> None:
    """Moves the group past the batch; called only once the batch is durable."""
    from confluent_kafka import TopicPartition

    consumer = group_consumer(kafka, manifest.group)
    try:
        # Every partition, the empty ones too: after a rewind the group's offset moves back to
        # the landed end.
        consumer.commit(
            offsets=[TopicPartition(manifest.topic, r.partition, r.end) for r in manifest.ranges],
            asynchronous=False,
        )
    finally:
        consumer.close()

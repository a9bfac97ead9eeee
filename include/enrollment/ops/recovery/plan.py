"""The recovery's plan: which quarantined messages of the window could come back.

It reads the quarantine rows of a window (a constant filter on ``kafka_timestamp``, the table's
partition column), for the regions and reasons asked, never the in-batch duplicates and never a
message already recovered. The stored ``raw`` is masked (``core.pii.mask_raw``) and cannot be
validated again, so each message's **original bytes are read back from Kafka** by (topic,
partition, offset): Kafka is the record. A message the topic no longer holds (retention) is
``expired``, a message whose partner was erased is ``erased``, an event whose id is already in
``events`` (a producer resent it fixed) is ``already_in_events``; the rest are validated with
``ingest.validation.validate_guarded`` — the call ``land`` makes — and are ``recoverable`` or
``still_invalid``."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from enrollment.clients.bigquery import sql_timestamp as _ts
from enrollment.clients.kafka import KafkaSettings, group_consumer
from enrollment.core.batch import implausible_stamp, is_recovery_batch
from enrollment.core.windows import day_start
from enrollment.ingest.suppression import erased_among, suppressed
from enrollment.ingest.validation.validate import validate_guarded
from enrollment.ops.recovery.request import RecoveryRequest, reasons_regex

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

    from enrollment.clients.bigquery import BigQuery
    from enrollment.config import PipelineConfig
    from enrollment.core.pii import Keyring


# Outcomes of a candidate, in the order a message meets them; they partition ``candidates``.
OUTCOMES = (
    "already_recovered",
    "expired",
    "still_invalid",
    "erased",
    "already_in_events",
    "recoverable",
)


# Offsets between two wanted messages past which the reader seeks instead of reading through.
SEEK_GAP = 1_000


@dataclass
class Candidate:
    origin_batch_id: str
    region: str
    kafka_partition: int
    kafka_offset: int
    kafka_timestamp: datetime
    reasons: str
    outcome: str = ""
    event_id: str | None = None  # from the re-validated message


@dataclass
class RegionPlan:
    region: str
    topic: str
    candidates: list[Candidate] = field(default_factory=list)
    # The recoverable messages' original bytes (never leaves the process).
    messages: pa.Table | None = None

    @property
    def recoverable(self) -> list[Candidate]:
        return [c for c in self.candidates if c.outcome == "recoverable"]


@dataclass
class RecoveryPlan:
    request: RecoveryRequest
    regions: dict[str, RegionPlan]

    def counts(self, recovered: bool = False) -> dict[str, Any]:
        """Counts only, by region and by the rows' reasons: no partner id, no message byte."""

        def rename(o: str) -> str:
            return "recovered" if recovered and o == "recoverable" else o

        names = ["candidates", *map(rename, OUTCOMES)]

        def tally(cands: list[Candidate]) -> dict[str, int]:
            n = Counter(rename(c.outcome) for c in cands)
            return {"candidates": len(cands)} | {k: n.get(k, 0) for k in names[1:]}

        out: dict[str, dict[str, Any]] = {}
        for code, rp in sorted(self.regions.items()):
            by_reason: dict[str, list[Candidate]] = defaultdict(list)
            for c in rp.candidates:
                by_reason[c.reasons].append(c)
            out[code] = {
                "total": tally(rp.candidates),
                "by_reason": {r: tally(cs) for r, cs in sorted(by_reason.items())},
            }
        everything = [c for rp in self.regions.values() for c in rp.candidates]
        return {"request": self.request.describe(), "regions": out, "total": tally(everything)}


def _tables(w: BigQuery) -> set[str]:
    tables, ops = w.existing_tables()
    return tables | {f"ops.{t}" for t in ops}


def _candidates(
    w: BigQuery, request: RecoveryRequest, region: str, have: set[str]
) -> list[Candidate]:
    """The window's quarantine rows of the region that match the reasons, once per offset, those
    already recovered marked so (both tables read within the window: partitions pruned)."""
    from google.cloud import bigquery

    if "quarantine" not in have:
        return []
    params = [bigquery.ScalarQueryParameter("region", "STRING", region)]
    pattern = reasons_regex(request.reasons)
    if pattern:
        params.append(bigquery.ScalarQueryParameter("pattern", "STRING", pattern))
    recovered = (
        f"""LEFT JOIN (SELECT DISTINCT kafka_partition, kafka_offset
                 FROM {w.table("recovered", ops=True)} WHERE region = @region) R
                 ON R.kafka_partition = Q.kafka_partition AND R.kafka_offset = Q.kafka_offset"""
        if "ops.recovered" in have
        else ""
    )
    rows = w.run(
        f"""SELECT Q.batch_id, Q.kafka_partition, Q.kafka_offset, Q.kafka_timestamp, Q.reasons,
                            {"R.kafka_offset IS NOT NULL" if recovered else "FALSE"} AS done
        FROM {w.table("quarantine")} Q {recovered}
        WHERE Q.kafka_timestamp >= {_ts(request.since)} AND Q.kafka_timestamp < {_ts(request.until)}
          AND Q.region = @region AND NOT Q.duplicate_only
          {"AND REGEXP_CONTAINS(Q.reasons, @pattern)" if pattern else ""}
        ORDER BY Q.kafka_partition, Q.kafka_offset""",
        params,
    )
    out: list[Candidate] = []
    seen: set[tuple[int, int]] = set()
    for r in rows:
        key = (r["kafka_partition"], r["kafka_offset"])
        if key in seen or not request.matches(r["reasons"]):
            continue
        seen.add(key)
        out.append(
            Candidate(
                r["batch_id"],
                region,
                int(r["kafka_partition"]),
                int(r["kafka_offset"]),
                r["kafka_timestamp"],
                r["reasons"],
                "already_recovered" if r["done"] else "",
            )
        )
    return out


def fetch(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    wanted: Iterable[tuple[int, int]],
    timeout_s: float = 120.0,
) -> pa.Table:
    """The messages at these (partition, offset)s, in ``ingest.read.read_range``'s columns;
    offsets the topic no longer holds (retention, compaction) are simply absent. Assigns, never
    commits."""
    from confluent_kafka import TopicPartition

    by_partition: dict[int, list[int]] = defaultdict(list)
    for p, o in wanted:
        by_partition[p].append(o)
    cols: dict[str, list[Any]] = {
        "kafka_partition": [],
        "kafka_offset": [],
        "kafka_timestamp": [],
        "kafka_key": [],
        "value": [],
    }
    consumer = group_consumer(kafka, group)
    try:
        for p, offsets in sorted(by_partition.items()):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            todo = sorted(o for o in set(offsets) if low <= o < high)
            if not todo:
                continue
            i, deadline = 0, time.monotonic() + timeout_s
            consumer.assign([TopicPartition(topic, p, todo[0])])
            while i < len(todo):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"kafka: {topic} partition {p}: {len(todo) - i} quarantined offsets "
                        f"not read after {timeout_s:.0f} s"
                    )
                batch = consumer.consume(num_messages=1_000, timeout=0.5)
                for msg in batch:
                    if msg.error() is not None:
                        raise RuntimeError(f"kafka: reading {topic} partition {p}: {msg.error()}")
                    at = msg.offset()
                    assert at is not None, "set on every message without an error"
                    while i < len(todo) and todo[i] < at:
                        i += 1  # compacted away (or a transaction marker): absent
                    if i < len(todo) and todo[i] == at:
                        for name, value in (
                            ("kafka_partition", p),
                            ("kafka_offset", at),
                            ("kafka_timestamp", msg.timestamp()[1]),
                            ("kafka_key", msg.key()),
                            ("value", msg.value()),
                        ):
                            cols[name].append(value)
                        i += 1
                    if i < len(todo) and todo[i] - at > SEEK_GAP:
                        # Quarantine is sparse: never read a day through.
                        consumer.seek(TopicPartition(topic, p, todo[i]))
                        break
                if not batch and i < len(todo):
                    position = consumer.position([TopicPartition(topic, p)])[0].offset
                    if position >= high:
                        break  # the rest were not there to read
            consumer.unassign()
    finally:
        consumer.close()
    return pa.table(
        {
            "kafka_partition": pa.array(cols["kafka_partition"], pa.int32()),
            "kafka_offset": pa.array(cols["kafka_offset"], pa.int64()),
            "kafka_timestamp": pa.array(cols["kafka_timestamp"], pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array(cols["kafka_key"], pa.binary()),
            "value": pa.array(cols["value"], pa.binary()),
        }
    )


def _in_events(
    w: BigQuery, request: RecoveryRequest, event_ids: list[str], have: set[str], dedup_days: int
) -> dict[str, set[tuple[str, int, int]]]:
    """Which of these event ids ``events`` already holds, and where (batch, partition, offset):
    arrived from the warehouse's dedup window before the request's window up to now (a fixed resend
    usually arrives after the broken copy)."""
    from google.cloud import bigquery

    if not event_ids or "events" not in have:
        return {}
    lo, hi = (
        day_start(request.since) - timedelta(days=dedup_days),
        day_start(datetime.now(UTC)) + timedelta(days=1),
    )
    rows = w.run(
        f"""SELECT DISTINCT event_id, batch_id, kafka_partition, kafka_offset
        FROM {w.table("events")}
        WHERE kafka_timestamp >= {_ts(lo)} AND kafka_timestamp < {_ts(hi)}
          AND event_id IN UNNEST(@ids)""",
        [bigquery.ArrayQueryParameter("ids", "STRING", sorted(set(event_ids)))],
    )
    out: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
    for r in rows:
        out[r["event_id"]].add((r["batch_id"], int(r["kafka_partition"]), int(r["kafka_offset"])))
    return out


def plan(
    w: BigQuery,
    bucket: Bucket,
    keyring: Keyring,
    kafka: KafkaSettings,
    config: PipelineConfig,
    request: RecoveryRequest,
) -> RecoveryPlan:
    """What a recovery of ``request`` would do, message by message (see the module's doc)."""
    have = _tables(w)
    erased_tokens = suppressed(bucket)
    dedup_days = getattr(config.warehouse, "dedup_window_days", 1)
    out = RecoveryPlan(request, {})
    for code in request.regions:
        region = config.region(code)
        rp = out.regions[code] = RegionPlan(code, region.topic, _candidates(w, request, code, have))
        todo = {(c.kafka_partition, c.kafka_offset): c for c in rp.candidates if not c.outcome}
        if not todo:
            continue
        messages = fetch(kafka, f"{config.consumer_group}-recovery", region.topic, list(todo))
        # The message at that offset must be the one quarantined: a topic recreated since reuses
        # offsets. Its stamp is the row's, or one the land replaced by its land time (the row's).
        stamps = messages.column("kafka_timestamp").cast(pa.int64()).to_pylist()
        coordinates = list(
            zip(
                messages.column("kafka_partition").to_pylist(),
                messages.column("kafka_offset").to_pylist(),
                strict=True,
            )
        )
        recorded = [int(todo[key].kafka_timestamp.timestamp() * 1000) for key in coordinates]
        keep = [
            i
            for i in range(len(coordinates))
            if abs(stamps[i] - recorded[i]) < 2 or implausible_stamp(stamps[i], recorded[i])
        ]
        messages = messages.take(pa.array(keep, pa.int64()))
        messages = messages.set_column(
            messages.schema.get_field_index("kafka_timestamp"),
            "kafka_timestamp",
            pa.array([recorded[i] for i in keep], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        )
        found = set(
            zip(
                messages.column("kafka_partition").to_pylist(),
                messages.column("kafka_offset").to_pylist(),
                strict=True,
            )
        )
        for key, c in todo.items():
            if key not in found:
                c.outcome = "expired"  # no longer in Kafka: counted, never an error
        result = validate_guarded(messages.column("value").to_pylist())
        keys = list(
            zip(
                messages.column("kafka_partition").to_pylist(),
                messages.column("kafka_offset").to_pylist(),
                strict=True,
            )
        )
        for i, why in zip(
            result.quarantine.column("source_index").to_pylist(),
            result.quarantine.column("reasons").to_pylist(),
            strict=True,
        ):
            # A copy of an event this same set recovers (a producer's resend, quarantined twice):
            # the copy's event is being brought in, the copy itself never is.
            todo[keys[i]].outcome = (
                "already_in_events" if why == ["duplicate_event_id"] else "still_invalid"
            )
        valid_index = result.valid.column("source_index").to_pylist()
        partner_ids = result.valid.column("partner_id").to_pylist()
        event_ids = result.valid.column("event_id").to_pylist()
        erased = (
            erased_among({p for p in partner_ids if p}, keyring, erased_tokens)
            if erased_tokens
            else set()
        )
        held = _in_events(
            w,
            request,
            [e for e, p in zip(event_ids, partner_ids, strict=True) if p not in erased],
            have,
            dedup_days,
        )
        chosen: list[int] = []
        for i, partner, event in zip(valid_index, partner_ids, event_ids, strict=True):
            c = todo[keys[i]]
            c.event_id = event
            # Held only as this very message by a recovery batch: a run that died after landing it,
            # before recording it. Still recoverable: the same set lands the same batch again
            # (write-once), it is recorded now, and the warehouse drops an event id it holds.
            by_others = any(
                not (is_recovery_batch(b) and (p, o) == keys[i]) for b, p, o in held.get(event, ())
            )
            c.outcome = (
                "erased"
                if partner in erased
                else "already_in_events"
                if by_others
                else "recoverable"
            )
            if c.outcome == "recoverable":
                chosen.append(i)
        rp.messages = messages.take(pa.array(sorted(chosen), pa.int64()))
    return out

"""Quarantine re-processing: messages quarantined under an older contract, validated again with
today's and, where now valid, brought through the normal warehouse and sink path exactly once.

- ``plan`` reads the quarantine rows of a window (a constant filter on ``kafka_timestamp``, the
  table's partition column), for the regions and reasons asked, never the in-batch duplicates and
  never a message already recovered. The stored ``raw`` is masked (``pii.mask_raw``) and cannot be
  validated again, so each message's **original bytes are read back from Kafka** by (topic,
  partition, offset): Kafka is the record. A message the topic no longer holds (retention) is
  ``expired``, a message whose partner was erased is ``erased``, an event whose id is already in
  ``events`` (a producer resent it fixed) is ``already_in_events``; the rest are validated with
  ``validation.validate_guarded`` — the call ``batches.land`` makes — and are ``recoverable`` or
  ``still_invalid``.
- ``recover`` lands the recoverable messages of each region as **one recovery batch**, exactly as
  ``land`` lands a batch (``batches.shape_batch`` and ``batches.write_batch``), under an id derived
  from the set of messages (``recovery-<region>-<hash>``), and queues it for the pipeline's
  warehouse writer (``batches.mark_pending``): the ``warehouse`` DAG and the sink DAGs carry it.
  Then each message is recorded in ``<ops>.recovered`` (keyed on region, partition, offset: a
  message is recovered at most once) and each origin batch gets a ``recovered`` ledger row.

Exactly once: the same set of messages is the same batch id, its objects are write-once and its
pending record too, and a batch the warehouse already wrote is not queued again; a crash between
landing and recording converges on the next run. The warehouse dedups event ids in its window
anyway. Nothing here writes ``events``, ``partners`` or ``quarantine``: the warehouse DAG stays
their one writer (the quarantine rows stay, the ``recovered`` table says which came back).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .warehouse import sql_timestamp as _ts

if TYPE_CHECKING:
    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Bucket

    from .config import PipelineConfig
    from .pii import Keyring
    from .warehouse import Warehouse

log = logging.getLogger(__name__)

RECOVERY_PREFIX = "recovery-"
MAX_WINDOW = timedelta(days=31)  # a month of quarantine partitions at most per run
DEFAULT_WINDOW = timedelta(days=7)
EXCLUDED_BY_DEFAULT = "duplicate_event_id"  # an in-batch copy is never a message to bring back
# Outcomes of a candidate, in the order a message meets them; they partition ``candidates``.
OUTCOMES = (
    "already_recovered",
    "expired",
    "still_invalid",
    "erased",
    "already_in_events",
    "recoverable",
)
RECOVERED_SCHEMA = [
    ("region", "STRING"),
    ("kafka_partition", "INT64"),
    ("kafka_offset", "INT64"),
    ("origin_batch_id", "STRING"),
    ("recovery_batch_id", "STRING"),
    ("event_id", "STRING"),
    ("reasons", "STRING"),
    ("recovered_at", "TIMESTAMP"),
    ("dag_run", "STRING"),
]
RECOVERED_KEY = ("region", "kafka_partition", "kafka_offset")
# Recorded rows per MERGE: 9 query parameters each, well under BigQuery's limits.
ROWS_PER_STATEMENT = 500
# Offsets between two wanted messages past which the reader seeks instead of reading through.
SEEK_GAP = 1_000


_EN_DASH = "–"  # joins the window's two ends


def is_recovery_batch(batch_id: str) -> bool:
    return batch_id.startswith(RECOVERY_PREFIX)


# -- the request -----------------------------------------------------------------------------------
class RequestError(ValueError):
    """A parameter of the run that cannot be honoured; the message says which and why."""


def _known_reason(code: str) -> bool:
    """A reason code the validator can give (``missing`` and ``missing:payload.email`` both are)."""
    from .validation import REASON_CODES

    for known in REASON_CODES:
        stem = known.split(":<", 1)[0]
        if code in (known, stem) or (known.endswith(">") and code.startswith(stem + ":")):
            return True
    return False


def _instant(value: object, name: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RequestError(
                f"{name}: {value!r} is not an ISO 8601 date-time (e.g. 2026-11-23T00:00:00Z)"
            ) from None
    else:
        raise RequestError(
            f"{name}: expected an ISO 8601 date-time string, got {type(value).__name__}"
        )
    return (
        at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    )  # naive: UTC, as the form says


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RequestError(f"{name}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class Request:
    regions: tuple[str, ...]
    since: datetime
    until: datetime
    reasons: tuple[str, ...]  # empty: every reason but duplicate_event_id
    dry_run: bool = True
    unknown_reasons: tuple[
        str, ...
    ] = ()  # filters no validator reason has: allowed (older codes), reported

    @classmethod
    def parse(
        cls, params: Mapping[str, Any], regions: Sequence[str], now: datetime | None = None
    ) -> Request:
        """The run's params (``region``, ``since``, ``until``, ``reasons``, ``dry_run``) checked."""
        now = now or datetime.now(UTC)
        region = str(params.get("region") or "ALL").strip().upper()
        if region != "ALL" and region not in regions:
            raise RequestError(
                f"region: {region!r} is not a region of the pipeline "
                f"(one of ALL, {', '.join(regions)})"
            )
        until = _instant(params.get("until"), "until") or now
        since = _instant(params.get("since"), "since") or until - DEFAULT_WINDOW
        if since >= until:
            raise RequestError(f"since {since.isoformat()} is not before until {until.isoformat()}")
        if until - since > MAX_WINDOW:
            raise RequestError(
                f"the window {since.isoformat()} {_EN_DASH} {until.isoformat()} "
                f"spans {(until - since).days} days; "
                f"at most {MAX_WINDOW.days} days per run (run once per month of quarantine)"
            )
        raw = params.get("reasons") or []
        if isinstance(raw, str):
            raw = [r for r in raw.split(",")]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(r, str) for r in raw):
            raise RequestError(f"reasons: expected a list of reason codes, got {raw!r}")
        reasons = tuple(dict.fromkeys(r.strip() for r in raw if r.strip()))
        return cls(
            regions=tuple(regions) if region == "ALL" else (region,),
            since=since,
            until=until,
            reasons=reasons,
            dry_run=_flag(params.get("dry_run", True), "dry_run"),
            unknown_reasons=tuple(r for r in reasons if not _known_reason(r)),
        )

    def matches(self, reasons: str) -> bool:
        return matches(reasons, self.reasons)

    def describe(self) -> dict[str, Any]:
        return {
            "regions": list(self.regions),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "reasons": list(self.reasons),
            "dry_run": self.dry_run,
            "unknown_reasons": list(self.unknown_reasons),
        }


def matches(reasons: str, filters: Sequence[str]) -> bool:
    """A quarantine row's reasons (comma-joined) match when one equals a filter or starts with
    ``<filter>:``; no filter: any reason but ``duplicate_event_id``."""
    codes = [r for r in (reasons or "").split(",") if r]
    if not filters:
        return any(c != EXCLUDED_BY_DEFAULT for c in codes)
    return any(c == f or c.startswith(f + ":") for c in codes for f in filters)


def reasons_regex(filters: Sequence[str]) -> str | None:
    """``matches`` as a regular expression over the comma-joined column (None: no filter), so the
    window's rows are filtered where they are stored."""
    if not filters:
        return None
    return "(^|,)(" + "|".join(re.escape(f) for f in filters) + ")(:[^,]*)?(,|$)"


def recovery_batch_id(region: str, group: str, topic: str, keys: Iterable[tuple[int, int]]) -> str:
    """The same set of messages is always the same batch: a re-run after a crash finds its
    objects."""
    body = group + "|" + topic + "|" + ",".join(f"{p}:{o}" for p, o in sorted(keys))
    return f"{RECOVERY_PREFIX}{region.lower()}-{hashlib.sha256(body.encode()).hexdigest()[:16]}"


def _day(at: datetime) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


# -- the plan -------------------------------------------------------------------------------------
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
class Plan:
    request: Request
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


def _tables(w: Warehouse) -> set[str]:
    tables, ops = w.existing_tables()
    return tables | {f"ops.{t}" for t in ops}


def _candidates(w: Warehouse, request: Request, region: str, have: set[str]) -> list[Candidate]:
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
    bootstrap: str,
    group: str,
    topic: str,
    wanted: Iterable[tuple[int, int]],
    timeout_s: float = 120.0,
) -> pa.Table:
    """The messages at these (partition, offset)s, in ``batches.read_range``'s columns; offsets the
    topic no longer holds (retention, compaction) are simply absent. Assigns, never commits."""
    from confluent_kafka import TopicPartition

    from .batches import _consumer

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
    consumer = _consumer(bootstrap, group)
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
    w: Warehouse, request: Request, event_ids: list[str], have: set[str], dedup_days: int
) -> dict[str, set[tuple[str, int, int]]]:
    """Which of these event ids ``events`` already holds, and where (batch, partition, offset):
    arrived from the warehouse's dedup window before the request's window up to now (a fixed resend
    usually arrives after the broken copy)."""
    from google.cloud import bigquery

    if not event_ids or "events" not in have:
        return {}
    lo, hi = (
        _day(request.since) - timedelta(days=dedup_days),
        _day(datetime.now(UTC)) + timedelta(days=1),
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
    w: Warehouse,
    bucket: Bucket,
    keyring: Keyring,
    bootstrap: str,
    config: PipelineConfig,
    request: Request,
) -> Plan:
    """What a recovery of ``request`` would do, message by message (see the module's doc)."""
    from .erasure import erased_among, suppressed
    from .validation import validate_guarded

    have = _tables(w)
    erased_tokens = suppressed(bucket)
    dedup_days = getattr(config.warehouse, "dedup_window_days", 1)
    out = Plan(request, {})
    for code in request.regions:
        region = config.region(code)
        rp = out.regions[code] = RegionPlan(code, region.topic, _candidates(w, request, code, have))
        todo = {(c.kafka_partition, c.kafka_offset): c for c in rp.candidates if not c.outcome}
        if not todo:
            continue
        messages = fetch(bootstrap, f"{config.consumer_group}-recovery", region.topic, list(todo))
        # The message at that offset must be the one quarantined: a topic recreated since reuses
        # offsets.
        stamps = messages.column("kafka_timestamp").to_pylist()
        keep = [
            i
            for i, (p, o) in enumerate(
                zip(
                    messages.column("kafka_partition").to_pylist(),
                    messages.column("kafka_offset").to_pylist(),
                    strict=True,
                )
            )
            if abs(stamps[i].timestamp() - todo[(p, o)].kafka_timestamp.timestamp()) < 0.002
        ]
        messages = messages.take(pa.array(keep, pa.int64()))
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


# -- the recovery ---------------------------------------------------------------------------------
def _warehoused(w: Warehouse, batch_id: str) -> bool:
    """The warehouse already wrote this recovery batch (its ledger row, within a constant
    lookback)."""
    from .cycle import Window

    w.ensure_ledger()
    now = datetime.now(UTC)
    return bool(
        w.warehoused(
            [batch_id],
            Window(_day(now) - MAX_WINDOW - timedelta(days=1), _day(now) + timedelta(days=1)),
        )
    )


def land_recovery(
    w: Warehouse, bucket: Bucket, keyring: Keyring, config: PipelineConfig, rp: RegionPlan
) -> dict[str, Any]:
    """The region's recoverable messages as one recovery batch, landed as ``land`` lands one and
    queued for the pipeline's warehouse writer; its ids and counts."""
    import pyarrow.compute as pc

    from .batches import GateError, Landed, landing_prefix, mark_pending, shape_batch, write_batch
    from .validation import validate_guarded

    t0 = time.monotonic()
    messages = rp.messages
    assert messages is not None, "plan() sets the messages of a region with recoverable ones"
    keys = list(
        zip(
            messages.column("kafka_partition").to_pylist(),
            messages.column("kafka_offset").to_pylist(),
            strict=True,
        )
    )
    batch_id = recovery_batch_id(rp.region, config.consumer_group, rp.topic, keys)
    result = validate_guarded(messages.column("value").to_pylist())
    messages, valid, quarantine, _duplicates = shape_batch(
        result, messages, batch_id, rp.region, keyring
    )
    if valid.num_rows != messages.num_rows or quarantine.num_rows:
        raise GateError(
            f"recovery gate, batch {batch_id}: {messages.num_rows} messages planned as valid, "
            f"{valid.num_rows} valid now"
        )
    prefix = landing_prefix(
        batch_id
    )  # landing/<REGION>/<id>: where the sinks read a batch's objects (sync.Plan)
    valid, quarantine = write_batch(bucket, prefix, batch_id, valid, quarantine, keyring)
    stamps = messages.column("kafka_timestamp")
    first, last = pc.min(stamps).as_py(), pc.max(stamps).as_py()

    def uri(name: str) -> str:
        return f"gs://{bucket.name}/{prefix}/{name}.parquet"

    landed = Landed(
        batch_id=batch_id,
        region=rp.region,
        offsets=messages.num_rows,
        valid=valid.num_rows,
        quarantined=0,
        duplicates=0,
        valid_uri=uri("valid"),
        quarantine_uri=uri("quarantine"),
        seconds=round(time.monotonic() - t0, 3),
        group=config.consumer_group,
        # Claimed now: the lag monitor measures how long it waits, not how old its messages are.
        claimed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        partners_uri=uri("partners"),
        first_kafka_ms=int(first.timestamp() * 1000),
        last_kafka_ms=int(last.timestamp() * 1000),
    )
    queued = not _warehoused(w, batch_id)
    if queued:  # a re-run after the warehouse wrote it must not hand it over again
        mark_pending(bucket, landed)
    return {"batch_id": batch_id, "events": valid.num_rows, "queued": queued}


def _record(w: Warehouse, rp: RegionPlan, batch_id: str, dag_run: str) -> int:
    """The recovered messages, each once whatever the runs (a MERGE that never updates)."""
    from google.cloud import bigquery

    table = w.table("recovered", ops=True)
    schema = ", ".join(f"`{c}` {t}" for c, t in RECOVERED_SCHEMA)
    w.run(f"CREATE TABLE IF NOT EXISTS {table} ({schema})")
    now = datetime.now(UTC)
    rows = [
        {
            "region": c.region,
            "kafka_partition": c.kafka_partition,
            "kafka_offset": c.kafka_offset,
            "origin_batch_id": c.origin_batch_id,
            "recovery_batch_id": batch_id,
            "event_id": c.event_id,
            "reasons": c.reasons,
            "recovered_at": now,
            "dag_run": dag_run,
        }
        for c in rp.recoverable
    ]
    columns = ", ".join(f"`{c}`" for c, _ in RECOVERED_SCHEMA)
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        params: list[bigquery.ScalarQueryParameter] = []
        selects: list[str] = []
        for i, row in enumerate(chunk):
            params += [
                bigquery.ScalarQueryParameter(f"c{i}_{j}", kind, row[c])
                for j, (c, kind) in enumerate(RECOVERED_SCHEMA)
            ]
            selects.append(
                "SELECT "
                + ", ".join(f"@c{i}_{j} AS `{c}`" for j, (c, _) in enumerate(RECOVERED_SCHEMA))
            )
        on = " AND ".join(f"T.`{c}` = S.`{c}`" for c in RECOVERED_KEY)
        values = ", ".join(f"S.`{c}`" for c, _ in RECOVERED_SCHEMA)
        w.run(
            f"""MERGE {table} T USING ({" UNION ALL ".join(selects)}) S ON {on}
            WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})""",
            params,
        )
    return len(rows)


def record_ledger(w: Warehouse, origin_batches: Sequence[str], since: datetime) -> None:
    """Per origin batch, its ``recovered`` ledger row: its landed numbers, ``quarantined`` those
    still quarantined and ``recovered`` every message of it recovered so far (counted from the
    ``recovered`` table, so writing it again gives the same row). The origin's ``land`` row was
    recorded after its messages arrived: the ledger is read from the window's first day on."""
    from google.cloud import bigquery

    if not origin_batches:
        return
    w.ensure_ledger()
    ledger, lo = w.table("ledger", ops=True), _ts(_day(since) - timedelta(days=1))
    cols = [
        "batch_id",
        "region",
        "stage",
        "offsets_in",
        "valid",
        "quarantined",
        "duplicates",
        "rows_merged",
        "seconds",
        "ok",
        "detail",
        "recorded_at",
        "skipped",
        "recovered",
    ]
    w.run(
        f"""MERGE {ledger} T USING (
            SELECT L.batch_id, L.region, 'recovered' AS stage, L.offsets_in, L.valid,
                   L.quarantined - R.n AS quarantined, L.duplicates,
                   R.n AS rows_merged, 0.0 AS seconds, TRUE AS ok,
                   CONCAT('recovered ', CAST(R.n AS STRING), ' of ', CAST(L.quarantined AS STRING),
                          ' quarantined: ', R.batches) AS detail,
                   CURRENT_TIMESTAMP() AS recorded_at, COALESCE(L.skipped, 0) AS skipped,
                   R.n AS recovered
            FROM {ledger} L JOIN (
                SELECT origin_batch_id, COUNT(*) AS n,
                       STRING_AGG(DISTINCT recovery_batch_id, ', ') AS batches
                FROM {w.table("recovered", ops=True)}
                WHERE origin_batch_id IN UNNEST(@ids) GROUP BY origin_batch_id) R
              ON R.origin_batch_id = L.batch_id
            WHERE L.recorded_at >= {lo} AND L.stage = 'land' AND L.batch_id IN UNNEST(@ids)) S
        ON T.recorded_at >= {lo} AND T.batch_id = S.batch_id AND T.stage = S.stage
        WHEN MATCHED AND (T.recovered IS NULL OR T.recovered != S.recovered)
          THEN UPDATE SET {", ".join(f"{c} = S.{c}" for c in cols[3:])}
        WHEN NOT MATCHED THEN INSERT ({", ".join(cols)})
          VALUES ({", ".join("S." + c for c in cols)})""",
        [bigquery.ArrayQueryParameter("ids", "STRING", sorted(set(origin_batches)))],
    )


def recover(
    w: Warehouse,
    bucket: Bucket,
    keyring: Keyring,
    bootstrap: str,
    config: PipelineConfig,
    request: Request,
    dag_run: str = "",
) -> dict[str, Any]:
    """Plans again (the plan never travels: it holds message bytes) and recovers; the counts, with
    ``recovered`` where the plan said ``recoverable``, and each region's recovery batch."""
    done = plan(w, bucket, keyring, bootstrap, config, request)
    batches: dict[str, dict[str, Any]] = {}
    for code, rp in sorted(done.regions.items()):
        if not rp.recoverable:
            continue
        batches[code] = land_recovery(w, bucket, keyring, config, rp)
        # Recorded only once landed and queued: a crash before this line lands the same batch
        # again.
        _record(w, rp, batches[code]["batch_id"], dag_run)
        record_ledger(w, [c.origin_batch_id for c in rp.recoverable], request.since)
        log.info(
            "recovery %s: %d messages recovered as batch %s (queued for the warehouse: %s)",
            code,
            len(rp.recoverable),
            batches[code]["batch_id"],
            batches[code]["queued"],
        )
    return done.counts(recovered=True) | {"batches": batches}

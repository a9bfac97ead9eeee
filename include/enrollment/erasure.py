"""Erasure of partners (GDPR art. 17, LGPD art. 18, CCPA): every store, the landed batches
included, and a suppression list that keeps them from coming back.

A request names partner ids, a reason and a ticket. Its steps (the ``erase_partners`` DAG):

1. **suppress** — each partner's keyed token (``pii.Keyring``, kind ``partner_id``; never the id)
   joins ``gs://<bucket>/erasures/index.json``. ``land`` reads it right before writing a batch and
   anonymises those partners' events as below, so what Kafka still holds (until its retention) or
   a producer sends again never lands in clear; replays read the rewritten batches.
2. **settle** — a short wait (``erasure.settle_s``) so that a land that read the index just before
   step 1 has written its objects: they are found by step 3.
3. **warehouse** (holding the warehouse writer's pool slot: no cycle runs meanwhile) — the landed
   batches holding the partners (found through ``events`` and ``quarantine``, and among the
   batches still queued or set aside) are **rewritten in place, row for row**: the events keep
   their ids, types, times, Kafka coordinates and amounts, their ``partner_id`` becomes
   ``ERASED`` and every personal column null; raw JSON keeps only the non-personal envelope;
   quarantined messages lose their raw bytes; the batch's partner changes lose the partner. Row
   counts do not change, so every ledger row stays true. Then the same in BigQuery: ``events``
   and ``quarantine`` rows anonymised alike, the ``partners`` row deleted, ``sink_quarantine``
   rows anonymised, ids listed by past reconciliations replaced.
4. **sinks** — Firestore documents and Solr documents deleted, Marketing Cloud data-extension rows
   and contacts deleted (the contact delete is Marketing Cloud's privacy-request call), the
   welcome-journey claims (named by partner id) deleted; the sync hand-over copies (transient,
   ``retention.handover_days``) holding the partners rewritten without them.
5. **verify** — every store read again for the clear id; the run fails if anything remains.

Every step records rows in ``<ops>.erasures`` (which store, what was done, how many items) with
the partner's token, the reason and the ticket — never the id. Every step may run twice.

Kept on purpose: another partner's ``sponsor_id`` naming an erased partner (it is the downline's
record, needed for their commissions, and no longer leads to any data here); Kafka's copy until
the topic's retention (the producer's; read only by the pipeline's service account).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import ERASURE_REASONS, MAX_ERASURE_PARTNERS
from .contracts.spec import FORMATS
from .pii import Keyring

if TYPE_CHECKING:
    from google.cloud import bigquery

    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Blob, Bucket

    from .warehouse import Warehouse

log = logging.getLogger(__name__)

ERASED = "erased"  # what stands in a row for a partner who was erased
REASONS = ERASURE_REASONS
TICKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#/-]{0,63}$")
PARTNER_ID_RE = re.compile(FORMATS["partner_id"])
MAX_PARTNERS = MAX_ERASURE_PARTNERS
INDEX_OBJECT = "erasures/index.json"
# Columns of landed events (and the warehouse's events) that describe the person: emptied.
PERSONAL_COLUMNS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "language",
    "address_line1",
    "address_city",
    "address_postal_code",
    "address_state",
    "date_of_birth",
    "tax_id_present",
    "tax_id_token",
    "marketing_consent",
    "consent_version",
    "consent_captured_at",
    "correlation_id",
)
# What a raw event keeps once its partner is erased: the envelope, nothing about the person.
ENVELOPE_KEYS = (
    "event_id",
    "event_type",
    "schema_version",
    "region",
    "source_system",
    "occurred_at",
    "partner_version",
)
ERASURE_SCHEMA = [
    ("erasure_id", "STRING"),
    ("partner_token", "STRING"),
    ("reason", "STRING"),
    ("ticket", "STRING"),
    ("step", "STRING"),
    ("store", "STRING"),
    ("items", "INT64"),
    ("ok", "BOOL"),
    ("detail", "STRING"),
    ("recorded_at", "TIMESTAMP"),
]


@dataclass(frozen=True)
class Request:
    partner_ids: tuple[str, ...] = field(repr=False)
    reason: str
    ticket: str

    @classmethod
    def parse(cls, partner_ids: object, reason: object, ticket: object) -> Request:
        """A request from a DAG run's params; the errors never repeat an id (they reach the
        logs)."""
        if isinstance(partner_ids, str):
            partner_ids = [p for p in re.split(r"[\s,;]+", partner_ids) if p]
        if not isinstance(partner_ids, (list, tuple)) or not partner_ids:
            raise ValueError("erasure: partner_ids must name at least one partner id")
        if len(partner_ids) > MAX_PARTNERS:
            raise ValueError(
                f"erasure: at most {MAX_PARTNERS} partners per request "
                f"({len(partner_ids)} given): split it"
            )
        bad = [
            i
            for i, p in enumerate(partner_ids, 1)
            if not isinstance(p, str) or not PARTNER_ID_RE.match(p)
        ]
        if bad:
            raise ValueError(
                f"erasure: partner_ids entries {bad[:10]} are not partner ids "
                "(two capitals and ten capitals or digits)"
            )
        if reason not in REASONS:
            raise ValueError(f"erasure: reason must be one of {', '.join(REASONS)}")
        if not isinstance(ticket, str) or not TICKET_RE.match(ticket):
            raise ValueError(
                "erasure: ticket must be the request's reference "
                "(1-64 letters, digits, . _ : # / -)"
            )
        return cls(tuple(sorted(set(partner_ids))), reason, ticket)

    def erasure_id(self, keyring: Keyring) -> str:
        """The same request (ticket and partners) always has the same id: a rerun is the same
        erasure."""
        key = "|".join([self.ticket, *self.tokens(keyring)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def tokens(self, keyring: Keyring) -> list[str]:
        return [keyring.token(p, "partner_id") for p in self.partner_ids]


# -- the suppression index ----------------------------------------------------------------------
def suppressed(bucket: Bucket) -> frozenset[str]:
    """The tokens of every erased partner (empty when none was ever erased)."""
    from google.api_core.exceptions import NotFound

    try:
        return frozenset(json.loads(bucket.blob(INDEX_OBJECT).download_as_text())["tokens"])
    except NotFound:
        return frozenset()


def suppress(bucket: Bucket, tokens: Iterable[str], attempts: int = 20) -> int:
    """Adds the tokens to the index (read-modify-write guarded by the object's generation, so two
    requests at once both land); how many were new."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    wanted = set(tokens)
    for _ in range(attempts):
        blob = bucket.blob(INDEX_OBJECT)
        try:
            blob.reload()
            held, generation = (
                set(
                    json.loads(blob.download_as_text(if_generation_match=blob.generation))["tokens"]
                ),
                blob.generation,
            )
        except NotFound:
            held, generation = set(), 0
        new = wanted - held
        if not new:
            return 0
        try:
            blob.upload_from_string(
                json.dumps({"tokens": sorted(held | new)}),
                content_type="application/json",
                if_generation_match=generation,
            )
            return len(new)
        except PreconditionFailed:
            continue  # another request wrote it meanwhile: read again
    raise RuntimeError(
        f"erasure: the suppression index {INDEX_OBJECT} kept changing; run the request again"
    )


def erased_among(partner_ids: Iterable[str], keyring: Keyring, tokens: frozenset[str]) -> set[str]:
    """The ids among ``partner_ids`` whose token (under any known key) is in ``tokens``."""
    if not tokens:
        return set()
    return {
        p
        for p in set(partner_ids)
        if p and any(t in tokens for t in keyring.tokens(p, "partner_id"))
    }


_PARTNER_ID_BYTES = re.compile(FORMATS["partner_id"].strip("^$").encode())


def mentioned_ids(quarantine: pa.Table) -> set[str]:
    """Every partner id a batch's quarantined messages name, parsed or only in their bytes (a
    message too broken to yield its partner id still must not bring an erased partner back)."""
    found = {p for p in quarantine.column("partner_id").to_pylist() if p}
    for raw in quarantine.column("raw").to_pylist():
        if raw:
            found.update(m.decode() for m in _PARTNER_ID_BYTES.findall(raw))
    return found


# -- landed objects, row for row ----------------------------------------------------------------
def _mask(table: pa.Table, rows: pa.Array) -> pa.Table:
    """The table with ``partner_id`` set to ERASED and the personal columns nulled where
    ``rows``."""
    if not pc.any(rows).as_py():
        return table
    for i, name in enumerate(table.column_names):
        column = table.column(name)
        if name == "partner_id":
            table = table.set_column(
                i, name, pc.if_else(rows, pa.scalar(ERASED, column.type), column)
            )
        elif name in PERSONAL_COLUMNS or name == "raw":
            table = table.set_column(
                i, name, pc.if_else(rows, pa.scalar(None, column.type), column)
            )
    return table


def _holds(column: pa.ChunkedArray, ids: set[str]) -> pa.Array:
    return pc.fill_null(pc.is_in(column, value_set=pa.array(sorted(ids), pa.string())), False)


def _raw_mentions(raw: pa.ChunkedArray, ids: set[str]) -> pa.Array:
    """Rows whose text or bytes mention one of the ids (a message too broken to yield its partner
    id)."""
    hits = pa.array([False] * len(raw))
    for pid in sorted(ids):
        hits = pc.or_(hits, pc.fill_null(pc.match_substring(raw, pid), False))
    return hits


def anonymise_valid(valid: pa.Table, ids: set[str]) -> tuple[pa.Table, set[str]]:
    """Landed events: the partners' rows anonymised; and the event ids of those rows."""
    rows = _holds(valid.column("partner_id"), ids)
    event_ids = set(valid.filter(rows).column("event_id").to_pylist())
    return _mask(valid, rows), event_ids


def anonymise_raw(raw: pa.Table, event_ids: set[str]) -> pa.Table:
    """Raw JSON of those events reduced to the envelope (and ``"partner_id": "erased"``)."""
    if not event_ids:
        return raw
    rows = _holds(raw.column("event_id"), event_ids)
    texts = raw.column("event_json").to_pylist()
    keep = rows.to_pylist()
    out = []
    for text, hit in zip(texts, keep, strict=True):
        if not hit:
            out.append(text)
            continue
        try:
            event = json.loads(text)
            envelope = {
                k: event[k] for k in ENVELOPE_KEYS if isinstance(event, dict) and k in event
            }
        except (TypeError, ValueError, RecursionError):
            envelope = {}
        out.append(json.dumps(envelope | {"partner_id": ERASED, "erased": True}, sort_keys=True))
    return raw.set_column(
        raw.column_names.index("event_json"),
        "event_json",
        pa.array(out, raw.schema.field("event_json").type),
    )


def anonymise_quarantine(quarantine: pa.Table, ids: set[str]) -> tuple[pa.Table, int]:
    rows = (
        pc.or_(
            _holds(quarantine.column("partner_id"), ids),
            _raw_mentions(quarantine.column("raw"), ids),
        )
        if quarantine.num_rows
        else pa.array([], pa.bool_())
    )
    hit = int(pc.sum(rows).as_py() or 0) if quarantine.num_rows else 0
    return (_mask(quarantine, rows) if hit else quarantine), hit


def drop_partners(changes: pa.Table, ids: set[str]) -> tuple[pa.Table, int]:
    """A batch's partner changes without the partners (what the cycle folds and the sinks read)."""
    rows = _holds(changes.column("partner_id"), ids)
    hit = int(pc.sum(rows).as_py() or 0)
    return (changes.filter(pc.invert(rows)) if hit else changes), hit


def anonymise_landed(
    valid: pa.Table, raw: pa.Table, quarantine: pa.Table, changes: pa.Table, ids: set[str]
) -> tuple[tuple[pa.Table, pa.Table, pa.Table, pa.Table], dict[str, int]]:
    """One batch's four tables with the partners erased, and what changed (counts)."""
    valid, event_ids = anonymise_valid(valid, ids)
    raw = anonymise_raw(raw, event_ids)
    quarantine, quarantined = anonymise_quarantine(quarantine, ids)
    changes, dropped = drop_partners(changes, ids)
    return (valid, raw, quarantine, changes), {
        "events": len(event_ids),
        "quarantined": quarantined,
        "partner_changes": dropped,
    }


def _rewrite(blob: Blob, transform: Callable[[pa.Table], tuple[pa.Table, int]]) -> int:
    """Rewrites a Parquet object through ``transform(table) -> (table, changed rows)``; guarded by
    its generation (a concurrent writer makes this fail, and the step is run again)."""
    from google.api_core.exceptions import NotFound

    try:
        blob.reload()
        table = pq.read_table(
            io.BytesIO(blob.download_as_bytes(if_generation_match=blob.generation))
        )
    except NotFound:
        return 0
    table, changed = transform(table)
    if changed:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        blob.upload_from_string(
            buffer.getvalue(),
            content_type="application/vnd.apache.parquet",
            if_generation_match=blob.generation,
        )
    return changed


def scrub_batch(bucket: Bucket, batch_id: str, ids: set[str]) -> dict[str, int]:
    """Rewrites a landed batch without the partners (its four objects; rows keep their count)."""
    from .batches import landing_prefix  # here: batches imports this module

    prefix = landing_prefix(batch_id)
    found: dict[str, int] = {}
    event_ids: set[str] = set()

    def valid(table: pa.Table) -> tuple[pa.Table, int]:
        nonlocal event_ids
        table, event_ids = anonymise_valid(table, ids)
        return table, len(event_ids)

    found["events"] = _rewrite(bucket.blob(f"{prefix}/valid.parquet"), valid)
    found["raw"] = _rewrite(
        bucket.blob(f"{prefix}/raw.parquet"), lambda t: _raw_rewrite(t, ids, event_ids)
    )
    found["quarantined"] = _rewrite(
        bucket.blob(f"{prefix}/quarantine.parquet"), lambda t: anonymise_quarantine(t, ids)
    )
    found["partner_changes"] = _rewrite(
        bucket.blob(f"{prefix}/partners.parquet"), lambda t: drop_partners(t, ids)
    )
    return found


def scrub_landed(bucket: Bucket, batch_ids: Iterable[str], ids: set[str]) -> dict[str, int]:
    """``scrub_batch`` over the batches: rows changed, per kind of object."""
    landed = {"events": 0, "raw": 0, "quarantined": 0, "partner_changes": 0}
    for batch_id in batch_ids:
        for k, v in scrub_batch(bucket, batch_id, ids).items():
            landed[k] += v
    return landed


def _raw_rewrite(raw: pa.Table, ids: set[str], event_ids: set[str]) -> tuple[pa.Table, int]:
    # By the events' ids, and by any raw text still naming a partner (a rerun, whose valid rows
    # were already anonymised and so no longer give the event ids).
    mention = (
        _raw_mentions(raw.column("event_json"), ids) if raw.num_rows else pa.array([], pa.bool_())
    )
    hits = (
        event_ids | set(raw.filter(mention).column("event_id").to_pylist())
        if raw.num_rows
        else set()
    )
    return anonymise_raw(raw, hits), len(hits)


# -- where the partners are -----------------------------------------------------------------------
def _mentions(column: str, ids: Sequence[str]) -> tuple[str, list[bigquery.ScalarQueryParameter]]:
    """SQL true where ``column`` names one of the ids (``raw`` bytes read as text), and its
    parameters."""
    from google.cloud import bigquery

    text = "SAFE_CONVERT_BYTES_TO_STRING(raw)" if column == "raw" else column
    return (
        " OR ".join(f"STRPOS({text}, @p{i}) > 0" for i in range(len(ids))) or "FALSE",
        [bigquery.ScalarQueryParameter(f"p{i}", "STRING", p) for i, p in enumerate(ids)],
    )


def batches_holding(w: Warehouse, bucket: Bucket, group: str, ids: Sequence[str]) -> list[str]:
    """The landed batches holding the partners: by the warehouse (events by partner, quarantine by
    partner or raw bytes), and the batches still queued or set aside (not in the warehouse yet).

    The warehouse queries read every partition (an erasure is rare; ``events`` is clustered by
    partner, so BigQuery reads only the blocks that can hold the ids)."""
    from google.cloud import bigquery

    from .batches import PENDING_PREFIX
    from .cycle import SET_ASIDE_PREFIX

    params = [bigquery.ArrayQueryParameter("ids", "STRING", list(ids))]
    mentions, by_text = _mentions("raw", ids)
    found = {
        r["batch_id"]
        for r in w.run(
            f"SELECT DISTINCT batch_id FROM {w.table('events')} WHERE partner_id IN UNNEST(@ids)",
            params,
        )
    }
    found |= {
        r["batch_id"]
        for r in w.run(
            f"SELECT DISTINCT batch_id FROM {w.table('quarantine')} "
            f"WHERE partner_id IN UNNEST(@ids) OR {mentions}",
            [*params, *by_text],
        )
    }
    for prefix in (f"{PENDING_PREFIX}{group}/", f"{SET_ASIDE_PREFIX}{group}/"):
        for blob in bucket.list_blobs(prefix=prefix):
            found.add(blob.name.rsplit("/", 1)[-1].removesuffix(".json"))
    return sorted(found)


def scrub_warehouse(w: Warehouse, ids: Sequence[str]) -> dict[str, int]:
    """The partners in BigQuery: events and quarantine rows anonymised (they stay, counted by the
    ledger), the partners row deleted, sink-quarantine rows anonymised, reconciliation lists
    cleared of the ids. Idempotent: a second run finds nothing."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    params = [
        bigquery.ArrayQueryParameter("ids", "STRING", list(ids)),
        bigquery.ScalarQueryParameter("erased", "STRING", ERASED),
    ]
    out: dict[str, int] = {}

    def columns(name: str, ops: bool = False) -> set[str]:
        try:
            return {f.name for f in w.client.get_table(w.table(name, ops=ops).strip("`")).schema}
        except NotFound:
            return set()

    def dml(name: str, sql: str, extra: list[bigquery.ScalarQueryParameter] | None = None) -> int:
        job = w.client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params + (extra or []))
        )
        w.statements.append(sql)
        w.wait(job)
        return int(job.num_dml_affected_rows or 0)

    for name in ("events", "quarantine", "sink_quarantine"):
        have = columns(name)
        if not have:
            out[name] = 0
            continue
        nulls = [c for c in (*PERSONAL_COLUMNS, "raw", "message") if c in have]
        sets = ", ".join(["partner_id = @erased", *(f"{c} = NULL" for c in nulls)])
        where = "partner_id IN UNNEST(@ids)"
        extra: list[bigquery.ScalarQueryParameter] = []
        if "raw" in have:
            mentions, extra = _mentions("raw", ids)
            where += f" OR {mentions}"
        out[name] = dml(name, f"UPDATE {w.table(name)} SET {sets} WHERE {where}", extra)
    out["partners"] = (
        dml("partners", f"DELETE FROM {w.table('partners')} WHERE partner_id IN UNNEST(@ids)")
        if columns("partners")
        else 0
    )
    if "partner_ids" in columns("reconciliation", ops=True):
        where, extra = _mentions("partner_ids", ids)
        replaced = "partner_ids"
        for i in range(len(ids)):
            replaced = f"REPLACE({replaced}, @p{i}, @erased)"
        out["reconciliation"] = dml(
            "reconciliation",
            f"UPDATE {w.table('reconciliation', ops=True)} "
            f"SET partner_ids = {replaced} WHERE {where}",
            extra,
        )
    return out


def scrub_objects(
    bucket: Bucket, sinks: Iterable[str], regions: Iterable[str], ids: set[str]
) -> dict[str, int]:
    """The sync hand-over copies and the reconciliation's day files without the partners; the
    welcome-journey claims (named by partner id) deleted."""
    from google.api_core.exceptions import NotFound

    out = {"handover_rows": 0, "reconciliation_rows": 0, "journey_claims": 0}
    for sink in sinks:
        for region in regions:
            for blob in bucket.list_blobs(prefix=f"sinks/{sink}/{region}/"):
                if blob.name.endswith(".parquet"):
                    out["handover_rows"] += _rewrite(
                        blob,
                        lambda t: (
                            drop_partners(t, ids) if "partner_id" in t.column_names else (t, 0)
                        ),
                    )
        for blob in bucket.list_blobs(prefix=f"sinks/{sink}/journeys/"):
            if blob.name.rsplit("/", 1)[-1].removesuffix(".json") in ids:
                try:
                    blob.delete()
                    out["journey_claims"] += 1
                except NotFound:
                    pass
    for blob in bucket.list_blobs(prefix="reconciliation/"):
        if blob.name.endswith(".parquet"):
            out["reconciliation_rows"] += _rewrite(blob, lambda t: _mask_count(t, ids))
    return out


def _mask_count(table: pa.Table, ids: set[str]) -> tuple[pa.Table, int]:
    if "partner_id" not in table.column_names or not table.num_rows:
        return table, 0
    rows = _holds(table.column("partner_id"), ids)
    return _mask(table, rows), int(pc.sum(rows).as_py() or 0)


# -- what remains ---------------------------------------------------------------------------------
def remaining_in_warehouse(w: Warehouse, ids: Sequence[str]) -> dict[str, int]:
    """Rows still naming the partners, per table (the verify step: all zero)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    mentions, by_text = _mentions("raw", ids)
    params = [bigquery.ArrayQueryParameter("ids", "STRING", list(ids)), *by_text]
    named = "partner_id IN UNNEST(@ids)"
    queries = {
        "events": f"SELECT COUNT(*) AS n FROM {w.table('events')} WHERE {named}",
        "partners": f"SELECT COUNT(*) AS n FROM {w.table('partners')} WHERE {named}",
        "quarantine": (
            f"SELECT COUNT(*) AS n FROM {w.table('quarantine')} WHERE {named} OR {mentions}"
        ),
        "sink_quarantine": f"SELECT COUNT(*) AS n FROM {w.table('sink_quarantine')} WHERE {named}",
    }
    out: dict[str, int] = {}
    for name, sql in queries.items():
        try:
            job = w.client.query(
                sql,
                job_config=bigquery.QueryJobConfig(
                    query_parameters=params if "@p0" in sql else params[:1]
                ),
            )
            out[name] = int(next(iter(w.wait(job)))["n"])
        except NotFound:
            out[name] = 0
    return out


def _without_sponsor(text: str) -> str:
    """An event's JSON without ``payload.sponsor_id``: a downline's reference to an erased sponsor
    is the downline's record, kept on purpose (see the module's docstring)."""
    try:
        event = json.loads(text)
        if isinstance(event, dict) and isinstance(event.get("payload"), dict):
            event["payload"].pop("sponsor_id", None)
        return json.dumps(event)
    except (
        TypeError,
        ValueError,
        RecursionError,
    ):  # any text at all: it decides nothing, it only narrows
        return text


def remaining_in_batch(bucket: Bucket, batch_id: str, ids: set[str]) -> int:
    """Values of a landed batch that still name one of the partners (sponsor references aside)."""
    from google.api_core.exceptions import NotFound

    from .batches import landing_prefix  # here: batches imports this module

    prefix = landing_prefix(batch_id)
    hits = 0
    for name in ("valid", "raw", "quarantine", "partners"):
        try:
            table = pq.read_table(
                io.BytesIO(bucket.blob(f"{prefix}/{name}.parquet").download_as_bytes())
            )
        except NotFound:
            continue
        for column in table.column_names:
            kind = table.schema.field(column).type
            if column == "sponsor_id" or not (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind)
            ):
                continue
            found = table.column(column).filter(_raw_mentions(table.column(column), ids))
            values = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for v in found.to_pylist()
            ]
            hits += sum(1 for v in values if any(pid in _without_sponsor(v) for pid in ids))
    return hits


# -- the erasure ledger ---------------------------------------------------------------------------
def ensure_ledger(w: Warehouse) -> None:
    from google.api_core.exceptions import NotFound

    table = w.table("erasures", ops=True)
    try:
        w.client.get_table(table.strip("`"))
    except NotFound:
        cols = ", ".join(f"{c} {t}" for c, t in ERASURE_SCHEMA)
        w.run(
            f"CREATE TABLE IF NOT EXISTS {table} ({cols}) "
            "PARTITION BY DATE(recorded_at) CLUSTER BY erasure_id"
        )


def record(
    w: Warehouse,
    erasure_id: str,
    request: Request,
    keyring: Keyring,
    step: str,
    store: str,
    items: int,
    ok: bool = True,
    detail: str = "",
) -> None:
    """One row per partner for a step in a store (MERGEd: a rerun replaces its own rows)."""
    from google.cloud import bigquery

    ensure_ledger(w)
    tokens = request.tokens(keyring)
    rows = [
        {
            "erasure_id": erasure_id,
            "partner_token": t,
            "reason": request.reason,
            "ticket": request.ticket,
            "step": step,
            "store": store,
            "items": int(items),
            "ok": bool(ok),
            "detail": detail[:1000],
        }
        for t in tokens
    ]
    source = " UNION ALL ".join(
        f"SELECT @e AS erasure_id, @t{i} AS partner_token, @r AS reason, @k AS ticket, "
        "@s AS step, @st AS store, @n AS items, @ok AS ok, @d AS detail"
        for i in range(len(rows))
    )
    params = [
        bigquery.ScalarQueryParameter("e", "STRING", erasure_id),
        bigquery.ScalarQueryParameter("r", "STRING", request.reason),
        bigquery.ScalarQueryParameter("k", "STRING", request.ticket),
        bigquery.ScalarQueryParameter("s", "STRING", step),
        bigquery.ScalarQueryParameter("st", "STRING", store),
        bigquery.ScalarQueryParameter("n", "INT64", int(items)),
        bigquery.ScalarQueryParameter("ok", "BOOL", bool(ok)),
        bigquery.ScalarQueryParameter("d", "STRING", detail[:1000]),
    ]
    params += [bigquery.ScalarQueryParameter(f"t{i}", "STRING", t) for i, t in enumerate(tokens)]
    w.run(
        f"""MERGE {w.table("erasures", ops=True)} T USING ({source}) S
        ON T.erasure_id = S.erasure_id AND T.partner_token = S.partner_token
          AND T.step = S.step AND T.store = S.store
        WHEN MATCHED THEN UPDATE SET items = S.items, ok = S.ok, detail = S.detail,
          recorded_at = CURRENT_TIMESTAMP()
        WHEN NOT MATCHED THEN INSERT ({", ".join(c for c, _ in ERASURE_SCHEMA)})
          VALUES (S.erasure_id, S.partner_token, S.reason, S.ticket, S.step, S.store, S.items,
            S.ok, S.detail, CURRENT_TIMESTAMP())""",
        params,
    )


@dataclass(frozen=True)
class Erasure:
    """One request at work: what each step of the ``erase_partners`` DAG needs, and its ledger."""

    request: Request
    warehouse: Warehouse
    bucket: Bucket  # the landing bucket
    keyring: Keyring = field(repr=False)

    @property
    def erasure_id(self) -> str:
        return self.request.erasure_id(self.keyring)

    @property
    def ids(self) -> set[str]:
        return set(self.request.partner_ids)

    def record(self, step: str, store: str, items: int, ok: bool = True, detail: str = "") -> None:
        record(
            self.warehouse,
            self.erasure_id,
            self.request,
            self.keyring,
            step,
            store,
            items,
            ok,
            detail,
        )

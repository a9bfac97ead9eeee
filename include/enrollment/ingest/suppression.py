"""The erasure's suppression list, as ``land`` consults it: partners erased before their events
arrived (a resend, a rewind, Kafka's copy until its retention) never land in clear.

The list (``erasures/index.json``) holds each erased partner's keyed token, never the id. Before
a batch is written, ``land`` asks which of its partners are on it (``erased_among``) and
anonymises their rows (``anonymise_landed``): ids become ``ERASED``, personal columns null, raw
JSON keeps only the non-personal envelope, quarantined messages lose their bytes; row counts do
not change, so the ledger stays true. The erasure itself (``ops.erasure``) rewrites batches landed
before the request with the same functions."""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from enrollment.clients.objects import rewrite_parquet
from enrollment.contracts.spec import FORMATS
from enrollment.core.layout import INDEX_OBJECT
from enrollment.core.partners import ERASED
from enrollment.core.pii import Keyring

if TYPE_CHECKING:
    from google.cloud.storage import Bucket


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


# The index as a bucket object last read it: (generation, tokens). A land train asks before and
# after every batch; the list, which grows with every erasure, is downloaded only when an
# erasure changed it, so a batch pays a metadata read, not the list.
_READ: weakref.WeakKeyDictionary[Bucket, tuple[int, frozenset[str]]] = weakref.WeakKeyDictionary()


def suppression(bucket: Bucket, attempts: int = 5) -> tuple[int, frozenset[str]]:
    """The index's generation (0 when none was ever written) and its tokens, as they are now: a
    metadata read, and the list itself only when it changed since this bucket object read it."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    blob = bucket.blob(INDEX_OBJECT)
    for _ in range(attempts):
        try:
            blob.reload()
        except NotFound:
            return 0, frozenset()
        generation = int(blob.generation or 0)
        held = _READ.get(bucket)
        if held is not None and held[0] == generation:
            return held
        try:
            text = blob.download_as_text(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            continue  # an erasure wrote it between the two reads: ask again
        read = (generation, frozenset(json.loads(text)["tokens"]))
        _READ[bucket] = read
        return read
    raise RuntimeError(f"erasure: the suppression index {INDEX_OBJECT} kept changing; retry")


def suppressed(bucket: Bucket) -> frozenset[str]:
    """The tokens of every erased partner (empty when none was ever erased)."""
    return suppression(bucket)[1]


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


def mask(table: pa.Table, rows: pa.Array) -> pa.Table:
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


def holds(column: pa.ChunkedArray, ids: set[str]) -> pa.Array:
    return pc.fill_null(pc.is_in(column, value_set=pa.array(sorted(ids), pa.string())), False)


def raw_mentions(raw: pa.ChunkedArray, ids: set[str]) -> pa.Array:
    """Rows whose text or bytes mention one of the ids (a message too broken to yield its partner
    id)."""
    hits = pa.array([False] * len(raw), pa.bool_())  # typed: an empty list infers null
    for pid in sorted(ids):
        hits = pc.or_(hits, pc.fill_null(pc.match_substring(raw, pid), False))
    return hits


def anonymise_valid(valid: pa.Table, ids: set[str]) -> tuple[pa.Table, set[str]]:
    """Landed events: the partners' rows anonymised; and the event ids of those rows."""
    rows = holds(valid.column("partner_id"), ids)
    event_ids = set(valid.filter(rows).column("event_id").to_pylist())
    return mask(valid, rows), event_ids


def anonymise_raw(raw: pa.Table, event_ids: set[str]) -> pa.Table:
    """Raw JSON of those events reduced to the envelope (and ``"partner_id": "erased"``)."""
    if not event_ids:
        return raw
    rows = holds(raw.column("event_id"), event_ids)
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
            holds(quarantine.column("partner_id"), ids),
            raw_mentions(quarantine.column("raw"), ids),
        )
        if quarantine.num_rows
        else pa.array([], pa.bool_())
    )
    hit = int(pc.sum(rows).as_py() or 0) if quarantine.num_rows else 0
    return (mask(quarantine, rows) if hit else quarantine), hit


def drop_partners(changes: pa.Table, ids: set[str]) -> tuple[pa.Table, int]:
    """A batch's partner changes without the partners (what the cycle folds and the sinks read)."""
    rows = holds(changes.column("partner_id"), ids)
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


def anonymise_batch_objects(bucket: Bucket, prefix: str, ids: set[str]) -> dict[str, int]:
    """A landed batch's four objects under ``prefix`` rewritten in place with the partners erased
    (rows keep their count); what changed, per object. Idempotent: a second call changes
    nothing."""
    found: dict[str, int] = {}
    event_ids: set[str] = set()

    def valid(table: pa.Table) -> tuple[pa.Table, int]:
        nonlocal event_ids
        table, event_ids = anonymise_valid(table, ids)
        return table, len(event_ids)

    found["events"] = rewrite_parquet(bucket.blob(f"{prefix}/valid.parquet"), valid)
    found["raw"] = rewrite_parquet(
        bucket.blob(f"{prefix}/raw.parquet"), lambda t: _raw_rewrite(t, ids, event_ids)
    )
    found["quarantined"] = rewrite_parquet(
        bucket.blob(f"{prefix}/quarantine.parquet"), lambda t: anonymise_quarantine(t, ids)
    )
    found["partner_changes"] = rewrite_parquet(
        bucket.blob(f"{prefix}/partners.parquet"), lambda t: drop_partners(t, ids)
    )
    return found


def _raw_rewrite(raw: pa.Table, ids: set[str], event_ids: set[str]) -> tuple[pa.Table, int]:
    # By the events' ids, and by any raw text still naming a partner (a rerun, whose valid rows
    # were already anonymised and so no longer give the event ids).
    mention = (
        raw_mentions(raw.column("event_json"), ids) if raw.num_rows else pa.array([], pa.bool_())
    )
    hits = (
        event_ids | set(raw.filter(mention).column("event_id").to_pylist())
        if raw.num_rows
        else set()
    )
    return anonymise_raw(raw, hits), len(hits)

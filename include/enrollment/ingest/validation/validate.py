"""Batch validation: raw Kafka message values in, a table of valid rows and quarantine rows out.

Total: for any list of byte strings ``validate_batch`` returns, and every message comes out
exactly once, valid or quarantined with every reason code that applies (``REASON_CODES`` lists
their families). A message's outcome depends on its own bytes only, except ``duplicate_event_id``
(an earlier message of the batch has the same id).

1. byte screening: size, UTF-8 (strict: an encoded surrogate is not UTF-8), nesting depth;
2. a strict decode of each message (msgspec: RFC 8259 — no NaN or Infinity literals, no raw
   control characters or lone surrogate escapes in strings; integers exact) straight into its
   own contract, chosen by its type and version: only that contract's fields are typed and kept
   (the fast path);
3. what the fast path refuses takes the per-record path: a strict decode to plain values, then
   each field of the event's own contract (type *and* version) is kept or becomes a reason. It
   decides everything the fast path decides, only slower (a property test holds them equal);
4. every readable message, reduced to the fields of its own contract (foreign fields are never
   typed or carried; they stay in the raw event), becomes a row of one Arrow table;
5. the contract checks (mandatory fields by type, version, region and market; formats, calendar
   dates, lengths and ranges every downstream holds; semantic rules; duplicate event ids) run as
   Arrow/NumPy column operations over that table.

Steps 1–4 are ``screen``, step 5 ``checks``. ``validate_guarded`` is the last line of defence of
``land``: should validation raise after all, the batch is bisected and the culprits quarantined
as ``validator_error`` with their raw bytes — unless it raises on the contracts' own reference
events too: then the validator is broken, not the input, and the batch fails (``ValidatorBroken``)
instead of quarantining good events.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from enrollment.ingest.validation.checks import check, instants
from enrollment.ingest.validation.reasons import Reasons, ValidationResult
from enrollment.ingest.validation.screen import read
from enrollment.ingest.validation.trees import DEFAULT_MAX_MESSAGE_BYTES, PARSE_SCHEMA, Rows

log = logging.getLogger(__name__)


VALID_COLUMNS = (
    "event_id",
    "event_type",
    "region",
    "source_system",
    "partner_id",
    "correlation_id",
)


def validate_batch(
    messages: Sequence[bytes | None], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ValidationResult:
    """Validates raw message values; every message comes out once, valid or quarantined."""
    values = [m if isinstance(m, bytes) else bytes(m) if m is not None else b"" for m in messages]
    reasons = Reasons()
    # Hundreds of thousands of small objects, no cycles among them: the cyclic collector would
    # only rescan them again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        parsed, source_index = read(values, max_message_bytes, reasons)
    finally:
        if collecting:
            gc.enable()
    return _validated(values, reasons, parsed, source_index)


def _validated(
    messages: list[bytes], reasons: Reasons, parsed: pa.Table, source_index: Rows
) -> ValidationResult:
    escaped = np.fromiter(
        (b"\\" in messages[i] for i in source_index.tolist()),
        dtype=bool,
        count=len(source_index),
    )
    order = np.argsort(source_index, kind="stable")  # the rows in input order
    check(parsed, escaped, reasons.mapped(source_index), order)
    by_row = reasons.by_row()

    bad_rows = np.isin(source_index, np.fromiter(by_row, dtype=np.int64, count=len(by_row)))
    keep = order[~bad_rows[order]]
    valid = _valid_table(parsed.take(pa.array(keep)), source_index[keep])
    quarantine = _quarantine_table(messages, by_row, parsed, source_index, order)
    if valid.num_rows + quarantine.num_rows != len(messages):
        raise AssertionError("validation: a message was lost or doubled")
    return ValidationResult(valid=valid, quarantine=quarantine)


# One valid event per contract and version (python -m enrollment.simulator.references).
REFERENCES_FILE = Path(__file__).parents[2] / "contracts" / "references.json"


class ValidatorBroken(RuntimeError):
    """Validation raises on events known to be valid: a defect (or a broken install) of the
    validator, which must fail the batch rather than quarantine good input."""


def _raises_on_the_references(max_message_bytes: int) -> Exception | None:
    references = [json.dumps(e).encode() for e in json.loads(REFERENCES_FILE.read_text())]
    try:
        validate_batch(references, max_message_bytes)
    except Exception as exc:
        return exc
    return None


def validate_guarded(
    messages: Sequence[bytes | None], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ValidationResult:
    """``validate_batch``, and should it raise, the batch bisected: the halves that validate are
    kept, each message that alone makes it raise is quarantined as ``validator_error`` with its
    raw bytes. The region never stops on input; the error is logged (no message content).
    Should validation raise on the reference events as well, ``ValidatorBroken``: nothing is
    quarantined, the batch fails (its retry claims it again once the validator is mended)."""
    try:
        return validate_batch(messages, max_message_bytes)
    except Exception as exc:
        log.error(
            "validation raised %s on a batch of %d messages; bisecting to quarantine the culprits",
            type(exc).__name__,
            len(messages),
        )
        systemic = _raises_on_the_references(max_message_bytes)
        if systemic is not None:
            raise ValidatorBroken(
                f"validation raises {type(systemic).__name__} on the contracts' own valid "
                f"reference events ({REFERENCES_FILE.name}) as well: the validator is broken, not "
                "the input; nothing of this batch is quarantined or landed"
            ) from exc
    results: list[tuple[int, ValidationResult]] = []
    culprits: list[int] = []

    def split(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        try:
            results.append((lo, validate_batch(messages[lo:hi], max_message_bytes)))
            return
        except Exception:
            if hi - lo == 1:
                culprits.append(lo)
                return
        mid = (lo + hi) // 2
        split(lo, mid)
        split(mid, hi)

    split(0, len(messages))
    log.error("validation: %d message(s) quarantined as validator_error", len(culprits))
    return _combined(messages, results, culprits)


def _combined(
    messages: Sequence[bytes | None],
    results: list[tuple[int, ValidationResult]],
    culprits: list[int],
) -> ValidationResult:
    """Parts validated apart, as one result: indices shifted, duplicates across parts found
    again."""

    def shifted(table: pa.Table, offset: int) -> pa.Table:
        column = table.schema.get_field_index("source_index")
        return table.set_column(
            column, "source_index", pc.add(table.column("source_index"), offset)
        )

    valid = pa.concat_tables(
        [shifted(r.valid, lo) for lo, r in results]
        or [_valid_table(PARSE_SCHEMA.empty_table(), np.zeros(0, np.int64))]
    )
    quarantine = [shifted(r.quarantine, lo) for lo, r in results]

    def refused(indices: list[int], reason: str, known: pa.Table | None = None) -> pa.Table:
        return pa.table(
            {
                "source_index": pa.array(indices, pa.int64()),
                "reasons": pa.array([[reason]] * len(indices), pa.list_(pa.string())),
                "raw": pa.array([messages[i] or b"" for i in indices], pa.binary()),
                **{
                    name: known.column(name)
                    if known is not None
                    else pa.nulls(len(indices), pa.string())
                    for name in ("event_id", "event_type", "partner_id", "region")
                },
            },
            schema=QUARANTINE_SCHEMA,
        )

    quarantine.append(refused(culprits, "validator_error"))
    # An id first seen in an earlier part makes later copies duplicates, as in one batch.
    valid = valid.sort_by("source_index")
    ids = valid.column("event_id").to_pylist()
    seen: set[str | None] = set()
    repeat: list[int] = []
    for k, event_id in enumerate(ids):
        if event_id in seen:
            repeat.append(k)
        seen.add(event_id)
    if repeat:
        moved = valid.take(pa.array(repeat))
        quarantine.append(
            refused(moved.column("source_index").to_pylist(), "duplicate_event_id", moved)
        )
        keep = np.ones(valid.num_rows, dtype=bool)
        keep[repeat] = False
        valid = valid.filter(pa.array(keep))
    return ValidationResult(
        valid=valid, quarantine=pa.concat_tables(quarantine).sort_by("source_index")
    )


def _valid_table(parsed: pa.Table, source_index: Rows) -> pa.Table:
    columns = {"source_index": pa.array(source_index, pa.int64())}
    for name in VALID_COLUMNS:
        columns[name] = parsed.column(name)
    columns["schema_version"] = pc.cast(parsed.column("schema_version"), pa.int16())
    columns["partner_version"] = pc.cast(parsed.column("partner_version"), pa.int64())
    columns["occurred_at"] = instants(parsed.column("occurred_at"))
    columns["payload"] = parsed.column("payload")
    return pa.table(columns)


QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_index", pa.int64()),
        ("reasons", pa.list_(pa.string())),
        ("raw", pa.binary()),
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("partner_id", pa.string()),
        ("region", pa.string()),
    ]
)


def _quarantine_table(
    messages: list[bytes],
    by_index: dict[int, list[str]],
    parsed: pa.Table,
    source_index: Rows,
    order: Rows,
) -> pa.Table:
    indices = np.array(sorted(by_index), dtype=np.int64)
    # What could be read of each refused message (nothing for those that never parsed).
    in_order = source_index[order]
    position = np.searchsorted(in_order, indices)
    readable = (
        (position < len(in_order))
        & (in_order[np.minimum(position, max(len(in_order) - 1, 0))] == indices)
        if len(in_order)
        else np.zeros(len(indices), bool)
    )
    row = order[np.minimum(position, max(len(order) - 1, 0))] if len(order) else position
    take = pa.array(np.where(readable, row, 0), pa.int64(), mask=~readable)
    known = (
        parsed.select(["event_id", "event_type", "partner_id", "region"]).take(take)
        if len(source_index)
        else None
    )
    return pa.table(
        {
            "source_index": pa.array(indices, pa.int64()),
            "reasons": pa.array([by_index[int(i)] for i in indices], pa.list_(pa.string())),
            "raw": pa.array([messages[int(i)] for i in indices], pa.binary()),
            **{
                name: known.column(name)
                if known is not None
                else pa.nulls(len(indices), pa.string())
                for name in ("event_id", "event_type", "partner_id", "region")
            },
        },
        schema=QUARANTINE_SCHEMA,
    )

"""A validated batch as it lands: the flat valid rows (one column per contract field, the raw
JSON apart), the quarantine rows (masked, with their reasons) and the tax ids tokenised. Shared by
``land`` and the quarantine recovery (``ops.recovery``), so a recovered message lands exactly as
it would have."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from enrollment.core.pii import Keyring, mask_raw, tokenise_json
from enrollment.ingest.validation.checks import instants
from enrollment.ingest.validation.reasons import ValidationResult
from enrollment.ingest.validation.validate import validate_batch

# What the warehouse and the sinks read of each event, flat; partner fields come from an
# enrollment's payload or an update's changes.
_PARTNER_FIELDS = ("first_name", "last_name", "email", "phone", "language")


_ADDRESS_FIELDS = ("line1", "city", "postal_code", "country")


def p95_timestamp_ms(stamps: pa.Array | pa.ChunkedArray) -> int | None:
    """The Kafka timestamp (ms) of the p95 message by age: 5 % of the messages are older. The
    freshness gate judges a batch on it, so one straggler (a record produced long before, a
    partition that waited) does not make a whole batch late; None when there are none."""
    millis = pc.cast(stamps, pa.int64()).drop_null()
    if not len(millis):
        return None
    return int(pc.quantile(millis, q=0.05, interpolation="lower")[0].as_py())


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
    columns["consent_captured_at"] = instants(columns["consent_captured_at"])
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


def tokenised(
    result: ValidationResult, messages: pa.Table, keyring: Keyring
) -> tuple[pa.Table, pa.Array]:
    """The messages with each valid event's tax ids replaced by their tokens
    (``core.pii.tokenise_json``: every other byte kept), and the token of each valid row's
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
    those are in-batch duplicates only. Shared by ``land`` and ``ops.recovery``."""
    # Reasons are found on the clear values; from here on the batch's tax ids are tokens.
    messages, tax_id_tokens = tokenised(result, messages, keyring)
    valid = flatten(result, messages, batch_id, tax_id_tokens)
    quarantine = quarantine_rows(result, messages, batch_id, region)
    duplicates = int(pc.sum(quarantine.column("duplicate_only")).as_py() or 0)
    return messages, valid, quarantine, duplicates

"""A partner's current state from its events: one row per partner, each field holding the value
of the newest event that set it, with that event's version (``<field>_version``).

The same rule, three times: within a batch (``partner_changes``, at land), across the batches of a
warehouse cycle (``fold_partners``), and against the stored state (the cycle's MERGE). So the
MERGE source has exactly one row per partner — BigQuery refuses a MERGE whose source repeats a key.
"""

from __future__ import annotations

import pyarrow as pa

from enrollment.config import Region
from enrollment.contracts.spec import PARTNER_EVENTS

PARTNER_COLUMNS = (
    "region",
    "country",
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
    "sponsor_id",
    "status",
    "enrolled_at",
    "terminated_at",
    "marketing_consent",
    "consent_version",
    "consent_captured_at",
)


# Fields that are one statement with another (their leader): they take their values, nulls
# included, from the event that set the leader, and carry its version. A consent withdrawn without
# a version of its own must not keep the version of the consent it replaced.
FOLLOWS = {"consent_version": "marketing_consent", "consent_captured_at": "marketing_consent"}


_TYPES = {"marketing_consent": "BOOL"}


# Each field keeps the partner version that set it (<field>_version): a field takes a value only
# from an event newer than the one that set it, whatever order events arrive in, within a batch
# or across batches.
PARTNER_SCHEMA = [
    ("partner_id", "STRING"),
    *(
        (c, _TYPES.get(c) or ("TIMESTAMP" if c.endswith("_at") else "STRING"))
        for c in PARTNER_COLUMNS
    ),
    ("partner_version", "INT64"),
    ("last_event_id", "STRING"),
    ("updated_at", "TIMESTAMP"),
    ("batch_id", "STRING"),
    *((f"{c}_version", "INT64") for c in PARTNER_COLUMNS),
]


_ARROW = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}


def _empty() -> pa.Table:
    return pa.table({c: pa.array([], _ARROW[t]) for c, t in PARTNER_SCHEMA})


_CONSENT = {
    "marketing_consent": pa.bool_(),
    "consent_version": pa.string(),
    "consent_captured_at": pa.timestamp("us", tz="UTC"),
}
# What partner_changes reads of a landed row: the event's identity, then the partner's own fields
# up to those it derives (status and its times) or adds later (consent, _CONSENT).
_CHANGE_INPUT = (
    "partner_id",
    "event_type",
    "event_id",
    "partner_version",
    "occurred_at",
    "batch_id",
    *PARTNER_COLUMNS[: PARTNER_COLUMNS.index("status")],
)


def _group_starts(keys: pa.Array) -> pa.Array:
    """True at the first row of each run of equal keys (``keys`` sorted)."""
    import pyarrow.compute as pc

    if len(keys) == 0:
        return pa.array([], pa.bool_())
    differs = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    return pa.concat_arrays([pa.array([True]), differs])


def _first_where(ids: pa.Array, partners: pa.Array, where: pa.Array, values: pa.Array) -> pa.Array:
    """Per partner (``partners``, sorted), ``values`` of its first row (rows sorted by partner,
    newest first) where ``where`` holds; null for a partner without one."""
    import pyarrow.compute as pc

    ids, values = ids.filter(where), values.filter(where)
    starts = _group_starts(ids)
    return values.filter(starts).take(pc.index_in(partners, value_set=ids.filter(starts)))


def partner_changes(valid: pa.Table) -> pa.Table:
    """One row per partner of the batch: what its partner events say, newest version first. An
    erased partner's events (anonymised, ``ERASED``) change no partner: they have no state.

    In Arrow (no per-row Python, no pandas round trip: this runs at every land): the rows sorted by
    partner, then newest version and time first (ties in arrival order); each field takes its
    partner's first row that set it."""
    import pyarrow.compute as pc

    table = valid.select(list(_CHANGE_INPUT))
    for column, kind in _CONSENT.items():  # batches landed before them: none
        table = table.append_column(
            column,
            valid.column(column) if column in valid.column_names else pa.nulls(len(valid), kind),
        )
    table = table.filter(
        pc.and_(
            pc.is_in(table.column("event_type"), value_set=pa.array(list(PARTNER_EVENTS))),
            pc.not_equal(table.column("partner_id"), ERASED),
        )
    )
    if not table.num_rows:
        return _empty()
    table = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    table = table.take(
        pc.sort_indices(
            table,
            sort_keys=[
                ("partner_id", "ascending", "at_end"),
                ("partner_version", "descending", "at_end"),
                ("occurred_at", "descending", "at_end"),
                ("row", "ascending", "at_end"),
            ],
        )
    ).combine_chunks()
    col = {name: table.column(name).chunk(0) for name in table.column_names}  # rows: one chunk
    kind, occurred = col["event_type"], col["occurred_at"]
    enrolled = pc.fill_null(pc.equal(kind, "partner.enrolled"), False)
    terminated = pc.fill_null(pc.equal(kind, "partner.terminated"), False)
    no_time = pa.scalar(None, occurred.type)
    col["status"] = pc.if_else(
        enrolled, "active", pc.if_else(terminated, "terminated", pa.scalar(None, pa.string()))
    )
    col["enrolled_at"] = pc.if_else(enrolled, occurred, no_time)
    col["terminated_at"] = pc.if_else(terminated, occurred, no_time)
    col["last_event_id"], col["updated_at"] = col["event_id"], occurred

    ids = col["partner_id"]
    partners = ids.filter(_group_starts(ids))
    out: dict[str, pa.Array] = {"partner_id": partners}
    for column in (*PARTNER_COLUMNS, "last_event_id", "updated_at", "batch_id"):
        leader = FOLLOWS.get(column, column)  # a follower: from the row that set its leader
        out[column] = _first_where(ids, partners, pc.is_valid(col[leader]), col[column])
    for column in PARTNER_COLUMNS:
        leader = FOLLOWS.get(column, column)
        out[f"{column}_version"] = _first_where(
            ids, partners, pc.is_valid(col[leader]), col["partner_version"]
        )
    # The newest version first, nulls last: a partner's first row holds its highest version.
    out["partner_version"] = col["partner_version"].filter(_group_starts(ids))
    return pa.table({name: pc.cast(out[name], _ARROW[t]) for name, t in PARTNER_SCHEMA})


def fold_partners(tables: list[pa.Table]) -> pa.Table:
    """The partner states of several batches (each from ``partner_changes``) folded into one row
    per partner by the same rule: each field from the row whose version of it is newest; the
    newest partner version's event id, time and batch. Ties keep the earlier batch (the order of
    ``tables``), as the MERGE keeps the stored row on equal versions."""
    import pyarrow.compute as pc

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _empty()
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables([_conform(t) for t in tables]).combine_chunks()
    table = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))

    def newest_by(key: str) -> dict[str, pa.Array]:
        """The rows sorted by partner, then ``key`` newest first (nulls last), ties in order."""
        order = pc.sort_indices(
            table,
            sort_keys=[
                ("partner_id", "ascending", "at_end"),
                (key, "descending", "at_end"),
                ("row", "ascending", "at_end"),
            ],
        )
        return {c: table.column(c).take(order).chunk(0) for c in table.column_names}

    rows = newest_by("partner_version")
    ids = rows["partner_id"]
    partners = ids.filter(_group_starts(ids))
    out: dict[str, pa.Array] = {"partner_id": partners}
    for column in ("last_event_id", "updated_at", "batch_id"):
        out[column] = _first_where(ids, partners, pc.is_valid(rows[column]), rows[column])
    out["partner_version"] = rows["partner_version"].filter(_group_starts(ids))
    for column in PARTNER_COLUMNS:
        version = f"{column}_version"
        if column in FOLLOWS:  # the whole row that set the leader: its nulls too
            lead = f"{FOLLOWS[column]}_version"
            rows = newest_by(lead)
            set_lead = pc.is_valid(rows[lead])
            out[column] = _first_where(rows["partner_id"], partners, set_lead, rows[column])
            out[version] = _first_where(rows["partner_id"], partners, set_lead, rows[lead])
            continue
        rows = newest_by(version)
        set_it = pc.is_valid(rows[version])
        out[column] = _first_where(
            rows["partner_id"], partners, pc.and_(set_it, pc.is_valid(rows[column])), rows[column]
        )
        out[version] = _first_where(rows["partner_id"], partners, set_it, rows[version])
    return pa.table({name: pc.cast(out[name], _ARROW[t]) for name, t in PARTNER_SCHEMA})


def _conform(table: pa.Table) -> pa.Table:
    """A batch's partner changes written before a column existed: the column added, null."""
    for column, kind in PARTNER_SCHEMA:
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, _ARROW[kind]))
    return table.select([c for c, _ in PARTNER_SCHEMA])


ERASED = "erased"  # what stands in a row for a partner who was erased


def canary_id(region: Region, serial: int = 0) -> str:
    return f"{region.partner_prefix}CANARY{serial:04d}"


def is_canary(partner_id: str) -> bool:
    """A canary partner (ids are random after the region prefix: 1 in 32^6 real ids would match)."""
    return partner_id[2:8] == "CANARY"

"""A partner's current state from its events: one row per partner, each field holding the value
of the newest event that set it, with that event's version (``<field>_version``).

The same rule, three times: within a batch (``partner_changes``, at land), across the batches of a
warehouse cycle (``fold_partners``), and against the stored state (the cycle's MERGE). So the
MERGE source has exactly one row per partner — BigQuery refuses a MERGE whose source repeats a key.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

PARTNER_COLUMNS = ("region", "country", "first_name", "last_name", "email", "phone", "language", "address_line1", "address_city",
                   "address_postal_code", "address_state", "date_of_birth", "sponsor_id", "status", "enrolled_at", "terminated_at")
# Each field keeps the partner version that set it (<field>_version): a field takes a value only
# from an event newer than the one that set it, whatever order events arrive in, within a batch
# or across batches.
PARTNER_SCHEMA = [("partner_id", "STRING"), *((c, "TIMESTAMP" if c.endswith("_at") else "STRING") for c in PARTNER_COLUMNS),
                  ("partner_version", "INT64"), ("last_event_id", "STRING"), ("updated_at", "TIMESTAMP"), ("batch_id", "STRING"),
                  *((f"{c}_version", "INT64") for c in PARTNER_COLUMNS)]
PARTNER_EVENTS = ("partner.enrolled", "partner.updated", "partner.terminated")


def _empty() -> pa.Table:
    return pa.table({c: pa.array([], pa.string() if t == "STRING" else pa.int64() if t == "INT64" else pa.timestamp("us", tz="UTC"))
                     for c, t in PARTNER_SCHEMA})


def _to_table(latest: pd.DataFrame) -> pa.Table:
    out = {}
    for column, kind in PARTNER_SCHEMA:
        series = latest[column]
        if kind == "TIMESTAMP":
            out[column] = pa.array(pd.to_datetime(series, utc=True), pa.timestamp("us", tz="UTC"))
        elif kind == "INT64":
            out[column] = pa.array(series.astype("Int64"), pa.int64(), from_pandas=True)
        else:
            out[column] = pa.array(series.astype(object).where(series.notna(), None), pa.string())
    return pa.table(out)


def partner_changes(valid: pa.Table) -> pa.Table:
    """One row per partner of the batch: what its partner events say, newest version first."""
    frame = valid.select(["partner_id", "event_type", "event_id", "partner_version", "occurred_at", "batch_id", "region", "country", "first_name", "last_name",
                          "email", "phone", "language", "address_line1", "address_city", "address_postal_code", "address_state", "date_of_birth",
                          "sponsor_id"]).to_pandas()
    frame = frame[frame["event_type"].isin(list(PARTNER_EVENTS))]
    if frame.empty:
        return _empty()
    frame["status"] = frame["event_type"].map({"partner.enrolled": "active", "partner.terminated": "terminated"})
    frame["enrolled_at"] = frame["occurred_at"].where(frame["event_type"] == "partner.enrolled")
    frame["terminated_at"] = frame["occurred_at"].where(frame["event_type"] == "partner.terminated")
    frame["last_event_id"] = frame["event_id"]
    frame["updated_at"] = frame["occurred_at"]
    # Within the batch the same rule as the MERGE: each field's value from the newest event that
    # set it, with that event's version.
    ordered = frame.sort_values(["partner_version", "occurred_at"], ascending=False, kind="stable")
    latest = ordered.groupby("partner_id", sort=True).first().reset_index()
    latest["partner_version"] = frame.groupby("partner_id")["partner_version"].max().reindex(latest["partner_id"]).to_numpy()
    for column in PARTNER_COLUMNS:
        set_at = frame[frame[column].notna()].groupby("partner_id")["partner_version"].max()
        latest[f"{column}_version"] = set_at.reindex(latest["partner_id"]).to_numpy()
    return _to_table(latest)


def fold_partners(tables: list[pa.Table]) -> pa.Table:
    """The partner states of several batches (each from ``partner_changes``) folded into one row
    per partner by the same rule: each field from the row whose version of it is newest; the
    newest partner version's event id, time and batch. Ties keep the earlier batch (the order of
    ``tables``), as the MERGE keeps the stored row on equal versions."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _empty()
    if len(tables) == 1:
        return tables[0]
    frame = pa.concat_tables(tables).to_pandas()
    latest = frame.sort_values("partner_version", ascending=False, kind="stable").groupby("partner_id", sort=True).first()
    for column in PARTNER_COLUMNS:
        version = f"{column}_version"
        setters = frame[frame[version].notna()].sort_values(version, ascending=False, kind="stable").groupby("partner_id")
        latest[column] = setters[column].first().reindex(latest.index)
        latest[version] = setters[version].first().reindex(latest.index)
    latest["partner_version"] = frame.groupby("partner_id")["partner_version"].max().reindex(latest.index)
    return _to_table(latest.reset_index())

"""The erasure's work on the stores: finding the batches that hold the partners (through the
warehouse, and among the batches queued or set aside), rewriting them in place row for row, the
same in BigQuery and in the sinks' transient objects, and what remains (the verify step)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrollment.clients.objects import rewrite_parquet
from enrollment.core.batch import RECOVERY_PREFIX, batch_region, landing_prefix
from enrollment.core.layout import PENDING_PREFIX, SET_ASIDE_PREFIX, handover_object
from enrollment.core.partners import ERASED
from enrollment.ingest.suppression import (
    PERSONAL_COLUMNS,
    anonymise_batch_objects,
    drop_partners,
    holds,
    mask,
    raw_mentions,
)

if TYPE_CHECKING:
    from google.cloud import bigquery
    from google.cloud.storage import Bucket

    from enrollment.clients.bigquery import BigQuery


def scrub_batch(bucket: Bucket, batch_id: str, ids: set[str]) -> dict[str, int]:
    """Rewrites a landed batch's four objects without the partners (rows keep their count)."""
    return anonymise_batch_objects(bucket, landing_prefix(batch_id), ids)


def scrub_landed(bucket: Bucket, batch_ids: Iterable[str], ids: set[str]) -> dict[str, int]:
    """``scrub_batch`` over the batches: rows changed, per kind of object."""
    landed = {"events": 0, "raw": 0, "quarantined": 0, "partner_changes": 0}
    for batch_id in batch_ids:
        for k, v in scrub_batch(bucket, batch_id, ids).items():
            landed[k] += v
    return landed


def scrub_handovers(bucket: Bucket, batch_ids: Iterable[str], ids: set[str]) -> int:
    """The batches' hand-overs to the sinks without the partners: rows dropped. The warehouse
    cycle writes them, so this runs after the erasure's warehouse step (a cycle before it may have
    handed over what it read before the landed objects were rewritten)."""
    return sum(
        rewrite_parquet(
            bucket.blob(handover_object(batch_region(b), b)), lambda t: drop_partners(t, ids)
        )
        for b in batch_ids
    )


def _mentions(column: str, ids: Sequence[str]) -> tuple[str, list[bigquery.ScalarQueryParameter]]:
    """SQL true where ``column`` names one of the ids (``raw`` bytes read as text), and its
    parameters."""
    from google.cloud import bigquery

    text = "SAFE_CONVERT_BYTES_TO_STRING(raw)" if column == "raw" else column
    return (
        " OR ".join(f"STRPOS({text}, @p{i}) > 0" for i in range(len(ids))) or "FALSE",
        [bigquery.ScalarQueryParameter(f"p{i}", "STRING", p) for i, p in enumerate(ids)],
    )


def batches_holding(
    w: BigQuery, bucket: Bucket, group: str, ids: Sequence[str], regions: Sequence[str] = ()
) -> list[str]:
    """The landed batches holding the partners: by the warehouse (events by partner, quarantine by
    partner or raw bytes), the batches still queued or set aside (not in the warehouse yet), and
    every recovery batch of ``regions`` (a recovery run that died before queueing its batch, then
    ran again over a different set of messages, left objects nothing queues; recovery batches are
    few, one per region and run, and scrubbing one that does not hold them changes nothing).

    The warehouse queries read every partition (an erasure is rare; ``events`` is clustered by
    partner, so BigQuery reads only the blocks that can hold the ids)."""
    from google.cloud import bigquery

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
    for region in regions:
        for blob in bucket.list_blobs(prefix=f"landing/{region}/{RECOVERY_PREFIX}"):
            found.add(blob.name.split("/")[2])
    return sorted(found)


def scrub_warehouse(w: BigQuery, ids: Sequence[str]) -> dict[str, int]:
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
                    out["handover_rows"] += rewrite_parquet(
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
            out["reconciliation_rows"] += rewrite_parquet(blob, lambda t: _mask_count(t, ids))
    return out


def _mask_count(table: pa.Table, ids: set[str]) -> tuple[pa.Table, int]:
    if "partner_id" not in table.column_names or not table.num_rows:
        return table, 0
    rows = holds(table.column("partner_id"), ids)
    return mask(table, rows), int(pc.sum(rows).as_py() or 0)


def remaining_in_warehouse(w: BigQuery, ids: Sequence[str]) -> dict[str, int]:
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

    prefix = landing_prefix(batch_id)
    hits = 0
    for name in (
        *(f"{prefix}/{kind}.parquet" for kind in ("valid", "raw", "quarantine", "partners")),
        handover_object(batch_region(batch_id), batch_id),
    ):
        try:
            table = pq.read_table(io.BytesIO(bucket.blob(name).download_as_bytes()))
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
            found = table.column(column).filter(raw_mentions(table.column(column), ids))
            values = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for v in found.to_pylist()
            ]
            hits += sum(1 for v in values if any(pid in _without_sponsor(v) for pid in ids))
    return hits

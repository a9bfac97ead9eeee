"""The hand-over from the warehouse to the sinks: per batch, the state of every partner the batch
touched, as the cycle that wrote it committed it (``handover/<REGION>/<batch id>.parquet``).

The cycle reads that state once (one query over the partners it staged) and writes the objects
before the batches' ledger rows, so a sync that plans a batch finds its hand-over; every sink reads
the objects instead of querying the ``partners`` table per region and round. A partner touched by
several batches of a cycle is in each of their objects, the same row. The objects hold personal
data: the erasure scrubs them with the batch's landed objects and housekeeping deletes them after
``retention.handover_days``; a sync that finds one missing reads the warehouse as before
(``enrollment.sync.plan``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.objects import read_parquet, write_parquet
from enrollment.core.batch import Landed
from enrollment.core.layout import handover_object
from enrollment.core.partners import ERASED

if TYPE_CHECKING:
    import google.cloud.storage as gcs

log = logging.getLogger(__name__)

ENROLLED = "enrolled"  # a hand-over's column beside the partner's row: the batch enrolled it
SYNC_BATCH = "sync_batch_id"  # the plan's last batch that touched the partner (the sync's rows)


def handover_uri(b: Landed) -> str:
    return f"gs://{b.bucket}/{handover_object(b.region, b.batch_id)}"


def write_handovers(
    w: BigQuery,
    batches: Sequence[Landed],
    changes: dict[str, pa.Table],
    partners_stage: str | None,
    state_table: str,
) -> int:
    """Each batch's hand-over from the partners table as it stands now (after the cycle's write):
    the rows of the partners in ``changes[batch id]`` (its partner changes: ``partner_id``,
    ``enrolled_at``). A batch without partner events gets an empty object, so that no sink falls
    back to the warehouse for it. Returns the rows written.

    The state of the cycle's partners is copied into ``state_table`` (a staging table the caller
    drops) and read from there through the Storage Read API: Arrow record batches, where the
    query's REST rows cost seconds of JSON per cycle."""
    if not batches:
        return 0
    state = None
    if partners_stage:
        w.run(
            f"CREATE OR REPLACE TABLE {state_table} AS SELECT * FROM {w.table('partners')} "
            f"WHERE partner_id IN (SELECT partner_id FROM {partners_stage})"
        )
        state = w.read_arrow(state_table)

    def one(b: Landed) -> int:
        rows = _rows_of(state, changes.get(b.batch_id))
        write_parquet(w.storage, handover_uri(b), rows)
        return int(rows.num_rows)

    # GCS round trips, no CPU: a few threads take a cycle's objects at once.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="handover") as pool:
        return sum(pool.map(one, batches))


def _rows_of(state: pa.Table | None, changes: pa.Table | None) -> pa.Table:
    if state is None or changes is None or not changes.num_rows:
        empty = state.schema if state is not None else pa.schema([("partner_id", pa.string())])
        return empty.empty_table().append_column(ENROLLED, pa.array([], pa.bool_()))
    ids = changes.column("partner_id")
    rows = state.filter(
        pc.and_(pc.is_in(state.column("partner_id"), value_set=ids), _not_erased(state))
    )
    enrolled_ids = changes.filter(pc.is_valid(changes.column("enrolled_at"))).column("partner_id")
    enrolled = pc.fill_null(pc.is_in(rows.column("partner_id"), value_set=enrolled_ids), False)
    return rows.append_column(ENROLLED, enrolled).sort_by("partner_id")


def _not_erased(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.not_equal(table.column("partner_id"), ERASED), True)


def read_handovers(
    storage: gcs.Client, bucket: str, region: str, batch_ids: Sequence[str]
) -> tuple[pa.Table, dict[str, str], dict[str, str]] | None:
    """What a sync hands to a sink for these batches (the plan's order, oldest first), from their
    hand-overs: one row per partner, its newest state among them, sorted by partner id, with
    ``sync_batch_id`` the last batch that touched it; partner id → that batch; partner id → the
    batch that enrolled it. None when a batch has no readable hand-over (landed before them,
    expired, damaged): the caller reads the warehouse for the whole plan."""
    from google.api_core.exceptions import NotFound

    tables = []
    for batch_id in batch_ids:
        uri = f"gs://{bucket}/{handover_object(region, batch_id)}"
        try:
            table = read_parquet(storage, uri)
        except (NotFound, pa.ArrowException, OSError) as exc:
            log.info("sync: no readable hand-over %s (%s): reading the warehouse", uri, exc)
            return None
        if "partner_id" not in table.column_names or ENROLLED not in table.column_names:
            log.warning("sync: %s is no hand-over (columns %s)", uri, table.column_names)
            return None
        tables.append(table)
    return newest_state(tables, batch_ids)


def newest_state(
    tables: Sequence[pa.Table], batch_ids: Sequence[str]
) -> tuple[pa.Table, dict[str, str], dict[str, str]]:
    """``read_handovers`` over the hand-overs read (``tables[i]`` is batch ``batch_ids[i]``'s)."""
    merged = (
        pa.concat_tables(
            [
                t.append_column("_order", pa.array([i] * t.num_rows, pa.int32()))
                for i, t in enumerate(tables)
            ],
            promote_options="default",
        )
        if tables
        else None
    )
    if merged is None or not merged.num_rows:
        return pa.table({}), {}, {}
    last = _last_batch(merged, batch_ids)
    enrolled = _last_batch(merged.filter(merged.column(ENROLLED)), batch_ids)
    # The newest version of each partner; of equal versions the later batch's (its cycle's).
    ranked = merged.sort_by(
        [("partner_id", "ascending"), ("partner_version", "descending"), ("_order", "descending")]
    )
    ids = ranked.column("partner_id").combine_chunks()
    first = pc.invert(
        pa.concat_arrays([pa.array([False]), pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))])
    )
    newest = ranked.filter(first).drop_columns([ENROLLED, "_order"])
    newest = newest.append_column(
        SYNC_BATCH,
        pa.array([last[p] for p in newest.column("partner_id").to_pylist()], pa.string()),
    )
    return newest, last, enrolled


def _last_batch(table: pa.Table, batch_ids: Sequence[str]) -> dict[str, str]:
    """Partner id → the last batch (plan order) whose rows in ``table`` name it."""
    if not table.num_rows:
        return {}
    grouped = table.group_by("partner_id").aggregate([("_order", "max")])
    return dict(
        zip(
            grouped.column("partner_id").to_pylist(),
            (batch_ids[i] for i in grouped.column("_order_max").to_pylist()),
            strict=True,
        )
    )

"""What a sync run takes: per region, the warehoused batches with no ledger row of the sink yet
(an anti-join over the ledger's last ``lookback_days``), oldest first, at most ``max_batches``:
after an outage the next run takes every batch since, and a batch warehoused late is never
skipped. And which partners those batches touched: read from each batch's partner changes, or
from the warehouse's events when the landed objects are gone (a resync)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.objects import blob, read_parquet
from enrollment.contracts.spec import PARTNER_EVENTS
from enrollment.core.errors import said
from enrollment.core.partners import ERASED
from enrollment.sync.tables import ensure_tables

if TYPE_CHECKING:
    from enrollment.config import PipelineConfig


@dataclass
class SyncPlan:
    sink: str
    region: str
    bucket: str
    batches: list[dict[str, str]] = field(
        default_factory=list
    )  # {"batch_id", "warehoused_at"} oldest first

    @property
    def key(self) -> str:
        return hashlib.sha256("|".join(b["batch_id"] for b in self.batches).encode()).hexdigest()[
            :16
        ]

    @property
    def manifest_object(self) -> str:
        return f"sinks/{self.sink}/{self.region}/{self.key}.parquet"

    def valid_uri(self, batch_id: str) -> str:
        return f"gs://{self.bucket}/landing/{self.region}/{batch_id}/valid.parquet"

    def partners_uri(self, batch_id: str) -> str:
        return f"gs://{self.bucket}/landing/{self.region}/{batch_id}/partners.parquet"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- plan -----------------------------------------------------------------------------------
def watermark(w: BigQuery, sink: str, region: str) -> dict[str, Any] | None:
    from google.cloud import bigquery

    rows = w.run(
        "SELECT batch_id, warehoused_at, synced_at "
        f"FROM {w.table('sink_watermarks', ops=True)} WHERE sink = @s AND region = @r",
        [
            bigquery.ScalarQueryParameter("s", "STRING", sink),
            bigquery.ScalarQueryParameter("r", "STRING", region),
        ],
    )
    return dict(rows[0]) if rows else None


def plan_since(
    w: BigQuery,
    sinks: list[str],
    regions: list[str],
    lookback_days: int = 7,
    now: datetime | None = None,
    run: Callable[..., Sequence[Mapping[str, Any]]] | None = None,
) -> datetime:
    """Where the plans of ``sinks`` start reading the ledger: ``lookback_days`` before the
    oldest of their committed batches (``<ops>.sink_watermarks``), or before now if that is
    earlier. So a sink down for longer than the lookback still finds every batch since it
    stopped, and in normal running the bound stays a few days back: a constant partition filter
    whose cost does not grow with history. A region a sink never synced looks back from now
    (the lag monitor calls its oldest unsynced batch late after an hour, broken after a day).
    ``run``: how to query (default ``w.run``; the operator page passes its time-limited read)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    back = timedelta(days=lookback_days)
    since = (now or datetime.now(UTC)) - back
    try:
        rows = (run or w.run)(
            f"SELECT MIN(warehoused_at) AS oldest FROM {w.table('sink_watermarks', ops=True)} "
            "WHERE sink IN UNNEST(@sinks) AND region IN UNNEST(@regions)",
            [
                bigquery.ArrayQueryParameter("sinks", "STRING", list(sinks)),
                bigquery.ArrayQueryParameter("regions", "STRING", list(regions)),
            ],
        )
    except NotFound:
        return since
    oldest = rows[0]["oldest"] if rows else None
    return min(since, oldest - back) if oldest is not None else since


def plan_all(
    w: BigQuery,
    bucket: str,
    sink: str,
    regions: list[str],
    max_batches: int = 20,
    lookback_days: int = 7,
) -> dict[str, SyncPlan]:
    """Every region's plan in one query: the warehoused batches since ``plan_since`` (the
    sink's own progress) that have no ``sync_<sink>`` ledger row yet, oldest first.

    An anti-join, not a time watermark: a ledger row that committed late (a batch a failed
    cycle left, warehoused after newer ones) is still taken. The bound is a constant filter on
    the ledger's partitions, so the plan's cost does not grow with history."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    ensure_tables(w)
    try:
        w.client.get_table(w.table("ledger", ops=True).strip("`"))
    except NotFound:
        return {
            region: SyncPlan(sink, region, bucket) for region in regions
        }  # nothing warehoused yet
    since = plan_since(w, [sink], regions, lookback_days)
    recent = f"recorded_at >= TIMESTAMP '{since:%Y-%m-%d}'"
    rows = w.run(
        f"""SELECT L.region, L.batch_id, L.recorded_at FROM {w.table("ledger", ops=True)} L
        LEFT JOIN (SELECT DISTINCT batch_id FROM {w.table("ledger", ops=True)} """
        f"""WHERE {recent} AND stage = @stage) S ON S.batch_id = L.batch_id
        WHERE L.{recent} AND L.stage = 'warehouse' AND L.ok """
        """AND L.region IN UNNEST(@regions) AND S.batch_id IS NULL
        ORDER BY L.region, L.recorded_at, L.batch_id""",
        [
            bigquery.ScalarQueryParameter("stage", "STRING", f"sync_{sink}"),
            bigquery.ArrayQueryParameter("regions", "STRING", list(regions)),
        ],
    )
    plans = {region: SyncPlan(sink, region, bucket) for region in regions}
    for r in rows:
        plan = plans[r["region"]]
        if len(plan.batches) < max_batches:
            plan.batches.append(
                {"batch_id": r["batch_id"], "warehoused_at": r["recorded_at"].isoformat()}
            )
    return plans


def region_plan(
    w: BigQuery, bucket: str, sink: str, region: str, max_batches: int = 20
) -> SyncPlan:
    return plan_all(w, bucket, sink, [region], max_batches)[region]


# Enough to see a whole backlog at once: a run takes sync.max_batches of it.
BACKLOG_BATCHES = 10_000


def backlogs(w: BigQuery, bucket: str, config: PipelineConfig) -> dict[str, dict[str, SyncPlan]]:
    """Sink → region → what the sink has still to sync (its whole backlog, not one run's share):
    the lag monitor's and the load test's view of the sinks."""
    regions = [r.code for r in config.regions]
    return {
        sink: plan_all(
            w,
            bucket,
            sink,
            regions,
            max_batches=BACKLOG_BATCHES,
            lookback_days=config.sync_lookback_days,
        )
        for sink in config.sinks
    }


# -- write ----------------------------------------------------------------------------------
def touched(
    w: BigQuery, plan: SyncPlan, from_warehouse: bool = False
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Partner id → the plan's last batch that changed it, and → the batch that enrolled it;
    and batch id → why it cannot be read.

    From each batch's partner changes (``partners.parquet``, one row per partner: a small
    object); batches landed by an older version are read from their events. A batch whose
    objects are gone or unreadable is returned as unreadable, or, ``from_warehouse``, read
    from the warehouse's events instead (a resync)."""
    from google.api_core.exceptions import NotFound

    last: dict[str, str] = {}
    enrolled: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for b in plan.batches:
        reason: str | None
        pairs: list[tuple[str, bool]]
        try:
            try:
                changes = read_parquet(w.storage, plan.partners_uri(b["batch_id"])).select(
                    ["partner_id", "enrolled_at"]
                )
                pairs = list(
                    zip(
                        changes.column("partner_id").to_pylist(),
                        (e is not None for e in changes.column("enrolled_at").to_pylist()),
                        strict=True,
                    )
                )
            except NotFound:
                valid = pq.read_table(
                    io.BytesIO(blob(w.storage, plan.valid_uri(b["batch_id"])).download_as_bytes()),
                    columns=["partner_id", "event_type"],
                )
                valid = valid.filter(pc.is_in(valid.column("event_type"), pa.array(PARTNER_EVENTS)))
                pairs = list(
                    zip(
                        valid.column("partner_id").to_pylist(),
                        (k == "partner.enrolled" for k in valid.column("event_type").to_pylist()),
                        strict=True,
                    )
                )
        except NotFound:
            reason = (
                f"its landed objects are gone ({plan.partners_uri(b['batch_id'])}, valid.parquet)"
            )
        except (
            pa.ArrowException,
            KeyError,
            ValueError,
        ) as exc:  # not Parquet, or not the columns a landed batch has
            reason = said("its landed rows are unreadable", exc)
        else:
            reason = None
        if reason is not None:
            if not from_warehouse:
                unreadable[b["batch_id"]] = reason
                continue
            pairs = touched_in_warehouse(w, b)
        for pid, is_enrollment in pairs:
            if pid == ERASED:  # events of an erased partner, anonymised: nobody to sync
                continue
            last[pid] = b["batch_id"]
            if is_enrollment:
                enrolled[pid] = b["batch_id"]
    return last, enrolled, unreadable


def touched_in_warehouse(
    w: BigQuery, batch: Mapping[str, str], days_before: int = 30
) -> list[tuple[str, bool]]:
    """(partner id, enrolled) of a batch, from the warehouse's events: for a batch whose
    landed objects are gone. Its events arrived before it was warehoused: the scan is bounded
    to the ``days_before`` partitions before that (never all history)."""
    from google.cloud import bigquery

    rows = w.run(
        "SELECT partner_id, LOGICAL_OR(event_type = 'partner.enrolled') AS enrolled "
        f"""FROM {w.table("events")}
        WHERE kafka_timestamp BETWEEN TIMESTAMP_SUB(@at, INTERVAL {int(days_before)} DAY) """
        """AND TIMESTAMP_ADD(@at, INTERVAL 1 DAY)
          AND batch_id = @b AND event_type IN UNNEST(@kinds)
        GROUP BY partner_id ORDER BY partner_id""",
        [
            bigquery.ScalarQueryParameter(
                "at", "TIMESTAMP", datetime.fromisoformat(batch["warehoused_at"])
            ),
            bigquery.ScalarQueryParameter("b", "STRING", batch["batch_id"]),
            bigquery.ArrayQueryParameter("kinds", "STRING", PARTNER_EVENTS),
        ],
    )
    return [(r["partner_id"], bool(r["enrolled"])) for r in rows]

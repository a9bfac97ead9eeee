"""Sync runs: from the warehouse to one sink, catching up by itself after an outage.

A run:

1. **plan** — the region's warehoused batches with no ledger row of this sink yet (an anti-join
   over the ledger's last ``lookback_days``), oldest first (at most ``max_batches``): after an
   outage the next run takes every batch since, and a batch warehoused late is never skipped.
2. **write** — the partners those batches touched (read from their landed Parquet), their current
   state from the warehouse's ``partners`` table (one row per partner: coalesced, newest version
   wins), handed to the sink. What was handed over is kept as
   ``gs://<bucket>/sinks/<sink>/<region>/<plan key>.parquet`` for the gate (XCom carries its URI).
3. **gate** — the sink reads back what it wrote (``Sink.verify``) and the counts must balance:
   partners = written + unchanged + rejected.
4. **commit** — rejected rows into ``<warehouse>.sink_quarantine`` with the service's message, a
   ledger row per batch (stage ``sync_<sink>``), then the sink's **watermark**
   (``<ops>.sink_watermarks``: the newest batch it synced per region, for people and the lag
   monitor; plans do not read it).

Every step may run twice: the plan is a function of the ledger, writes are version-guarded or
upserts, ledger and quarantine rows are MERGEd, the watermark only moves forward.
"""

from __future__ import annotations

import hashlib
import logging
import io
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .batches import GateError
from .sinks.base import Sink, SinkResult, describe
from .warehouse import Warehouse

PARTNER_EVENTS = ["partner.enrolled", "partner.updated", "partner.terminated"]
WATERMARK_SCHEMA = [("sink", "STRING"), ("region", "STRING"), ("batch_id", "STRING"), ("warehoused_at", "TIMESTAMP"), ("synced_at", "TIMESTAMP")]
SINK_QUARANTINE_SCHEMA = [("sink", "STRING"), ("batch_id", "STRING"), ("region", "STRING"), ("partner_id", "STRING"), ("partner_version", "INT64"),
                          ("message", "STRING"), ("recorded_at", "TIMESTAMP")]
_EPOCH = "1970-01-01 00:00:00+00"

log = logging.getLogger(__name__)


def _said(step: str, exc: BaseException) -> str:
    return f"{step}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


class SyncError(RuntimeError):
    """Some regions of a sync run failed; the message names them and why."""


@dataclass
class Plan:
    sink: str
    region: str
    bucket: str
    batches: list[dict] = field(default_factory=list)  # {"batch_id", "warehoused_at"} oldest first

    @property
    def key(self) -> str:
        return hashlib.sha256("|".join(b["batch_id"] for b in self.batches).encode()).hexdigest()[:16]

    @property
    def manifest_object(self) -> str:
        return f"sinks/{self.sink}/{self.region}/{self.key}.parquet"

    def valid_uri(self, batch_id: str) -> str:
        return f"gs://{self.bucket}/landing/{self.region}/{batch_id}/valid.parquet"

    def partners_uri(self, batch_id: str) -> str:
        return f"gs://{self.bucket}/landing/{self.region}/{batch_id}/partners.parquet"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyncRun:
    """The sync of one sink, against the warehouse and the landing bucket."""

    warehouse: Warehouse
    bucket: object  # google.cloud.storage.Bucket (the landing bucket)

    def ensure_tables(self) -> None:
        """The watermark and sink-quarantine tables, created when missing (a metadata read when not)."""
        from google.api_core.exceptions import NotFound

        w = self.warehouse
        for name, ops, ddl in (("sink_watermarks", True, f"({', '.join(f'{c} {t}' for c, t in WATERMARK_SCHEMA)})"),
                               ("sink_quarantine", False, f"({', '.join(f'{c} {t}' for c, t in SINK_QUARANTINE_SCHEMA)}) "
                                                          "PARTITION BY DATE(recorded_at) CLUSTER BY sink, region")):
            try:
                w.client.get_table(w.table(name, ops=ops).strip("`"))
            except NotFound:
                w.run(f"CREATE TABLE IF NOT EXISTS {w.table(name, ops=ops)} {ddl}")

    # -- plan -----------------------------------------------------------------------------------
    def watermark(self, sink: str, region: str) -> dict | None:
        from google.cloud import bigquery

        w = self.warehouse
        rows = w.run(f"SELECT batch_id, warehoused_at, synced_at FROM {w.table('sink_watermarks', ops=True)} WHERE sink = @s AND region = @r",
                     [bigquery.ScalarQueryParameter("s", "STRING", sink), bigquery.ScalarQueryParameter("r", "STRING", region)])
        return dict(rows[0]) if rows else None

    def plan_all(self, sink: str, regions: list[str], max_batches: int = 20, lookback_days: int = 7) -> dict[str, Plan]:
        """Every region's plan in one query: the warehoused batches of the last ``lookback_days``
        that have no ``sync_<sink>`` ledger row yet, oldest first.

        An anti-join, not a time watermark: a ledger row that committed late (a batch a failed
        cycle left, warehoused after newer ones) is still taken. The lookback is a constant
        filter on the ledger's partitions, so the plan's cost does not grow with history."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        w = self.warehouse
        self.ensure_tables()
        try:
            w.client.get_table(w.table("ledger", ops=True).strip("`"))
        except NotFound:
            return {region: Plan(sink, region, self.bucket.name) for region in regions}  # nothing warehoused yet
        since = datetime.now(timezone.utc) - timedelta(days=lookback_days)
        recent = f"recorded_at >= TIMESTAMP '{since:%Y-%m-%d}'"
        rows = w.run(f"""SELECT L.region, L.batch_id, L.recorded_at FROM {w.table('ledger', ops=True)} L
            LEFT JOIN (SELECT DISTINCT batch_id FROM {w.table('ledger', ops=True)} WHERE {recent} AND stage = @stage) S ON S.batch_id = L.batch_id
            WHERE L.{recent} AND L.stage = 'warehouse' AND L.ok AND L.region IN UNNEST(@regions) AND S.batch_id IS NULL
            ORDER BY L.region, L.recorded_at, L.batch_id""",
                     [bigquery.ScalarQueryParameter("stage", "STRING", f"sync_{sink}"), bigquery.ArrayQueryParameter("regions", "STRING", list(regions))])
        plans = {region: Plan(sink, region, self.bucket.name) for region in regions}
        for r in rows:
            plan = plans[r["region"]]
            if len(plan.batches) < max_batches:
                plan.batches.append({"batch_id": r["batch_id"], "warehoused_at": r["recorded_at"].isoformat()})
        return plans

    def plan(self, sink: str, region: str, max_batches: int = 20) -> Plan:
        return self.plan_all(sink, [region], max_batches)[region]

    # -- write ----------------------------------------------------------------------------------
    def touched(self, plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
        """Partner id → the plan's last batch that changed it, and → the batch that enrolled it.

        From each batch's partner changes (``partners.parquet``, one row per partner: a small
        object); batches landed by an older version are read from their events."""
        from google.api_core.exceptions import NotFound

        last, enrolled = {}, {}
        for b in plan.batches:
            try:
                changes = self.warehouse._read_parquet(plan.partners_uri(b["batch_id"])).select(["partner_id", "enrolled_at"])
                pairs = zip(changes.column("partner_id").to_pylist(), (e is not None for e in changes.column("enrolled_at").to_pylist()), strict=True)
            except NotFound:
                valid = pq.read_table(io.BytesIO(self.warehouse._blob(plan.valid_uri(b["batch_id"])).download_as_bytes()), columns=["partner_id", "event_type"])
                valid = valid.filter(pc.is_in(valid.column("event_type"), pa.array(PARTNER_EVENTS)))
                pairs = zip(valid.column("partner_id").to_pylist(), (k == "partner.enrolled" for k in valid.column("event_type").to_pylist()), strict=True)
            for pid, is_enrollment in pairs:
                last[pid] = b["batch_id"]
                if is_enrollment:
                    enrolled[pid] = b["batch_id"]
        return last, enrolled

    def current_state(self, partner_ids: list[str], chunk: int = 10_000) -> list[dict]:
        from google.cloud import bigquery

        w, out = self.warehouse, []
        for start in range(0, len(partner_ids), chunk):
            ids = partner_ids[start:start + chunk]
            out.extend(dict(r) for r in w.run(f"SELECT * FROM {w.table('partners')} WHERE partner_id IN UNNEST(@ids)",
                                               [bigquery.ArrayQueryParameter("ids", "STRING", ids)]))
        return sorted(out, key=lambda r: r["partner_id"])

    def write(self, sink: Sink, plan: Plan) -> dict:
        t0 = time.monotonic()
        last, enrolled = self.touched(plan)
        partners = self.current_state(sorted(last))
        missing = set(last) - {p["partner_id"] for p in partners}
        if missing:
            raise GateError(f"sync {sink.name}: {len(missing)} partners of the plan are not in the warehouse's partners table, e.g. {sorted(missing)[:3]}")
        handed = pa.Table.from_pylist([p | {"sync_batch_id": last[p["partner_id"]]} for p in partners]) if partners else pa.table({})
        sink_buffer = io.BytesIO()
        pq.write_table(handed, sink_buffer)
        self.bucket.blob(plan.manifest_object).upload_from_string(sink_buffer.getvalue(), content_type="application/vnd.apache.parquet")
        result = sink.write(partners, enrolled)
        return {"plan": plan.as_dict(), "partners_uri": f"gs://{plan.bucket}/{plan.manifest_object}", "result": result.as_dict(),
                "seconds": round(time.monotonic() - t0, 3)}

    def handed_over(self, written: dict) -> list[dict]:
        table = self.warehouse._read_parquet(written["partners_uri"])
        return table.to_pylist() if table.num_columns else []

    # -- gate -----------------------------------------------------------------------------------
    def gate(self, sink: Sink, written: dict) -> dict:
        result = SinkResult.from_dict(written["result"])
        partners = self.handed_over(written)
        problems = []
        if result.partners != len(partners):
            problems.append(f"handed {len(partners)} partners, the sink counted {result.partners}")
        if not result.accounted():
            problems.append(f"partners {result.partners} != written {result.written} + unchanged {result.unchanged} + rejected {len(result.rejected)}")
        rejected = {pid for pid, _ in result.rejected}
        problems += sink.verify([p for p in partners if p["partner_id"] not in rejected], result)
        if problems:
            raise GateError(f"sync gate, {sink.name} {written['plan']['region']}: {describe(problems)}")
        return {"verified": len(partners) - len(rejected), "rejected": len(rejected)}

    # -- commit ---------------------------------------------------------------------------------
    def commit(self, written: dict, seconds: float | None = None, move_watermark: bool = True) -> dict:
        from google.cloud import bigquery

        w, plan = self.warehouse, Plan(**written["plan"])
        result = SinkResult.from_dict(written["result"])
        if not plan.batches:
            return {"batches": 0}
        partners = self.handed_over(written)
        batch_of = {p["partner_id"]: p["sync_batch_id"] for p in partners}
        version_of = {p["partner_id"]: p["partner_version"] for p in partners}
        if result.rejected:
            self._quarantine(plan, [(pid, batch_of.get(pid, plan.batches[-1]["batch_id"]), version_of.get(pid), msg) for pid, msg in result.rejected])
        rejected = {pid for pid, _ in result.rejected}
        per_batch = {b["batch_id"]: [0, 0] for b in plan.batches}
        for pid, batch_id in batch_of.items():
            per_batch[batch_id][1 if pid in rejected else 0] += 1
        seconds = written.get("seconds", 0.0) if seconds is None else seconds
        for batch_id, (synced, refused) in per_batch.items():
            # A replay adds the rows of batches never synced and leaves the others: its grouping of
            # batches differs from the regular runs', so would its per-batch counts.
            w.record_stage(batch_id, f"sync_{plan.sink}", synced, seconds, detail=f"partners {synced + refused}: synced {synced}, rejected {refused}",
                           replace=move_watermark)
        last = plan.batches[-1]
        if not move_watermark:  # a replay of old batches: the regular runs keep their place
            return {"batches": len(plan.batches), "partners": len(partners), "rejected": len(rejected), "watermark": None}
        params = [bigquery.ScalarQueryParameter("s", "STRING", plan.sink), bigquery.ScalarQueryParameter("r", "STRING", plan.region),
                  bigquery.ScalarQueryParameter("b", "STRING", last["batch_id"]),
                  bigquery.ScalarQueryParameter("t", "TIMESTAMP", datetime.fromisoformat(last["warehoused_at"]))]
        w.run(f"""MERGE {w.table('sink_watermarks', ops=True)} T
            USING (SELECT @s AS sink, @r AS region, @b AS batch_id, @t AS warehoused_at, CURRENT_TIMESTAMP() AS synced_at) S
            ON T.sink = S.sink AND T.region = S.region
            WHEN MATCHED AND S.warehoused_at > T.warehoused_at THEN UPDATE SET batch_id = S.batch_id, warehoused_at = S.warehoused_at, synced_at = S.synced_at
            WHEN NOT MATCHED THEN INSERT (sink, region, batch_id, warehoused_at, synced_at) VALUES (S.sink, S.region, S.batch_id, S.warehoused_at, S.synced_at)""",
              params)
        return {"batches": len(plan.batches), "partners": len(partners), "rejected": len(rejected), "watermark": last["batch_id"]}

    def _quarantine(self, plan: Plan, rows: list[tuple]) -> None:
        w = self.warehouse
        now = datetime.now(timezone.utc)
        table = pa.table({"sink": [plan.sink] * len(rows), "batch_id": [r[1] for r in rows], "region": [plan.region] * len(rows),
                          "partner_id": [r[0] for r in rows], "partner_version": pa.array([r[2] for r in rows], pa.int64()),
                          "message": [r[3] for r in rows], "recorded_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC"))})
        uri = f"gs://{plan.bucket}/sinks/{plan.sink}/{plan.region}/{plan.key}-rejected.parquet"
        w._write_parquet(uri, table)
        stage = w._stage(f"_stage_sinkq_{plan.sink}_{plan.key}", SINK_QUARANTINE_SCHEMA, uri)
        try:
            cols = [c for c, _ in SINK_QUARANTINE_SCHEMA]
            w.run(f"""MERGE {w.table('sink_quarantine')} T USING (SELECT * FROM {stage}) S
                ON T.sink = S.sink AND T.partner_id = S.partner_id AND T.partner_version = S.partner_version
                WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('S.' + c for c in cols)})""")
        finally:
            w.client.delete_table(stage.strip("`"), not_found_ok=True)

    # -- every region, one failing not holding back the others --------------------------------
    def write_all(self, sink: Sink, plans: dict[str, Plan]) -> dict:
        """Writes each region's plan; a region that fails is reported, the others go on."""
        written, failed = [], {}
        for region, plan in plans.items():
            if not plan.batches:
                continue
            try:
                written.append(self.write(sink, plan))
            except Exception as exc:  # reported by commit_all, after the healthy regions are committed
                log.exception("sync %s %s: write failed", sink.name, region)
                failed[region] = _said("write", exc)
        return {"written": written, "failed": failed}

    def gate_all(self, sink: Sink, stage: dict) -> dict:
        gated, failed = [], dict(stage["failed"])
        for written in stage["written"]:
            region = written["plan"]["region"]
            try:
                gated.append(written | {"gate": self.gate(sink, written)})
            except Exception as exc:
                log.exception("sync %s %s: gate failed", sink.name, region)
                failed[region] = _said("gate", exc)
        return {"written": gated, "failed": failed}

    def commit_all(self, stage: dict) -> dict:
        """Commits every region that passed its gate, then fails loudly naming the others."""
        committed = {w["plan"]["region"]: self.commit(w) | w["gate"] for w in stage["written"]}
        if stage["failed"]:
            raise SyncError("; ".join(f"{region}: {message}" for region, message in sorted(stage["failed"].items()))
                            + f" (committed: {', '.join(sorted(committed)) or 'none'})")
        return committed

    # -- all of it ----------------------------------------------------------------------------
    def run(self, sink: Sink, region: str, max_batches: int = 20) -> dict:
        """Plan, write, gate and commit in one call (command line, tests); Airflow runs the steps as tasks."""
        plan = self.plan(sink.name, region, max_batches)
        if not plan.batches:
            return {"batches": 0}
        written = self.write(sink, plan)
        gated = self.gate(sink, written)
        return self.commit(written) | gated | {"result": written["result"]}

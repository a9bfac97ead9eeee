"""Sync runs: from the warehouse to one sink, catching up by itself after an outage.

A run:

1. **plan** — the region's warehoused batches with no ledger row of this sink yet (an anti-join
   over the ledger's last ``lookback_days``), oldest first (at most ``max_batches``): after an
   outage the next run takes every batch since, and a batch warehoused late is never skipped.
2. **write** — the partners those batches touched in the state their warehouse cycles committed,
   from the batches' hand-overs (``enrollment.warehouse.handover``: no query of the warehouse;
   one row per partner, its newest version among them), handed to the sink. A plan with a batch
   without a readable hand-over (landed before them, expired, damaged) and a resync read the
   partners from the landed Parquet and their current state from the warehouse's ``partners``
   table instead. What was handed over is kept as
   ``gs://<bucket>/sinks/<sink>/<region>/<plan key>.parquet`` for the gate (XCom carries its URI).
3. **gate** — the sink reads back what it wrote (``Sink.verify``) and the counts must balance:
   partners = written + unchanged + rejected.
4. **commit** — rejected rows into ``<warehouse>.sink_quarantine`` with the service's message, a
   ledger row per batch (stage ``sync_<sink>``), then the sink's **watermark**
   (``<ops>.sink_watermarks``: the newest batch it synced per region, for people and the lag
   monitor; plans do not read it). Rows are recorded from what is read back, never from what a
   step handed on: only for batches whose warehouse ledger row exists when committing and whose
   partners the gate read back from the sink — a stale run (a retry from before a data reset)
   records nothing for batches that are gone.

A value the service refuses (a term too long for Solr, a Firestore document over its limits, a
row Marketing Cloud rejects) is one partner in the sink quarantine, never a failed run. A batch
whose landed objects are gone or unreadable is **set aside**: a ``sync_<sink>`` ledger row with
``ok = false`` and the reason (plans skip it; the reconciliation reports it as a row that does not
balance), an error logged and the alert callback called; the run goes on with the other batches.
Once repaired, ``SyncRun.resync`` (the sync DAGs' ``resync_batches`` param) syncs it again from
the warehouse's current state and replaces that row.

Every step may run twice: the plan is a function of the ledger, writes are version-guarded or
upserts, ledger and quarantine rows are MERGEd, the watermark only moves forward.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.objects import read_parquet, write_parquet
from enrollment.core.errors import GateError, SyncError, said
from enrollment.core.layout import CYCLE_MARKER
from enrollment.core.pii import Keyring
from enrollment.core.windows import Window
from enrollment.ingest.suppression import erased_among, suppressed
from enrollment.sinks.base import Sink, SinkResult, revision, summarise
from enrollment.sync.plan import SyncPlan, plan_all, region_plan, touched
from enrollment.sync.tables import SINK_QUARANTINE_SCHEMA, ensure_tables
from enrollment.warehouse.handover import SYNC_BATCH, read_handovers
from enrollment.warehouse.ledger import Ledger, StageRow

if TYPE_CHECKING:
    import google.cloud.storage as gcs

log = logging.getLogger(__name__)

# Writes of one plan to a sink without a revision guard, each read again, before the run gives up
# on partners that keep changing (each cycle commits once a minute or so: two are plenty).
STALE_ROUNDS = 5


@dataclass
class SyncRun:
    """The sync of one sink, against the warehouse and the landing bucket.

    One unit over 200 lines on purpose: write, gate and commit are the steps of one run and share
    its warehouse, bucket and alert; the DAGs call each step as a task, and the ``*_all``, ``run``
    and ``resync`` entry points only chain them. What to sync is ``enrollment.sync.plan``'s."""

    warehouse: BigQuery
    bucket: gcs.Bucket  # the landing bucket
    alert: Callable[[str], None] | None = (
        None  # called with the message when a batch is set aside (the DAG's alert callback)
    )
    # The tokenising keys, asked for only when the suppression list holds someone (the DAGs pass
    # the enrollment_pii connection's).
    keys: Callable[[], Keyring] = Keyring.from_env

    def set_aside(self, plan: SyncPlan, reasons: dict[str, str]) -> dict[str, str]:
        """Batches a sink cannot read: a ``sync_<sink>`` ledger row with ok = false names each
        (plans skip it, the reconciliation reports it), an error logged, the alert called. A batch
        with no warehouse ledger row is no batch of this pipeline (a stale plan): the region fails
        instead."""
        from google.cloud import bigquery

        w = self.warehouse
        known = {
            r["batch_id"]
            for r in w.run(
                f"SELECT batch_id FROM {w.table('ledger', ops=True)} "
                "WHERE stage = 'warehouse' AND ok AND batch_id IN UNNEST(@ids)",
                [bigquery.ArrayQueryParameter("ids", "STRING", sorted(reasons))],
            )
        }
        unknown = sorted(set(reasons) - known)
        if unknown:
            raise GateError(
                f"sync {plan.sink} {plan.region}: {len(unknown)} planned batches have neither "
                "landed objects nor a warehouse ledger row "
                f"(a stale plan?), e.g. {unknown[0]}: {reasons[unknown[0]]}"
            )
        for batch_id, reason in sorted(reasons.items()):
            # Never over a row that says the batch was synced (a replay meeting a batch damaged
            # since).
            Ledger(w).record_stage(
                batch_id,
                f"sync_{plan.sink}",
                0,
                0.0,
                ok=False,
                detail=f"set aside: {reason}"[:1000],
                replace=False,
            )
            message = (
                f"sync {plan.sink} {plan.region}: batch {batch_id} set aside, {reason}. "
                "The other batches go on; once repaired, "
                f"sync it again with the sync_{plan.sink} DAG's resync_batches param "
                "(SyncRun.resync)"
            )
            log.error(message)
            if self.alert is not None:
                self.alert(message)
        return reasons

    def current_state(self, partner_ids: list[str], chunk: int = 10_000) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        w = self.warehouse
        out: list[dict[str, Any]] = []
        for start in range(0, len(partner_ids), chunk):
            ids = partner_ids[start : start + chunk]
            out.extend(
                dict(r)
                for r in w.run(
                    f"SELECT * FROM {w.table('partners')} WHERE partner_id IN UNNEST(@ids)",
                    [bigquery.ArrayQueryParameter("ids", "STRING", ids)],
                )
            )
        return sorted(out, key=lambda r: r["partner_id"])

    def write(self, sink: Sink, plan: SyncPlan, from_warehouse: bool = False) -> dict[str, Any]:
        t0 = time.monotonic()
        handed = (
            None
            if from_warehouse
            else read_handovers(
                self.warehouse.storage,
                plan.bucket,
                plan.region,
                [b["batch_id"] for b in plan.batches],
            )
        )
        if handed is not None:
            state, last, enrolled = handed
            result = self._write_unsuppressed(sink, plan, state, None, enrolled)
            return _written(plan, result, {}, "handover", t0)
        last, enrolled, unreadable = touched(self.warehouse, plan, from_warehouse)
        set_aside = self.set_aside(plan, unreadable) if unreadable else {}
        plan = SyncPlan(
            plan.sink,
            plan.region,
            plan.bucket,
            [b for b in plan.batches if b["batch_id"] not in set_aside],
        )
        for _ in range(STALE_ROUNDS):
            partners = self.current_state(sorted(last))
            missing = set(last) - {p["partner_id"] for p in partners}
            if missing:
                raise GateError(
                    f"sync {sink.name}: {len(missing)} partners of the plan are not in the "
                    "warehouse's partners table "
                    "(erased meanwhile? the next run reads the rewritten batches)"
                )
            manifest = (
                pa.Table.from_pylist([p | {SYNC_BATCH: last[p["partner_id"]]} for p in partners])
                if partners
                else pa.table({})
            )
            result = self._write_unsuppressed(sink, plan, manifest, partners, enrolled)
            if getattr(sink, "guards_revisions", False) or not self._newer_since(partners):
                return _written(plan, result, set_aside, "warehouse", t0)
            log.info(
                "sync %s %s: partners changed in the warehouse while written: written again",
                sink.name,
                plan.region,
            )
        raise SyncError(
            f"sync {sink.name} {plan.region}: the partners kept changing in the warehouse over "
            f"{STALE_ROUNDS} writes; run it again"
        )

    def _newer_since(self, partners: list[dict[str, Any]]) -> bool:
        """Whether the warehouse now holds a newer state of any of these partners (a sink without
        a revision guard may have been written that newer state by another run meanwhile, then
        this one's older state over it)."""
        written = {p["partner_id"]: revision(p) for p in partners}
        return bool(written) and any(
            revision(p) > written[p["partner_id"]] for p in self.current_state(sorted(written))
        )

    def _write_unsuppressed(
        self,
        sink: Sink,
        plan: SyncPlan,
        manifest: pa.Table,
        partners: list[dict[str, Any]] | None,
        enrolled: Mapping[str, str],
    ) -> SinkResult:
        """Hands ``manifest``'s partners (or ``partners``, the same rows as read) to the sink, but
        none on the erasure's suppression list, asked just before the write and again just after
        it: a partner suppressed meanwhile (the erasure may have deleted them from the sink before
        this write landed) is deleted from the sink again and the rest written once more without
        them. The erasure suppresses before it deletes, so either this write saw the partner
        suppressed or the erasure's delete came after it (docs/decisions/0007)."""
        erased: set[str] = set()
        ids = manifest.column("partner_id").to_pylist() if manifest.num_rows else []
        while True:
            erased |= self._suppressed_among(ids)
            kept = manifest
            if erased and manifest.num_rows:
                kept = manifest.filter(
                    pc.invert(
                        pc.fill_null(
                            pc.is_in(
                                manifest.column("partner_id"),
                                value_set=pa.array(sorted(erased), pa.string()),
                            ),
                            False,
                        )
                    )
                )
            self._upload_manifest(plan, kept)
            rows = (
                [p for p in partners if p["partner_id"] not in erased]
                if partners is not None
                else (kept.drop_columns([SYNC_BATCH]).to_pylist() if kept.num_columns else [])
            )
            try:
                result = sink.write(
                    rows,
                    {k: v for k, v in enrolled.items() if k not in erased} if erased else enrolled,
                )
            except Exception:
                # Part of it may be written: what of it was suppressed meanwhile goes, then the
                # write fails as it would have.
                late = self._suppressed_among([p["partner_id"] for p in rows]) - erased
                try:
                    if late:
                        sink.erase(sorted(late))
                except Exception:
                    log.exception(
                        "sync %s %s: %d partners erased during a failed write may be in the "
                        "sink: run their erasure again once it answers",
                        sink.name,
                        plan.region,
                        len(late),
                    )
                raise
            late = self._suppressed_among([p["partner_id"] for p in rows]) - erased
            if not late:
                return result
            sink.erase(sorted(late))
            log.warning(
                "sync %s %s: %d partners erased during the write: deleted from the sink again, "
                "the others written again",
                sink.name,
                plan.region,
                len(late),
            )
            erased |= late

    def _suppressed_among(self, partner_ids: list[str]) -> set[str]:
        """The ids on the erasure's suppression list (read now; no key needed while it is
        empty)."""
        if not partner_ids:
            return set()
        tokens = suppressed(self.bucket)
        return erased_among(partner_ids, self.keys(), tokens) if tokens else set()

    def _upload_manifest(self, plan: SyncPlan, handed: pa.Table) -> None:
        """What this sink was handed, kept for its gate (and its commit's per-batch counts)."""
        sink_buffer = io.BytesIO()
        pq.write_table(handed, sink_buffer)
        self.bucket.blob(plan.manifest_object).upload_from_string(
            sink_buffer.getvalue(), content_type="application/vnd.apache.parquet"
        )

    def handed_over(self, written: Mapping[str, Any]) -> list[dict[str, Any]]:
        table = read_parquet(self.warehouse.storage, written["partners_uri"])
        return table.to_pylist() if table.num_columns else []

    # -- gate -----------------------------------------------------------------------------------
    def gate(self, sink: Sink, written: Mapping[str, Any]) -> dict[str, Any]:
        result = SinkResult.from_dict(written["result"])
        partners = self.handed_over(written)
        problems = []
        if result.partners != len(partners):
            problems.append(f"handed {len(partners)} partners, the sink counted {result.partners}")
        if not result.accounted():
            problems.append(
                f"partners {result.partners} != written {result.written} "
                f"+ unchanged {result.unchanged} + rejected {len(result.rejected)}"
            )
        rejected = {pid for pid, _ in result.rejected}
        problems += sink.verify([p for p in partners if p["partner_id"] not in rejected], result)
        if problems:
            raise GateError(
                f"sync gate, {sink.name} {written['plan']['region']}: {len(problems)} problems: "
                f"{summarise(problems)}"
            )
        # Per batch, what was read back: the partners handed over (read from Cloud Storage), each
        # verified in the sink or refused by it. Commit records ledger rows from this only.
        per_batch = {b["batch_id"]: [0, 0] for b in written["plan"]["batches"]}
        for p in partners:
            per_batch[p["sync_batch_id"]][1 if p["partner_id"] in rejected else 0] += 1
        return {
            "verified": len(partners) - len(rejected),
            "rejected": len(rejected),
            "per_batch": per_batch,
        }

    # -- commit ---------------------------------------------------------------------------------
    def commit(
        self,
        written: Mapping[str, Any],
        seconds: float | None = None,
        move_watermark: bool = True,
        replace: bool | None = None,
    ) -> dict[str, Any]:
        """Quarantine, ledger rows and watermark for a gated write (``written["gate"]``).

        A ledger row per batch the gate read back whose warehouse ledger row exists now; the other
        batches are left out and logged (a stale run). ``replace`` (default: ``move_watermark``)
        replaces existing rows; a row that says the batch was set aside is always replaced."""
        return self.commit_regions([written], seconds, move_watermark, replace)[0]

    def commit_regions(
        self,
        writtens: list[Mapping[str, Any]],
        seconds: float | None = None,
        move_watermark: bool = True,
        replace: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``commit`` of several regions' gated writes of one sink: one read of the ledger and
        one ledger MERGE for all of them, both within the days of the batches' warehouse rows."""
        from google.cloud import bigquery

        w = self.warehouse
        plans = [SyncPlan(**written["plan"]) for written in writtens]
        for written, plan in zip(writtens, plans, strict=True):
            if plan.batches and "gate" not in written:
                raise ValueError(
                    f"sync commit, {plan.sink} {plan.region}: no gate result; "
                    "commit records only what the gate read back"
                )
        planned = [b for plan in plans for b in plan.batches]
        if not planned:
            return [{"batches": 0, "set_aside": sorted(x.get("set_aside") or {})} for x in writtens]
        stage = f"sync_{plans[0].sink}"
        # A batch's sync rows are recorded after its warehouse row, which a cycle writes once (a
        # written batch is never recorded again): from that row's day on, the window holds them.
        window = Window.around(
            min(datetime.fromisoformat(b["warehoused_at"]) for b in planned), datetime.now(UTC), 0
        )
        held = w.run(
            f"SELECT batch_id, stage, ok FROM {w.table('ledger', ops=True)} "
            f"WHERE {window.sql('recorded_at')} AND batch_id IN UNNEST(@ids) "
            "AND stage IN ('warehouse', @stage)",
            [
                bigquery.ArrayQueryParameter("ids", "STRING", [b["batch_id"] for b in planned]),
                bigquery.ScalarQueryParameter("stage", "STRING", stage),
            ],
        )
        warehoused = {r["batch_id"] for r in held if r["stage"] == "warehouse" and r["ok"]}
        not_ok = {r["batch_id"] for r in held if r["stage"] == stage and not r["ok"]}
        replace = move_watermark if replace is None else replace
        rows: list[StageRow] = []
        outs = []
        lasts = []
        for written, plan in zip(writtens, plans, strict=True):
            out, region_rows = self._commit_region(
                written, plan, warehoused, not_ok, seconds, replace
            )
            rows += region_rows
            outs.append(out)
            lasts.append(region_rows[-1].batch_id if region_rows else None)
        Ledger(w).record_stages(stage, rows, window)
        for plan, out, last in zip(plans, outs, lasts, strict=True):
            if last is None:
                continue
            out["watermark"] = None
            if move_watermark:  # not for a replay of old batches: the regular runs keep their place
                self._move_watermark(plan, next(b for b in plan.batches if b["batch_id"] == last))
                out["watermark"] = last
        return outs

    def _commit_region(
        self,
        written: Mapping[str, Any],
        plan: SyncPlan,
        warehoused: set[str],
        not_ok: set[str],
        seconds: float | None,
        replace: bool,
    ) -> tuple[dict[str, Any], list[StageRow]]:
        """One region's part of a commit: its refusals quarantined, its ledger rows (recorded by
        the caller with the other regions')."""
        set_aside = sorted(written.get("set_aside") or {})
        if not plan.batches:
            return {"batches": 0, "set_aside": set_aside}, []
        per_batch = written["gate"]["per_batch"]
        batches = [
            b for b in plan.batches if b["batch_id"] in warehoused and b["batch_id"] in per_batch
        ]
        stale = sorted({b["batch_id"] for b in plan.batches} - {b["batch_id"] for b in batches})
        if stale:
            log.warning(
                "sync %s %s: %d batches of the plan have no warehouse ledger row now "
                "or were not gated (a stale run): nothing recorded "
                "for them, e.g. %s",
                plan.sink,
                plan.region,
                len(stale),
                stale[0],
            )
        if not batches:
            return {"batches": 0, "stale": stale, "set_aside": set_aside, "watermark": None}, []
        result = SinkResult.from_dict(written["result"])
        partners = self.handed_over(written)
        recorded = {b["batch_id"] for b in batches}
        batch_of = {p["partner_id"]: p["sync_batch_id"] for p in partners}
        version_of = {p["partner_id"]: p["partner_version"] for p in partners}
        refused = [
            (pid, batch_of.get(pid, batches[-1]["batch_id"]), version_of.get(pid), msg)
            for pid, msg in result.rejected
        ]
        refused = [r for r in refused if r[1] in recorded]
        if refused:
            self._quarantine(plan, refused)
        seconds = written.get("seconds", 0.0) if seconds is None else seconds
        rows = []
        for b in batches:
            synced, rejected = per_batch[b["batch_id"]]
            # A replay adds the rows of batches never synced and leaves the others: its grouping of
            # batches differs from the regular runs', so would its per-batch counts.
            rows.append(
                StageRow(
                    b["batch_id"],
                    synced,
                    seconds,
                    detail=f"partners {synced + rejected}: synced {synced}, rejected {rejected}",
                    replace=replace or b["batch_id"] in not_ok,
                )
            )
        out = {
            "batches": len(batches),
            "partners": sum(sum(per_batch[b["batch_id"]]) for b in batches),
            "rejected": len(refused),
            "stale": stale,
            "set_aside": set_aside,
        }
        return out, rows

    def _move_watermark(self, plan: SyncPlan, last: Mapping[str, str]) -> None:
        from google.cloud import bigquery

        w = self.warehouse
        params = [
            bigquery.ScalarQueryParameter("s", "STRING", plan.sink),
            bigquery.ScalarQueryParameter("r", "STRING", plan.region),
            bigquery.ScalarQueryParameter("b", "STRING", last["batch_id"]),
            bigquery.ScalarQueryParameter(
                "t", "TIMESTAMP", datetime.fromisoformat(last["warehoused_at"])
            ),
        ]
        w.run(
            f"""MERGE {w.table("sink_watermarks", ops=True)} T
            USING (SELECT @s AS sink, @r AS region, @b AS batch_id, @t AS warehoused_at, """
            """CURRENT_TIMESTAMP() AS synced_at) S
            ON T.sink = S.sink AND T.region = S.region
            WHEN MATCHED AND S.warehoused_at > T.warehoused_at THEN UPDATE SET """
            """batch_id = S.batch_id, warehoused_at = S.warehoused_at, synced_at = S.synced_at
            WHEN NOT MATCHED THEN INSERT (sink, region, batch_id, warehoused_at, synced_at) """
            "VALUES (S.sink, S.region, S.batch_id, S.warehoused_at, S.synced_at)",
            params,
        )

    def _quarantine(self, plan: SyncPlan, rows: list[tuple[str, str, int | None, str]]) -> None:
        w = self.warehouse
        now = datetime.now(UTC)
        table = pa.table(
            {
                "sink": [plan.sink] * len(rows),
                "batch_id": [r[1] for r in rows],
                "region": [plan.region] * len(rows),
                "partner_id": [r[0] for r in rows],
                "partner_version": pa.array([r[2] for r in rows], pa.int64()),
                "message": [r[3] for r in rows],
                "recorded_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            }
        )
        uri = f"gs://{plan.bucket}/sinks/{plan.sink}/{plan.region}/{plan.key}-rejected.parquet"
        write_parquet(w.storage, uri, table)
        stage = w.stage_uris(f"_stage_sinkq_{plan.sink}_{plan.key}", SINK_QUARANTINE_SCHEMA, [uri])
        try:
            cols = [c for c, _ in SINK_QUARANTINE_SCHEMA]
            w.run(
                f"""MERGE {w.table("sink_quarantine")} T USING (SELECT * FROM {stage}) S
                ON T.sink = S.sink AND T.partner_id = S.partner_id """
                f"""AND T.partner_version = S.partner_version
                WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) """
                f"""VALUES ({", ".join("S." + c for c in cols)})"""
            )
        finally:
            w.client.delete_table(stage.strip("`"), not_found_ok=True)

    # -- every region, one failing not holding back the others --------------------------------
    def write_all(self, sink: Sink, plans: dict[str, SyncPlan]) -> dict[str, Any]:
        """Writes each region's plan, the regions at once (the work waits on the services); a
        region that fails is reported, the others go on."""
        active = {region: plan for region, plan in plans.items() if plan.batches}
        outcomes = _each_region(active, lambda plan: self.write(sink, plan), sink.regions_at_once)
        failed: dict[str, str] = {}
        for region, outcome in outcomes.items():
            if isinstance(outcome, BaseException):
                # reported by commit_all, after the healthy regions are committed
                log.error("sync %s %s: write failed", sink.name, region, exc_info=outcome)
                failed[region] = said("write", outcome)
        written = [o for o in outcomes.values() if not isinstance(o, BaseException)]
        return {"written": written, "failed": failed}

    def gate_all(self, sink: Sink, stage: Mapping[str, Any]) -> dict[str, Any]:
        """Each region's gate, the regions at once (each reads back from the sink)."""
        failed: dict[str, str] = dict(stage["failed"])
        by_region = {w["plan"]["region"]: w for w in stage["written"]}
        outcomes = _each_region(
            by_region, lambda written: self.gate(sink, written), sink.regions_at_once
        )
        gated: list[dict[str, Any]] = []
        for region, outcome in outcomes.items():
            if isinstance(outcome, BaseException):
                log.error("sync %s %s: gate failed", sink.name, region, exc_info=outcome)
                failed[region] = said("gate", outcome)
            else:
                gated.append(by_region[region] | {"gate": outcome})
        return {"written": gated, "failed": failed}

    def commit_all(self, stage: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Commits every region that passed its gate, then fails loudly naming the others."""
        gated = list(stage["written"])
        committed = {
            w["plan"]["region"]: out | {k: v for k, v in w["gate"].items() if k != "per_batch"}
            for w, out in zip(gated, self.commit_regions(gated) if gated else [], strict=True)
        }
        if stage["failed"]:
            raise SyncError(
                "; ".join(
                    f"{region}: {message}" for region, message in sorted(stage["failed"].items())
                )
                + f" (committed: {', '.join(sorted(committed)) or 'none'})"
            )
        return committed

    # -- a train of rounds ----------------------------------------------------------------------
    def train(
        self,
        sink: Sink,
        regions: list[str],
        max_batches: int,
        lookback_days: int,
        max_s: float,
        working_on: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        linger_s: float = 0.0,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Rounds of plan → write → gate → commit, every region each round, while batches wait,
        for at most ``max_s`` seconds (one round when 0): one task's start-up for many rounds,
        and no wait for the scheduler between them. When none waits, the train waits up to
        ``linger_s`` for the warehouse's next cycle (its marker's generation, read every
        ``poll_s``) and plans again. Per region the rounds' totals, and ``rounds``; a region
        that fails ends the train after the healthy ones are committed (``commit_all``).
        ``working_on`` hears each round's batch ids (the task's alert)."""
        t0 = clock()
        totals: dict[str, Any] = {"rounds": 0}
        while True:
            # Read before the plan: a cycle that commits after it changes the marker.
            mark = self._cycle_mark() if linger_s else None
            plans = plan_all(
                self.warehouse, self.bucket.name, sink.name, regions, max_batches, lookback_days
            )
            if not any(p.batches for p in plans.values()):
                within = min(linger_s, max_s - (clock() - t0))
                if within > 0 and self._next_cycle(mark, within, poll_s, clock, sleep):
                    continue
                break
            if working_on is not None:
                working_on([b["batch_id"] for p in plans.values() for b in p.batches])
            written = self.write_all(sink, plans)
            if not written["written"]:
                raise SyncError(f"{sink.name}: every region failed: {written['failed']}")
            for region, committed in self.commit_all(self.gate_all(sink, written)).items():
                totals[region] = _summed(totals.get(region, {}), committed)
            totals["rounds"] += 1
            if clock() - t0 >= max_s:
                break
        return totals

    def _cycle_mark(self) -> int | None:
        """The generation of the warehouse's cycle marker (``layout.CYCLE_MARKER``), None when
        no cycle has written one."""
        from google.api_core.exceptions import NotFound

        blob = self.bucket.blob(CYCLE_MARKER)
        try:
            blob.reload()
        except NotFound:
            return None
        return cast("int | None", blob.generation)

    def _next_cycle(
        self,
        mark: int | None,
        within_s: float,
        poll_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> bool:
        """Whether a warehouse cycle committed (the marker changed from ``mark``) within
        ``within_s``, looking every ``poll_s``."""
        deadline = clock() + within_s
        while clock() + poll_s <= deadline:
            sleep(poll_s)
            if self._cycle_mark() != mark:
                return True
        return False

    # -- all of it ----------------------------------------------------------------------------
    def run(self, sink: Sink, region: str, max_batches: int = 20) -> dict[str, Any]:
        """Plan, write, gate and commit in one call (command line, tests); Airflow runs the steps
        as tasks."""
        plan = region_plan(self.warehouse, self.bucket.name, sink.name, region, max_batches)
        if not plan.batches:
            return {"batches": 0}
        written = self.write(sink, plan)
        gated = self.gate(sink, written)
        return (
            self.commit(written | {"gate": gated})
            | {k: v for k, v in gated.items() if k != "per_batch"}
            | {"result": written["result"]}
        )

    def resync(
        self, sink: Sink, batch_ids: list[str], chunk: int = 20
    ) -> dict[str, dict[str, int]]:
        """Syncs these batches again from the warehouse's current state: the way back for a batch
        set aside, once repaired (or any warehoused batch). Their partners are read from the landed
        objects, or from the warehouse's events when those are gone; each batch's ``sync_<sink>``
        ledger row is replaced. The watermark does not move (old batches)."""
        from google.cloud import bigquery

        w = self.warehouse
        rows = (
            w.run(
                f"""SELECT batch_id, region, recorded_at FROM {w.table("ledger", ops=True)}
            WHERE stage = 'warehouse' AND ok AND batch_id IN UNNEST(@ids)""",
                [bigquery.ArrayQueryParameter("ids", "STRING", list(batch_ids))],
            )
            if batch_ids
            else []
        )
        found = {r["batch_id"]: r for r in rows}
        missing = [b for b in batch_ids if b not in found]
        if missing:
            raise ValueError(
                f"resync {sink.name}: {len(missing)} batches have no warehouse ledger row "
                f"(replay the warehouse stage first), e.g. {missing[:3]}"
            )
        ensure_tables(self.warehouse)
        out: dict[str, dict[str, int]] = {}
        for region in sorted({r["region"] for r in rows}):
            ids = sorted(
                (b for b in found if found[b]["region"] == region),
                key=lambda b: (found[b]["recorded_at"], b),
            )
            for start in range(0, len(ids), chunk):
                plan = SyncPlan(
                    sink.name,
                    region,
                    self.bucket.name,
                    [
                        {"batch_id": b, "warehoused_at": found[b]["recorded_at"].isoformat()}
                        for b in ids[start : start + chunk]
                    ],
                )
                written = self.write(sink, plan, from_warehouse=True)
                committed = self.commit(
                    written | {"gate": self.gate(sink, written)}, move_watermark=False, replace=True
                )
                totals = out.setdefault(region, {"batches": 0, "partners": 0, "rejected": 0})
                for key in totals:
                    totals[key] += committed.get(key, 0)
        log.info("resync %s: %s", sink.name, out)
        return out


def _written(
    plan: SyncPlan, result: SinkResult, set_aside: dict[str, str], source: str, t0: float
) -> dict[str, Any]:
    """What a write hands to its gate and commit (XCom-sized): ``source`` says where the partners'
    state came from (``handover`` or ``warehouse``)."""
    return {
        "plan": plan.as_dict(),
        "partners_uri": f"gs://{plan.bucket}/{plan.manifest_object}",
        "result": result.as_dict(),
        "set_aside": set_aside,
        "source": source,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _each_region(
    work: Mapping[str, Any], step: Callable[[Any], Any], at_once: bool = True
) -> dict[str, Any]:
    """``step`` of each region's work, the regions in threads unless not ``at_once`` (the sinks'
    and BigQuery's clients are thread-safe; the work is waiting on services); region -> its
    result or its exception, in the order given."""
    if len(work) <= 1 or not at_once:
        return {region: _outcome(step, item) for region, item in work.items()}
    with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="sync-region") as pool:
        futures = {region: pool.submit(_outcome, step, item) for region, item in work.items()}
        return {region: future.result() for region, future in futures.items()}


def _outcome(step: Callable[[Any], Any], item: Any) -> Any:
    try:
        return step(item)
    except Exception as exc:
        return exc


def _summed(before: Mapping[str, Any], round_: Mapping[str, Any]) -> dict[str, Any]:
    """A region's totals over a train's rounds: counts added, lists joined, the newest
    watermark."""
    out = dict(before)
    for key, value in round_.items():
        if isinstance(value, bool) or value is None:
            out.setdefault(key, value)
        elif isinstance(value, int | float):
            out[key] = out.get(key, 0) + value
        elif isinstance(value, list):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
        if key == "watermark" and value is not None:
            out[key] = value
    return out

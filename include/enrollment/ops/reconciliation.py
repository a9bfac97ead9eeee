"""Daily reconciliation: for one region and day, every record followed from Kafka to each sink.

The batches claimed that day (the claim records in the landing bucket) are the unit. For those
the consumer group has committed past (consumed), it compares:

1. **kafka → ledger**: the offsets consumed = the ledger's ``offsets_in`` (land and warehouse
   rows present for every batch), and every ledger row balances (a ``recovered`` row counts the
   quarantined messages ``enrollment.ops.recovery`` brought back; recovery batches have no claim
   record, so they are neither consumed offsets here nor extra ones);
2. **ledger → events**: every valid event of the landed batches is in ``<warehouse>.events``;
3. **ledger → quarantine**: ``<warehouse>.quarantine`` holds the ledger's quarantined + duplicates;
4. **events → partners**: every partner of those events is in ``<warehouse>.partners``;
5. **partners → <sink>**, for every sink: the service holds each partner in its current state
   (``Sink.audit`` reads it back), for the partners whose newest change the sink has synced;
   rows the service refused are in the sink quarantine with its message, not differences. A sink
   that holds only some partners (``Sink.expects``: Marketing Cloud, the contactable ones) is
   expected to hold those, and a second finding, **partners → <sink>: not expected**, lists any
   partner it holds that it should not (a partner who declined or withdrew marketing consent).

Differences name the batches and the partner ids involved. Findings are written to
``<ops>.reconciliation`` (running again for the same day and region replaces them).

The day's event and partner ids are loaded into one staging table (one load job per region and
day) and joined, never sent as query parameters: a day holds millions of ids.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.kafka import KafkaSettings, pending_ranges
from enrollment.clients.objects import write_parquet
from enrollment.config import PipelineConfig, Region
from enrollment.contracts.spec import PARTNER_EVENTS
from enrollment.core.batch import Manifest
from enrollment.core.partners import ERASED
from enrollment.core.windows import day_bounds
from enrollment.ingest.claim import claims
from enrollment.sinks.base import Sink, summarise
from enrollment.sync.run import SyncRun
from enrollment.sync.tables import ensure_tables as ensure_sync_tables
from enrollment.warehouse.ledger import balances
from enrollment.warehouse.tables import ensure_ledger

if TYPE_CHECKING:
    import google.cloud.storage as gcs


RECONCILIATION_SCHEMA = [
    ("day", "DATE"),
    ("region", "STRING"),
    ("comparison", "STRING"),
    ("expected", "INT64"),
    ("actual", "INT64"),
    ("ok", "BOOL"),
    ("partner_ids", "STRING"),
    ("detail", "STRING"),
    ("recorded_at", "TIMESTAMP"),
]


LISTED_IDS = 100  # partner ids written per finding (the detail says how many in all)


LedgerRows = dict[tuple[str, str], dict[str, Any]]  # (batch id, stage) -> that ledger row


@dataclass
class Finding:
    comparison: str
    expected: int
    actual: int
    partner_ids: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.expected == self.actual and not self.partner_ids

    def describe(self) -> str:
        """For logs and alerts: counts, never ids (they are in the reconciliation table's
        ``partner_ids``)."""
        ids = (
            f"; {len(self.partner_ids)} partners listed in the reconciliation table"
            if self.partner_ids
            else ""
        )
        return (
            f"{self.comparison}: expected {self.expected:,}, found {self.actual:,}"
            + (f" ({self.detail})" if self.detail else "")
            + ids
        )


@dataclass
class DayReport:
    day: date
    region: str
    batches: int
    in_flight: int
    findings: list[Finding]

    @property
    def differences(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def summary(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "region": self.region,
            "batches": self.batches,
            "in_flight": self.in_flight,
            "differences": [f.describe() for f in self.differences],
            "compared": {f.comparison: f"{f.actual:,}/{f.expected:,}" for f in self.findings},
        }


def _ids(table: pa.Table, column: str = "partner_id") -> list[str]:
    return sorted({v for v in table.column(column).to_pylist() if v is not None})


def _landed_events(bucket: gcs.Bucket, manifests: list[Manifest]) -> pa.Table:
    parts = []
    for m in manifests:
        blob = bucket.blob(m.valid_object)
        if not blob.exists():
            continue
        t = pq.read_table(
            io.BytesIO(blob.download_as_bytes()),
            columns=["batch_id", "event_id", "partner_id", "event_type"],
        )
        parts.append(t)
    schema = pa.schema(
        [
            ("batch_id", pa.string()),
            ("event_id", pa.string()),
            ("partner_id", pa.string()),
            ("event_type", pa.string()),
        ]
    )
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def _kafka_vs_ledger(consumed: list[Manifest], ledger: LedgerRows, events: pa.Table) -> Finding:
    unrecorded = [
        m
        for m in consumed
        if (m.batch_id, "land") not in ledger or (m.batch_id, "warehouse") not in ledger
    ]
    recorded = sum(
        ledger[(m.batch_id, "land")]["offsets_in"]
        for m in consumed
        if (m.batch_id, "land") in ledger
    )
    partners = _ids(
        events.filter(
            pc.is_in(
                events.column("batch_id"),
                pa.array([m.batch_id for m in unrecorded], pa.string()),
            )
        )
    )
    detail = (
        f"{len(unrecorded)} consumed batches lack a land or warehouse ledger row: "
        f"{', '.join(m.batch_id for m in unrecorded[:5])}"
        if unrecorded
        else ""
    )
    return Finding("kafka → ledger", sum(m.offsets for m in consumed), recorded, partners, detail)


def _ledger_balance(ledger: LedgerRows) -> Finding:
    # A gap (offsets deleted before they were read) or a set-aside batch is a row that is not ok.
    off = [
        f"{b} {s}" + (f" ({r['detail']})" if s in ("gap", "set_aside") else "")
        for (b, s), r in sorted(ledger.items())
        if not balances(r) or not r["ok"]
    ]
    return Finding(
        "ledger balance",
        len(ledger),
        len(ledger) - len(off),
        [],
        f"rows that do not balance: {', '.join(off[:5])}" if off else "",
    )


def _write(w: BigQuery, report: DayReport) -> None:
    """The report as rows of ``<ops>.reconciliation`` (replacing the day's and region's)."""
    from google.cloud import bigquery

    now = datetime.now(UTC)
    rows = [
        {
            "day": report.day,
            "region": report.region,
            "comparison": f.comparison,
            "expected": f.expected,
            "actual": f.actual,
            "ok": f.ok,
            "partner_ids": ",".join(f.partner_ids[:LISTED_IDS]) or None,
            "detail": (
                f.detail
                + (f" ({len(f.partner_ids)} partners)" if len(f.partner_ids) > LISTED_IDS else "")
            )
            or None,
            "recorded_at": now,
        }
        for f in report.findings
    ]
    rows.append(
        {
            "day": report.day,
            "region": report.region,
            "comparison": "batches",
            "expected": report.batches + report.in_flight,
            "actual": report.batches,
            "ok": True,
            "partner_ids": None,
            "detail": f"{report.in_flight} claimed but not committed yet (in flight)",
            "recorded_at": now,
        }
    )
    w.insert_rows(
        "reconciliation", RECONCILIATION_SCHEMA, [], partition="recorded_at", cluster="region"
    )
    w.run(
        f"DELETE FROM {w.table('reconciliation', ops=True)} WHERE day = @day AND region = @region",
        [
            bigquery.ScalarQueryParameter("day", "DATE", report.day),
            bigquery.ScalarQueryParameter("region", "STRING", report.region),
        ],
    )
    w.insert_rows("reconciliation", RECONCILIATION_SCHEMA, rows)


class Reconciliation:
    """One region's day followed from Kafka to every sink (see the module's doc)."""

    def __init__(
        self, run: SyncRun, sinks: dict[str, Sink], kafka: KafkaSettings, config: PipelineConfig
    ) -> None:
        self.run, self.w, self.bucket = run, run.warehouse, run.bucket
        self.sinks, self.kafka, self.config = sinks, kafka, config

    def day(self, region: Region, day: date) -> DayReport:
        from google.cloud import bigquery

        start, end = day_bounds(day)
        manifests = claims(
            self.bucket, region.code, region.topic, self.config.consumer_group, start, end
        )
        # Every partition on the cluster (the configured count only compared: a warning when it
        # differs).
        committed = {
            p: offset
            for p, offset, _ in pending_ranges(
                self.kafka, self.config.consumer_group, region.topic, region.partitions
            )
        }
        consumed = [
            m
            for m in manifests
            if all(r.end <= committed.get(r.partition, 0) for r in m.ranges if r.size)
        ]
        report = DayReport(day, region.code, len(consumed), len(manifests) - len(consumed), [])
        if not consumed:
            _write(self.w, report)
            return report
        ensure_sync_tables(self.w)
        ensure_ledger(self.w)
        batch_ids = [m.batch_id for m in consumed]
        ledger: LedgerRows = {
            (r["batch_id"], r["stage"]): dict(r)
            for r in self.w.run(
                """SELECT batch_id, stage, offsets_in, valid, quarantined, duplicates, """
                f"""COALESCE(skipped, 0) AS skipped,
                       COALESCE(recovered, 0) AS recovered, ok, detail """
                f"""FROM {self.w.table("ledger", ops=True)} WHERE batch_id IN UNNEST(@ids)""",
                [bigquery.ArrayQueryParameter("ids", "STRING", batch_ids)],
            )
        }
        events = _landed_events(self.bucket, consumed)
        report.findings.append(_kafka_vs_ledger(consumed, ledger, events))
        report.findings.append(_ledger_balance(ledger))
        stage = self._stage(region, day, events)
        try:
            report.findings += self._warehouse(batch_ids, ledger, stage)
            for name, sink in self.sinks.items():
                report.findings += self._sink(name, sink, stage)
        finally:
            self.w.client.delete_table(stage.strip("`"), not_found_ok=True)
        _write(self.w, report)
        return report

    # -- the comparisons ------------------------------------------------------------------------
    def _stage(self, region: Region, day: date, events: pa.Table) -> str:
        uri = (
            f"gs://{self.bucket.name}/reconciliation/{region.code}/{day.isoformat()}/events.parquet"
        )
        write_parquet(self.w.storage, uri, events)
        return self.w.stage_uris(
            f"_stage_recon_{region.code.lower()}_{day:%Y%m%d}",
            [(c, "STRING") for c in events.column_names],
            [uri],
        )

    def _warehouse(self, batch_ids: list[str], ledger: LedgerRows, stage: str) -> list[Finding]:
        from google.cloud import bigquery

        w = self.w
        valid = sum(r["valid"] for (_, s), r in ledger.items() if s == "warehouse")
        quarantined = sum(
            r["quarantined"] + r["duplicates"] for (_, s), r in ledger.items() if s == "warehouse"
        )
        found = w.run(
            f"SELECT COUNT(DISTINCT S.event_id) AS n FROM {stage} S "
            f"JOIN {w.table('events')} T ON T.event_id = S.event_id"
        )[0]["n"]
        lost = w.run(
            f"SELECT DISTINCT S.partner_id FROM {stage} S "
            f"""LEFT JOIN {w.table("events")} T ON T.event_id = S.event_id
            WHERE T.event_id IS NULL ORDER BY 1"""
        )
        in_quarantine = w.run(
            f"SELECT COUNT(*) AS n FROM {w.table('quarantine')} WHERE batch_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", batch_ids)],
        )[0]["n"]
        partner_events = ", ".join(f"'{e}'" for e in PARTNER_EVENTS)
        # An erased partner's events stay (anonymised, counted by the ledger) but have no state by
        # design.
        expected_partners = w.run(f"""SELECT COUNT(DISTINCT partner_id) AS n FROM {stage}
            WHERE event_type IN ({partner_events}) AND partner_id != '{ERASED}'""")[0]["n"]
        no_state = [
            r["partner_id"]
            for r in w.run(
                f"SELECT DISTINCT S.partner_id FROM {stage} S "
                f"""LEFT JOIN {w.table("partners")} P ON P.partner_id = S.partner_id
            WHERE S.event_type IN ({partner_events}) AND S.partner_id != '{ERASED}' """
                "AND P.partner_id IS NULL ORDER BY 1"
            )
        ]
        return [
            Finding(
                "ledger → events",
                valid,
                found,
                [r["partner_id"] for r in lost],
                "valid events not in the events table" if lost else "",
            ),
            Finding("ledger → quarantine", quarantined, in_quarantine),
            Finding(
                "events → partners",
                expected_partners,
                expected_partners - len(no_state),
                no_state,
                "partners of the day's events without a current state" if no_state else "",
            ),
        ]

    def _sink(self, name: str, sink: Sink, stage: str) -> list[Finding]:
        from google.cloud import bigquery

        w = self.w
        partner_events = ", ".join(f"'{e}'" for e in PARTNER_EVENTS)
        rows = w.run(
            f"""SELECT P.*, L.batch_id IS NOT NULL AS _synced, Q.partner_id IS NOT NULL AS _refused
            FROM {w.table("partners")} P
            JOIN (SELECT DISTINCT partner_id FROM {stage} """
            f"""WHERE event_type IN ({partner_events})) S ON S.partner_id = P.partner_id
            LEFT JOIN (SELECT DISTINCT batch_id FROM {w.table("ledger", ops=True)} """
            f"""WHERE stage = @stage) L ON L.batch_id = P.batch_id
            LEFT JOIN (SELECT DISTINCT partner_id, partner_version """
            f"""FROM {w.table("sink_quarantine")} WHERE sink = @sink) Q
              ON Q.partner_id = P.partner_id AND Q.partner_version = P.partner_version""",
            [
                bigquery.ScalarQueryParameter("stage", "STRING", f"sync_{name}"),
                bigquery.ScalarQueryParameter("sink", "STRING", name),
            ],
        )
        partners = [dict(r) for r in rows]
        audited = [p for p in partners if p["_synced"] and not p["_refused"]]
        problems = sink.audit(audited) if audited else {}
        expects = getattr(sink, "expects", None)
        barred = {p["partner_id"] for p in audited if expects is not None and not expects(p)}
        held_barred = sorted(pid for pid in problems if pid in barred)
        problems = {pid: problem for pid, problem in problems.items() if pid not in barred}
        wanted = len(audited) - len(barred)
        notes = [
            f"{sum(1 for p in partners if not p['_synced'])} not synced yet",
            f"{sum(1 for p in partners if p['_refused'])} refused by the service (sink quarantine)",
        ]
        if barred:
            notes.append(f"{len(barred)} not expected there (e.g. no marketing consent)")
        if problems:
            notes.insert(
                0, summarise(f"{pid}: {problem}" for pid, problem in sorted(problems.items()))
            )
        findings = [
            Finding(
                f"partners → {name}",
                wanted,
                wanted - len(problems),
                sorted(problems),
                ", ".join(notes),
            )
        ]
        if expects is not None:
            findings.append(
                Finding(
                    f"partners → {name}: not expected",
                    0,
                    len(held_barred),
                    held_barred,
                    "held by the service though it should not hold them, "
                    f"of {len(barred)} not expected"
                    if held_barred
                    else "",
                )
            )
        return findings

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

Everything is counted in SQL and nothing of the day's events passes through this process: the
valid events of the day's batches are staged by BigQuery straight from where they landed (load
jobs over their objects) and joined, never sent as query parameters (a day holds millions of
ids); the warehouse tables are read within a constant window of arrival days (the staged events'
Kafka timestamps, the dedup window before), so a day's cost does not grow with history. Per
batch the events held are counted; partner ids are listed only for batches that do not balance.
The sink comparison reads the day's partners a page at a time: its memory holds one page and
the differences, whatever the day's size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from enrollment.clients.bigquery import BigQuery, landed_schema
from enrollment.clients.kafka import KafkaSettings, pending_ranges
from enrollment.config import PipelineConfig, Region
from enrollment.contracts.spec import PARTNER_EVENTS
from enrollment.core.batch import Manifest
from enrollment.core.partners import ERASED
from enrollment.core.windows import Window, day_bounds
from enrollment.ingest.claim import claims
from enrollment.ingest.shape import landed_schemas
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
AUDIT_PAGE = 5_000  # partners read back from a sink at a time (a day may hold millions)


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


def _landed_uris(bucket: gcs.Bucket, manifests: list[Manifest]) -> list[str]:
    """The valid-events objects of the batches, those that exist (a batch set aside after its
    objects were lost has none): metadata reads, a few at once."""
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="recon-exists") as pool:
        there = list(pool.map(lambda m: bucket.blob(m.valid_object).exists(), manifests))
    return [m.uri(m.valid_object) for m, ok in zip(manifests, there, strict=True) if ok]


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
        stage = self._stage(region, day, consumed)
        try:
            window = self._window(day, stage)
            report.findings.append(self._kafka_vs_ledger(consumed, ledger, stage))
            report.findings.append(_ledger_balance(ledger))
            report.findings += self._warehouse(batch_ids, ledger, stage, window)
            for name, sink in self.sinks.items():
                report.findings += self._sink(name, sink, stage)
        finally:
            self.w.client.delete_table(stage.strip("`"), not_found_ok=True)
        _write(self.w, report)
        return report

    # -- the comparisons ------------------------------------------------------------------------
    def _stage(self, region: Region, day: date, consumed: list[Manifest]) -> str:
        """The day's valid events, loaded by BigQuery from the batches' objects."""
        valid_schema, _ = landed_schemas()
        return self.w.stage_uris(
            f"_stage_recon_{region.code.lower()}_{day:%Y%m%d}",
            landed_schema(valid_schema),
            _landed_uris(self.bucket, consumed),
        )

    def _window(self, day: date, stage: str) -> Window:
        """The arrival days the day's rows can be in: its events' Kafka timestamps (the claim day
        at least), with the dedup window before them (a resent event is held where it first
        arrived) and a day's margin (a batch of quarantined messages only, not staged)."""
        start, _ = day_bounds(day)
        span = self.w.run(
            f"SELECT MIN(kafka_timestamp) AS lo, MAX(kafka_timestamp) AS hi FROM {stage}"
        )
        lo, hi = (span[0]["lo"], span[0]["hi"]) if span else (None, None)
        settings = getattr(self.config, "warehouse", None)
        before = getattr(settings, "dedup_window_days", 1) + 1
        return Window.around(min(lo or start, start), max(hi or start, start), before)

    def _kafka_vs_ledger(self, consumed: list[Manifest], ledger: LedgerRows, stage: str) -> Finding:
        from google.cloud import bigquery

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
        partners = (
            [
                r["partner_id"]
                for r in self.w.run(
                    f"SELECT DISTINCT partner_id FROM {stage} "
                    "WHERE batch_id IN UNNEST(@ids) AND partner_id IS NOT NULL ORDER BY 1",
                    [
                        bigquery.ArrayQueryParameter(
                            "ids", "STRING", [m.batch_id for m in unrecorded]
                        )
                    ],
                )
            ]
            if unrecorded
            else []
        )
        detail = (
            f"{len(unrecorded)} consumed batches lack a land or warehouse ledger row: "
            f"{', '.join(m.batch_id for m in unrecorded[:5])}"
            if unrecorded
            else ""
        )
        return Finding(
            "kafka → ledger", sum(m.offsets for m in consumed), recorded, partners, detail
        )

    def _warehouse(
        self, batch_ids: list[str], ledger: LedgerRows, stage: str, window: Window
    ) -> list[Finding]:
        from google.cloud import bigquery

        w = self.w
        valid = sum(r["valid"] for (_, s), r in ledger.items() if s == "warehouse")
        quarantined = sum(
            r["quarantined"] + r["duplicates"] for (_, s), r in ledger.items() if s == "warehouse"
        )
        held_events = (
            f"(SELECT DISTINCT event_id FROM {w.table('events')} "
            f"WHERE {window.sql('kafka_timestamp')})"
        )
        # Per batch: its staged event ids, and how many of them events holds.
        per_batch = w.run(
            "SELECT S.batch_id, COUNT(*) AS staged, COUNTIF(T.event_id IS NOT NULL) AS held "
            f"FROM (SELECT DISTINCT batch_id, event_id FROM {stage}) S "
            f"LEFT JOIN {held_events} T ON T.event_id = S.event_id GROUP BY S.batch_id"
        )
        found = sum(r["held"] for r in per_batch)
        short = sorted(r["batch_id"] for r in per_batch if r["held"] < r["staged"])
        lost = (
            [
                r["partner_id"]
                for r in w.run(
                    f"SELECT DISTINCT S.partner_id FROM {stage} S "
                    f"LEFT JOIN {held_events} T ON T.event_id = S.event_id "
                    "WHERE T.event_id IS NULL AND S.batch_id IN UNNEST(@ids) "
                    "AND S.partner_id IS NOT NULL ORDER BY 1",
                    [bigquery.ArrayQueryParameter("ids", "STRING", short)],
                )
            ]
            if short
            else []
        )
        in_quarantine = w.run(
            f"SELECT COUNT(*) AS n FROM {w.table('quarantine')} "
            f"WHERE {window.sql('kafka_timestamp')} AND batch_id IN UNNEST(@ids)",
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
                lost,
                (
                    f"valid events not in the events table, in {len(short)} batches: "
                    + ", ".join(short[:5])
                )
                if short
                else "",
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
        pages = w.pages(
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
            size=AUDIT_PAGE,
        )
        expects = getattr(sink, "expects", None)
        # A page at a time: only counts and the differences outlive it.
        problems: dict[str, str] = {}
        held_barred: list[str] = []
        audited = barred = unsynced = refused = 0
        for page in pages:
            partners = [dict(r) for r in page]
            unsynced += sum(1 for p in partners if not p["_synced"])
            refused += sum(1 for p in partners if p["_refused"])
            checked = [p for p in partners if p["_synced"] and not p["_refused"]]
            found = sink.audit(checked) if checked else {}
            bars = {p["partner_id"] for p in checked if expects is not None and not expects(p)}
            held_barred += [pid for pid in found if pid in bars]
            problems |= {pid: problem for pid, problem in found.items() if pid not in bars}
            audited, barred = audited + len(checked), barred + len(bars)
        held_barred.sort()
        wanted = audited - barred
        notes = [
            f"{unsynced} not synced yet",
            f"{refused} refused by the service (sink quarantine)",
        ]
        if barred:
            notes.append(f"{barred} not expected there (e.g. no marketing consent)")
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
                    f"held by the service though it should not hold them, of {barred} not expected"
                    if held_barred
                    else "",
                )
            )
        return findings

"""A day's reconciliation without services: the claim records and landed objects in an in-memory
bucket, the committed offsets handed in, BigQuery a recording stand-in. What is compared, what is
reported as a difference, and what is written (replacing the day's rows, ids listed up to a
limit, values as parameters); that the day's events are staged from where they landed, never
read by the process, and the warehouse read within a constant window."""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.core.batch import Manifest, PartitionRange
from enrollment.ops import reconciliation as recon_module
from enrollment.ops.reconciliation import LISTED_IDS, Reconciliation
from enrollment.sync.run import SyncRun
from enrollment.warehouse.tables import LEDGER_SCHEMA
from tests.unit.fakes import FakeBigQuery, FakeBucket, FakeStorage

DAY = date(2026, 11, 19)
REGION = SimpleNamespace(code="EMEA", topic="enroll.emea", partitions=1)
CONFIG = SimpleNamespace(consumer_group="pipeline")
TABLES = {
    "p.o.ledger": [c for c, _ in LEDGER_SCHEMA],
    "p.o.sink_watermarks": [],
    "p.d.sink_quarantine": [],
}


def manifest(start: int, end: int, group: str = "pipeline", topic: str = REGION.topic):
    return Manifest(
        "EMEA",
        topic,
        group,
        "landing",
        (PartitionRange(0, start, end),),
        claimed_at=f"2026-11-19T10:{start:02d}:00",
    )


def claim(bucket: FakeBucket, m: Manifest, created: datetime) -> Manifest:
    bucket.put(m.claim_record, m.to_json(), created)
    return m


def land(bucket: FakeBucket, m: Manifest, partner_ids: list[str | None]) -> None:
    table = pa.table(
        {
            "batch_id": [m.batch_id] * len(partner_ids),
            "event_id": [f"{m.batch_id}-{i}" for i in range(len(partner_ids))],
            "partner_id": partner_ids,
            "event_type": ["partner.enrolled"] * len(partner_ids),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    bucket.put(m.valid_object, sink.getvalue())


def ledger_row(m: Manifest, stage: str, **kw) -> dict:
    return {
        "batch_id": m.batch_id,
        "stage": stage,
        "offsets_in": m.offsets,
        "valid": m.offsets,
        "quarantined": 0,
        "duplicates": 0,
        "skipped": 0,
        "recovered": 0,
        "ok": True,
        "detail": "",
    } | kw


class ConsentSink:
    """Holds only consenting partners; its service holds ``wrong`` wrong."""

    def __init__(self, wrong: dict[str, str]):
        self.wrong, self.audited, self.calls = wrong, [], 0

    def expects(self, partner: dict) -> bool:
        return bool(partner.get("marketing_consent"))

    def audit(self, partners):
        ids = [p["partner_id"] for p in partners]
        self.audited += ids
        self.calls += 1
        return {pid: why for pid, why in self.wrong.items() if pid in ids}


@pytest.fixture
def day(monkeypatch):
    """Runs the day with the group committed up to ``committed`` on partition 0; returns the
    report, the BigQuery stand-in and the sink."""

    def run(bucket, answers, committed: int, sink=None):
        monkeypatch.setattr(
            recon_module, "pending_ranges", lambda *a, **k: [(0, committed, committed + 100)]
        )

        def answer(sql, params):
            flat = " ".join(sql.split())
            for pattern, rows in answers.items():
                if re.search(pattern, flat):
                    return rows
            return [{"n": 0}] if "AS n " in flat else []  # a count always has its row

        client = FakeBigQuery(answer=answer, tables=dict(TABLES))
        w = BigQuery(client, FakeStorage(bucket), "p", "d", "o")
        sinks = {"mc": sink} if sink else {}
        report = Reconciliation(SyncRun(w, bucket), sinks, "kafka:9092", CONFIG).day(REGION, DAY)
        return report, client

    return run


def written_rows(client: FakeBigQuery) -> list[dict]:
    [insert] = client.matching(r"^INSERT INTO `p\.o\.reconciliation`")
    names = [
        "day",
        "region",
        "comparison",
        "expected",
        "actual",
        "ok",
        "partner_ids",
        "detail",
        "recorded_at",
    ]
    rows = []
    i = 0
    while f"c{i}_0" in insert.params:
        rows.append({n: insert.params[f"c{i}_{j}"] for j, n in enumerate(names)})
        i += 1
    return rows


def test_a_day_follows_the_consumed_batches_and_names_what_is_missing(day):
    bucket = FakeBucket("landing")
    noon = datetime(2026, 11, 19, 12, tzinfo=UTC)
    done = claim(bucket, manifest(0, 10), noon)
    half = claim(bucket, manifest(10, 20), noon)
    claim(bucket, manifest(20, 30), noon)  # claimed, not committed: in flight
    claim(bucket, manifest(40, 50), noon - timedelta(days=1))  # another day's
    claim(bucket, manifest(60, 70, group="other"), noon)  # another pipeline's
    land(bucket, done, ["EM1", "EM2"])
    land(bucket, half, ["EM3", None])
    answers = {
        r"^SELECT batch_id, stage, offsets_in": [
            ledger_row(done, "land"),
            ledger_row(done, "warehouse", valid=9, quarantined=1),
            ledger_row(half, "land"),
        ],
        # The day's events span the 18th and the 19th (a batch claimed a day late).
        r"^SELECT MIN\(kafka_timestamp\)": [
            {"lo": datetime(2026, 11, 18, 23, tzinfo=UTC), "hi": noon}
        ],
        r"^SELECT DISTINCT partner_id FROM `p\.d\._stage_recon": [{"partner_id": "EM3"}],
        r"COUNTIF\(T\.event_id IS NOT NULL\)": [
            {"batch_id": done.batch_id, "staged": 2, "held": 1},
            {"batch_id": half.batch_id, "staged": 2, "held": 2},
        ],
        r"LEFT JOIN \(SELECT DISTINCT event_id FROM `p\.d\.events` .* IS NULL": [
            {"partner_id": "EM2"}
        ],
        r"FROM `p\.d\.quarantine`": [{"n": 1}],
        r"COUNT\(DISTINCT partner_id\)": [{"n": 3}],
        r"LEFT JOIN `p\.d\.partners` P": [{"partner_id": "EM3"}],
    }
    report, client = day(bucket, answers, committed=20)
    assert (report.batches, report.in_flight) == (2, 1)
    found = {f.comparison: f for f in report.findings}
    assert list(found) == [
        "kafka → ledger",
        "ledger balance",
        "ledger → events",
        "ledger → quarantine",
        "events → partners",
    ]
    kafka = found["kafka → ledger"]
    assert (kafka.expected, kafka.actual, kafka.partner_ids) == (20, 20, ["EM3"])
    assert half.batch_id in kafka.detail and done.batch_id not in kafka.detail
    assert found["ledger balance"].ok, "every row present balances"
    events = found["ledger → events"]
    assert (events.expected, events.actual, events.partner_ids) == (9, 3, ["EM2"])
    assert done.batch_id in events.detail and half.batch_id not in events.detail
    # Partner ids only for the batches that do not balance; the warehouse within a constant
    # window: the events' days, the dedup window (1 day) and a day's margin before them.
    [lost] = client.matching(r"IS NULL AND S\.batch_id IN UNNEST\(@ids\)")
    assert lost.params == {"ids": [done.batch_id]}
    [unrecorded] = client.matching(r"^SELECT DISTINCT partner_id FROM `p\.d\._stage_recon")
    assert unrecorded.params == {"ids": [half.batch_id]}
    window = (
        "kafka_timestamp >= TIMESTAMP '2026-11-16' AND kafka_timestamp < TIMESTAMP '2026-11-20'"
    )
    for table in ("events", "quarantine"):
        reads = client.matching(rf"FROM `p\.d\.{table}`")
        assert reads and all(window in q.flat for q in reads), table
    assert found["ledger → quarantine"].ok
    partners = found["events → partners"]
    assert (partners.expected, partners.actual, partners.partner_ids) == (3, 2, ["EM3"])

    [ledger] = client.matching(r"^SELECT batch_id, stage, offsets_in")
    assert ledger.params == {"ids": [done.batch_id, half.batch_id]}, "consumed batches only"
    assert "IN UNNEST(@ids)" in ledger.flat and done.batch_id not in ledger.sql
    stage = "p.d._stage_recon_emea_20261119"
    assert client.loads == [
        (stage, [f"gs://landing/{done.valid_object}", f"gs://landing/{half.valid_object}"])
    ], "the day's events staged from where they landed, never sent as parameters"
    assert stage in client.deleted[-1:], "the staging table is dropped"
    assert not [n for n in bucket.reads if n.startswith("landing/")], "no landed object read"
    assert not [n for n in bucket.objects if n.startswith("reconciliation/")], "no file written"


def test_the_days_rows_replace_the_earlier_ones_with_ids_listed_up_to_the_limit(day):
    bucket = FakeBucket("landing")
    noon = datetime(2026, 11, 19, 12, tzinfo=UTC)
    m = claim(bucket, manifest(0, 10), noon)
    land(bucket, m, ["EM1"])
    many = [{"partner_id": f"EM{i:010d}"} for i in range(LISTED_IDS + 5)]
    answers = {
        r"^SELECT batch_id, stage, offsets_in": [ledger_row(m, "land"), ledger_row(m, "warehouse")],
        r"COUNTIF\(T\.event_id IS NOT NULL\)": [{"batch_id": m.batch_id, "staged": 10, "held": 10}],
        r"COUNT\(DISTINCT partner_id\)": [{"n": LISTED_IDS + 5}],
        r"LEFT JOIN `p\.d\.partners` P": many,
    }
    report, client = day(bucket, answers, committed=10)
    [delete] = client.matching(r"^DELETE FROM `p\.o\.reconciliation`")
    assert delete.params == {"day": DAY, "region": "EMEA"}
    assert delete.flat.endswith("WHERE day = @day AND region = @region")
    [insert] = client.matching(r"^INSERT INTO `p\.o\.reconciliation`")
    assert client.queries.index(delete) < client.queries.index(insert), "replaced, not doubled"
    rows = {r["comparison"]: r for r in written_rows(client)}
    assert rows["ledger → events"]["ok"] and rows["ledger → events"]["partner_ids"] is None
    partners = rows["events → partners"]
    assert partners["ok"] is False
    assert partners["partner_ids"] == ",".join(p["partner_id"] for p in many[:LISTED_IDS])
    assert partners["detail"].endswith(f" ({LISTED_IDS + 5} partners)")
    assert (rows["batches"]["expected"], rows["batches"]["actual"]) == (1, 1)
    assert all(r["day"] == DAY and r["region"] == "EMEA" for r in rows.values())
    assert "EM0000000000" not in insert.sql, "values are parameters"
    assert len(report.differences) == 1


def test_a_day_with_nothing_consumed_yet_records_only_the_batches_in_flight(day):
    bucket = FakeBucket("landing")
    noon = datetime(2026, 11, 19, 12, tzinfo=UTC)
    claim(bucket, manifest(0, 10), noon)
    claim(bucket, manifest(10, 20), noon)
    report, client = day(bucket, {}, committed=5)
    assert (report.batches, report.in_flight, report.findings) == (0, 2, [])
    assert client.matching("ledger") == [], "no ledger read, no staging"
    [batches] = written_rows(client)
    assert (batches["comparison"], batches["expected"], batches["actual"]) == ("batches", 2, 0)
    assert batches["detail"] == "2 claimed but not committed yet (in flight)"


def test_a_gap_row_is_a_difference_with_its_detail(day):
    bucket = FakeBucket("landing")
    m = claim(bucket, manifest(0, 10), datetime(2026, 11, 19, 12, tzinfo=UTC))
    land(bucket, m, ["EM1"])
    answers = {
        r"^SELECT batch_id, stage, offsets_in": [
            ledger_row(m, "land"),
            ledger_row(m, "warehouse"),
            ledger_row(m, "gap", valid=0, skipped=4, ok=False, detail="p0: 4 deleted"),
        ],
    }
    report, _ = day(bucket, answers, committed=10)
    [balance] = [f for f in report.findings if f.comparison == "ledger balance"]
    assert (balance.expected, balance.actual) == (3, 2)
    assert balance.detail == f"rows that do not balance: {m.batch_id} gap (p0: 4 deleted)"


@pytest.mark.parametrize("page", [recon_module.AUDIT_PAGE, 2])
def test_a_sink_is_audited_for_synced_partners_and_a_decliner_it_holds_is_its_own_finding(
    day, page, monkeypatch
):
    # A page at a time (a day may hold millions of partners): the same findings.
    monkeypatch.setattr(recon_module, "AUDIT_PAGE", page)
    bucket = FakeBucket("landing")
    m = claim(bucket, manifest(0, 10), datetime(2026, 11, 19, 12, tzinfo=UTC))
    land(bucket, m, ["EM1"])

    def partner(pid: str, synced=True, refused=False, consent=True) -> dict:
        return {
            "partner_id": pid,
            "_synced": synced,
            "_refused": refused,
            "marketing_consent": consent,
        }

    answers = {
        r"^SELECT batch_id, stage, offsets_in": [ledger_row(m, "land"), ledger_row(m, "warehouse")],
        r"^SELECT P\.\*": [
            partner("EM1"),
            partner("EM2"),
            partner("EM3", synced=False),
            partner("EM4", refused=True),
            partner("EM5", consent=False),
            partner("EM6", consent=False),
        ],
    }
    sink = ConsentSink({"EM2": "older version", "EM5": "held", "EM6": "held"})
    report, client = day(bucket, answers, committed=10, sink=sink)
    [q] = client.matching(r"^SELECT P\.\*")
    assert q.params == {"stage": "sync_mc", "sink": "mc"}
    assert "JOIN (SELECT DISTINCT partner_id FROM `p.d._stage_recon_emea_20261119`" in q.flat
    assert sink.audited == ["EM1", "EM2", "EM5", "EM6"], "synced and not refused only"
    assert sink.calls == (1 if page > 6 else 2), "one audit per page with partners to check"
    found = {f.comparison: f for f in report.findings}
    held = found["partners → mc"]
    assert (held.expected, held.actual, held.partner_ids) == (2, 1, ["EM2"])
    assert "1 not synced yet" in held.detail and "1 refused by the service" in held.detail
    barred = found["partners → mc: not expected"]
    assert (barred.expected, barred.actual, barred.partner_ids) == (0, 2, ["EM5", "EM6"])
    assert not barred.ok

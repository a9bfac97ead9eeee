"""A sync run's bookkeeping without services: what the gate counts per batch, and what the commit
records — ledger rows only for batches warehoused and read back, refusals of those batches in the
sink quarantine, the watermark moved forward only, stale batches left out — with an in-memory
bucket and a recording BigQuery stand-in."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.core.errors import GateError, SyncError
from enrollment.core.layout import INDEX_OBJECT
from enrollment.core.pii import Keyring
from enrollment.sinks.base import SinkResult
from enrollment.sync.plan import SyncPlan
from enrollment.sync.run import SyncRun
from enrollment.warehouse.tables import LEDGER_SCHEMA
from tests.unit.fakes import FakeBigQuery, FakeBucket, FakeStorage

KEYS = Keyring.from_secret("k1", "unit-test-key-of-32-bytes-000000")
AT = {f"b{i}": datetime(2026, 11, 20, 10, i, tzinfo=UTC) for i in range(1, 4)}
TABLES = {
    "p.o.ledger": [c for c, _ in LEDGER_SCHEMA],
    "p.o.sink_watermarks": [],
    "p.d.sink_quarantine": [],
}


def plan(*batch_ids: str, region: str = "EMEA") -> SyncPlan:
    return SyncPlan(
        "solr",
        region,
        "landing",
        [{"batch_id": b, "warehoused_at": AT[b].isoformat()} for b in batch_ids],
    )


class Setup:
    """A run over a bucket and a warehouse whose ledger holds ``ledger`` rows."""

    def __init__(self, ledger: list[dict] | None = None):
        self.bucket = FakeBucket("landing")
        self.ledger = ledger or []
        self.client = FakeBigQuery(answer=self.answer, tables=dict(TABLES))
        self.warehouse = BigQuery(self.client, FakeStorage(self.bucket), "p", "d", "o")
        self.alerts: list[str] = []
        self.run = SyncRun(self.warehouse, self.bucket, alert=self.alerts.append)

    def answer(self, sql: str, params: dict) -> list[dict]:
        if sql.startswith("SELECT batch_id, stage, ok FROM `p.o.ledger`"):
            return [r for r in self.ledger if r["batch_id"] in params["ids"]]
        if sql.startswith("SELECT batch_id FROM `p.o.ledger`"):
            return [
                {"batch_id": r["batch_id"]}
                for r in self.ledger
                if r["batch_id"] in params["ids"] and r["stage"] == "warehouse" and r["ok"]
            ]
        return []

    def written(self, p: SyncPlan, partners: list[dict], result: SinkResult, **kw) -> dict:
        """What ``SyncRun.write`` hands on: the hand-over object in the bucket, the sink's
        result."""
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(partners), sink)
        self.bucket.put(p.manifest_object, sink.getvalue())
        return {
            "plan": p.as_dict(),
            "partners_uri": f"gs://landing/{p.manifest_object}",
            "result": result.as_dict(),
            "set_aside": {},
            "seconds": 1.25,
        } | kw

    def stage_rows(self) -> list[dict]:
        """The ledger rows the commit recorded (``record_stages``: one statement, the rows'
        parameters numbered), each as ``{b, stage, rows, seconds, ok, detail, replace}``."""
        rows = []
        for q in self.client.matching(r"L\.stage = @like\) S"):
            for n in range(sum(1 for k in q.params if re.fullmatch(r"b\d+", k))):
                rows.append(
                    {"stage": q.params["stage"]}
                    | {k: q.params[f"{k}{n}"] for k in ("b", "rows", "seconds", "ok", "detail")}
                    | {"replace": q.params[f"replace{n}"]}
                )
        return rows

    def ledger_statements(self) -> int:
        return len(self.client.matching(r"^MERGE `p\.o\.ledger`"))

    def watermark(self) -> list:
        return self.client.matching(r"^MERGE `p\.o\.sink_watermarks`")


def partner(pid: str, batch: str, version: int = 1) -> dict:
    return {"partner_id": pid, "partner_version": version, "sync_batch_id": batch}


def ok(batch: str, stage: str = "warehouse", is_ok: bool = True) -> dict:
    return {"batch_id": batch, "stage": stage, "ok": is_ok}


HANDED = [
    partner("EM1", "b1", 2),
    partner("EM2", "b2", 3),
    partner("EM3", "b2"),
    partner("EM4", "b3"),
]
RESULT = SinkResult(
    "solr", partners=4, written=2, unchanged=0, rejected=[("EM3", "too long"), ("EM4", "bad")]
)
GATE = {"per_batch": {"b1": [1, 0], "b2": [1, 1], "b3": [0, 1]}}


def test_the_commit_records_read_back_batches_quarantines_their_refusals_and_moves_on():
    s = Setup([ok("b1"), ok("b2"), ok("b2", "sync_solr", is_ok=False)])  # b3: no warehouse row
    p = plan("b1", "b2", "b3")
    out = s.run.commit(s.written(p, HANDED, RESULT, gate=GATE))
    assert out == {
        "batches": 2,
        "partners": 3,
        "rejected": 1,
        "stale": ["b3"],
        "set_aside": [],
        "watermark": "b2",
    }
    assert [(r["b"], r["stage"], r["rows"], r["detail"], r["replace"]) for r in s.stage_rows()] == [
        ("b1", "sync_solr", 1, "partners 1: synced 1, rejected 0", True),
        ("b2", "sync_solr", 1, "partners 2: synced 1, rejected 1", True),
    ]
    assert all(r["seconds"] == 1.25 and r["ok"] is True for r in s.stage_rows())
    rejected = pq.read_table(
        io.BytesIO(s.bucket.objects[f"sinks/solr/EMEA/{p.key}-rejected.parquet"]["data"])
    ).to_pylist()
    assert [
        (r["partner_id"], r["batch_id"], r["partner_version"], r["message"]) for r in rejected
    ] == [("EM3", "b2", 1, "too long")], "the stale batch's refusal is not recorded"
    [quarantine] = s.client.matching(r"^MERGE `p\.d\.sink_quarantine`")
    assert "ON T.sink = S.sink AND T.partner_id = S.partner_id AND T.partner_version" in (
        quarantine.flat
    )
    assert f"p.d._stage_sinkq_solr_{p.key}" in s.client.deleted, "its staging table dropped"
    [mark] = s.watermark()
    assert mark.params == {"s": "solr", "r": "EMEA", "b": "b2", "t": AT["b2"]}
    assert "WHEN MATCHED AND S.warehoused_at > T.warehoused_at THEN UPDATE" in mark.flat, (
        "the watermark only moves forward"
    )


def test_a_replay_commit_leaves_the_watermark_and_replaces_only_rows_that_say_set_aside():
    s = Setup([ok("b1"), ok("b2"), ok("b2", "sync_solr", is_ok=False)])
    p = plan("b1", "b2")
    handed = HANDED[:2]
    result = SinkResult("solr", partners=2, written=2)
    out = s.run.commit(
        s.written(p, handed, result, gate={"per_batch": {"b1": [1, 0], "b2": [1, 0]}}),
        move_watermark=False,
    )
    assert out["watermark"] is None and s.watermark() == []
    assert [(r["b"], r["replace"]) for r in s.stage_rows()] == [("b1", False), ("b2", True)]


def test_a_commit_records_nothing_without_a_gate_or_a_warehoused_batch():
    s = Setup([])
    p = plan("b1")
    with pytest.raises(ValueError, match="sync commit, solr EMEA: no gate result"):
        s.run.commit(s.written(p, HANDED[:1], SinkResult("solr", partners=1, written=1)))
    stale = s.run.commit(
        s.written(
            p,
            HANDED[:1],
            SinkResult("solr", partners=1, written=1),
            gate={"per_batch": {"b1": [1, 0]}},
        )
    )
    assert stale == {"batches": 0, "stale": ["b1"], "set_aside": [], "watermark": None}
    assert s.stage_rows() == [] and s.watermark() == []
    empty = s.run.commit({"plan": plan().as_dict(), "set_aside": {"b9": "gone", "b8": "gone"}})
    assert empty == {"batches": 0, "set_aside": ["b8", "b9"]}


class EchoSink:
    """A sink whose service holds everything handed to it, except ``missing``."""

    name = "solr"
    regions_at_once = True

    def __init__(self, missing: tuple[str, ...] = ()):
        self.missing = missing
        self.verified: list[str] = []

    def verify(self, partners, result):
        self.verified = [p["partner_id"] for p in partners]
        return [f"{pid}: not found" for pid in self.missing]


def test_the_gate_counts_per_batch_what_was_read_back_and_what_was_refused():
    s = Setup()
    p = plan("b1", "b2", "b3")
    sink = EchoSink()
    gated = s.run.gate(sink, s.written(p, HANDED, RESULT))
    assert gated == {"verified": 2, "rejected": 2, "per_batch": GATE["per_batch"]}
    assert sink.verified == ["EM1", "EM2"], "refused partners are not read back"


@pytest.mark.parametrize(
    ("result", "missing", "says"),
    [
        (
            SinkResult("solr", partners=3, written=1, rejected=RESULT.rejected),
            (),
            "handed 4 partners, the sink counted 3",
        ),
        (
            SinkResult("solr", partners=4, written=1, rejected=RESULT.rejected),
            (),
            "partners 4 != written 1 + unchanged 0 + rejected 2",
        ),
        (RESULT, ("EM1",), "EM1: not found"),
    ],
)
def test_the_gate_fails_naming_what_does_not_add_up(result, missing, says):
    s = Setup()
    with pytest.raises(GateError, match=r"sync gate, solr EMEA: 1 problems: .*" + re.escape(says)):
        s.run.gate(EchoSink(missing), s.written(plan("b1", "b2", "b3"), HANDED, result))


def test_commit_all_commits_the_healthy_regions_then_names_the_failed_ones():
    s = Setup([ok("b1")])
    p = plan("b1")
    written = s.written(
        p, HANDED[:1], SinkResult("solr", partners=1, written=1), gate={"per_batch": {"b1": [1, 0]}}
    )
    with pytest.raises(SyncError) as failed:
        s.run.commit_all(
            {"written": [written], "failed": {"LATAM": "write: boom", "APAC": "gate: 2 problems"}}
        )
    assert str(failed.value) == "APAC: gate: 2 problems; LATAM: write: boom (committed: EMEA)"
    assert [r["b"] for r in s.stage_rows()] == ["b1"], "committed before failing"
    committed = Setup([ok("b1")])
    again = committed.written(
        p, HANDED[:1], SinkResult("solr", partners=1, written=1), gate={"per_batch": {"b1": [1, 0]}}
    )
    done = committed.run.commit_all({"written": [again], "failed": {}})
    assert done["EMEA"]["batches"] == 1 and "per_batch" not in done["EMEA"]


def test_an_unreadable_batch_is_set_aside_loudly_and_an_unknown_one_fails_the_region():
    s = Setup([ok("b1")])
    assert s.run.set_aside(plan("b1"), {"b1": "its landed objects are gone"}) == {
        "b1": "its landed objects are gone"
    }
    [row] = s.stage_rows()
    assert (row["b"], row["stage"], row["ok"], row["replace"]) == ("b1", "sync_solr", False, False)
    assert row["detail"] == "set aside: its landed objects are gone"
    [alert] = s.alerts
    assert "batch b1 set aside" in alert and "resync_batches" in alert
    with pytest.raises(GateError, match="neither landed objects nor a warehouse ledger row"):
        s.run.set_aside(plan("b2"), {"b2": "gone"})


def test_a_plans_key_names_its_batches_in_order():
    assert plan("b1", "b2").key == plan("b1", "b2").key != plan("b2", "b1").key
    assert plan("b1").key != plan("b1", "b2").key
    assert plan("b1").valid_uri("b1") == "gs://landing/landing/EMEA/b1/valid.parquet"
    assert plan("b1").partners_uri("b1") == "gs://landing/landing/EMEA/b1/partners.parquet"


def test_commit_all_records_every_regions_rows_in_one_statement_within_their_days():
    s = Setup([ok("b1"), ok("b2"), ok("b3")])
    writtens = [
        s.written(
            plan("b1", region="EMEA"),
            HANDED[:1],
            SinkResult("solr", partners=1, written=1),
            gate={"per_batch": {"b1": [1, 0]}},
        ),
        s.written(
            plan("b2", "b3", region="APAC"),
            [partner("AP1", "b2"), partner("AP2", "b3")],
            SinkResult("solr", partners=2, written=2),
            gate={"per_batch": {"b2": [1, 0], "b3": [1, 0]}},
        ),
    ]
    done = s.run.commit_all({"written": writtens, "failed": {}})
    assert {r: (c["batches"], c["watermark"]) for r, c in done.items()} == {
        "EMEA": (1, "b1"),
        "APAC": (2, "b3"),
    }
    assert s.ledger_statements() == 1, "one ledger statement for the run, every region"
    assert [(r["b"], r["rows"]) for r in s.stage_rows()] == [("b1", 1), ("b2", 1), ("b3", 1)]
    [merge] = s.client.matching(r"^MERGE `p\.o\.ledger`")
    day = "TIMESTAMP '2026-11-20'"
    assert f"L.recorded_at >= {day}" in merge.flat and f"T.recorded_at >= {day}" in merge.flat, (
        "a constant partition filter from the day of the oldest batch's warehouse row"
    )
    [held] = s.client.matching(r"^SELECT batch_id, stage, ok FROM `p\.o\.ledger`")
    assert f"recorded_at >= {day}" in held.flat
    assert [m.params["r"] for m in s.watermark()] == ["EMEA", "APAC"]


class MeetingSink(EchoSink):
    """A sink whose writes wait until every region's write has started: only regions written at
    once get through."""

    def __init__(self, regions: int):
        super().__init__()
        self.started = __import__("threading").Barrier(regions, timeout=10)

    def write(self, partners, enrolled):
        self.started.wait()
        return SinkResult("solr", partners=len(partners), written=len(partners))


def test_write_all_writes_the_regions_at_once_and_reports_a_failing_one():
    s = Setup()
    s.run.current_state = lambda ids: [{"partner_id": i, "partner_version": 1} for i in ids]
    import enrollment.sync.run as run_module

    touched = {"EMEA": {"EM1": "b1"}, "APAC": {"AP1": "b2"}, "LATAM": None}

    def fake_touched(warehouse, p, from_warehouse):
        if touched[p.region] is None:
            raise RuntimeError("landed object unreadable")
        return touched[p.region], set(), {}

    original, run_module.touched = run_module.touched, fake_touched
    try:
        out = s.run.write_all(
            MeetingSink(regions=2),
            {
                "EMEA": plan("b1", region="EMEA"),
                "APAC": plan("b2", region="APAC"),
                "LATAM": plan("b3", region="LATAM"),
                "AMER": plan(region="AMER"),  # nothing to write
            },
        )
    finally:
        run_module.touched = original
    assert [w["plan"]["region"] for w in out["written"]] == ["EMEA", "APAC"]
    assert list(out["failed"]) == ["LATAM"] and "unreadable" in out["failed"]["LATAM"]


def test_a_sync_train_goes_round_while_batches_wait_and_sums_the_rounds(monkeypatch):
    import enrollment.sync.run as run_module

    s = Setup()
    waiting = [["b1"], ["b2", "b3"], []]  # what each round's plan finds
    now = [0.0]
    monkeypatch.setattr(
        run_module,
        "plan_all",
        lambda *a: {"EMEA": plan(*waiting.pop(0))},
    )
    s.run.write_all = lambda sink, plans: {"written": [plans["EMEA"].as_dict()], "failed": {}}
    s.run.gate_all = lambda sink, written: written

    def commit_all(gated):
        now[0] += 10
        n = len(gated["written"][0]["batches"])
        last = gated["written"][0]["batches"][-1]["batch_id"]
        return {"EMEA": {"batches": n, "partners": 2 * n, "stale": [], "watermark": last}}

    s.run.commit_all = commit_all
    heard = []
    out = s.run.train(EchoSink(), ["EMEA"], 20, 7, 120, heard.extend, clock=lambda: now[0])
    assert out == {
        "rounds": 2,
        "EMEA": {"batches": 3, "partners": 6, "stale": [], "watermark": "b3"},
    }, "stopped when nothing waited"
    assert heard == ["b1", "b2", "b3"]

    waiting[:] = [["b1"], ["b2"], ["b3"]]
    assert s.run.train(EchoSink(), ["EMEA"], 20, 7, 0, clock=lambda: now[0])["rounds"] == 1, (
        "train_s 0: one round"
    )
    waiting[:] = [[]]
    assert s.run.train(EchoSink(), ["EMEA"], 20, 7, 120) == {"rounds": 0}


def test_a_sync_train_with_nothing_waiting_waits_for_the_next_cycle_within_its_bounds(monkeypatch):
    """Nothing waits: the train watches the warehouse's cycle marker (every poll_s, up to
    linger_s, never past train_s) and plans again once a cycle committed; without a cycle it
    ends. The marker is read before each plan, so a cycle that commits between the plan and the
    wait is not missed."""
    import enrollment.sync.run as run_module
    from enrollment.core.layout import CYCLE_MARKER

    s = Setup()
    waiting = [["b1"], [], ["b2"], [], []]
    now = [0.0]
    monkeypatch.setattr(run_module, "plan_all", lambda *a: {"EMEA": plan(*waiting.pop(0))})
    s.run.write_all = lambda sink, plans: {"written": [plans["EMEA"].as_dict()], "failed": {}}
    s.run.gate_all = lambda sink, written: written

    def commit_all(gated):
        now[0] += 10
        last = gated["written"][0]["batches"][-1]["batch_id"]
        return {"EMEA": {"batches": 1, "partners": 2, "stale": [], "watermark": last}}

    s.run.commit_all = commit_all
    slept: list[float] = []
    cycle_after = [3]  # sleeps; a warehouse cycle commits while the train waits

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        if len(slept) == cycle_after[0]:
            s.bucket.put(CYCLE_MARKER, "{}")

    def train(max_s: float, linger_s: float) -> dict:
        return s.run.train(
            EchoSink(),
            ["EMEA"],
            20,
            7,
            max_s,
            clock=lambda: now[0],
            linger_s=linger_s,
            poll_s=1.0,
            sleep=sleep,
        )

    out = train(120, 30)
    assert out == {
        "rounds": 2,
        "EMEA": {"batches": 2, "partners": 4, "stale": [], "watermark": "b2"},
    }, "b2 came with the cycle the train waited for"
    assert len(slept) == 3 + 30 and now[0] == 53.0, "then 30 s without a cycle: the train ends"
    assert waiting == [[]]

    waiting[:], slept[:], now[0], cycle_after[0] = [["b1"], []], [], 0.0, 0
    assert train(15, 30)["rounds"] == 1 and len(slept) == 5, "never past train_s (10 + 5 s)"
    waiting[:], slept[:], now[0] = [[]], [], 0.0
    assert train(120, 0) == {"rounds": 0} and slept == [], "linger_s 0: ends at once"


class CountingSink(EchoSink):
    """A sink that counts how many writes run at the same time."""

    regions_at_once = False

    def __init__(self):
        super().__init__()
        self.running = self.most = 0
        self.lock = __import__("threading").Lock()

    def write(self, partners, enrolled):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        __import__("time").sleep(0.05)
        with self.lock:
            self.running -= 1
        return SinkResult("solr", partners=len(partners), written=len(partners))


def test_a_sink_that_says_so_gets_its_regions_one_after_another(monkeypatch):
    import enrollment.sync.run as run_module

    s = Setup()
    s.run.current_state = lambda ids: [{"partner_id": i, "partner_version": 1} for i in ids]
    monkeypatch.setattr(run_module, "touched", lambda w, p, f: ({p.region: "b"}, set(), {}))
    sink = CountingSink()
    out = s.run.write_all(sink, {r: plan("b1", region=r) for r in ("EMEA", "APAC", "LATAM")})
    assert len(out["written"]) == 3 and sink.most == 1


class ErasedMidWrite(EchoSink):
    """A sink during whose first write the erasure suppresses ``victim`` (and, ``fails``, the
    write then fails); it records what each write was handed and what it was asked to erase."""

    def __init__(self, bucket: FakeBucket, victim: str, fails: bool = False):
        super().__init__()
        self.bucket, self.victim, self.fails = bucket, victim, fails
        self.handed: list[list[str]] = []
        self.erased: list[list[str]] = []

    def write(self, partners, enrolled):
        self.handed.append(sorted(p["partner_id"] for p in partners))
        if len(self.handed) == 1:
            self.bucket.put_json(INDEX_OBJECT, {"tokens": [KEYS.token(self.victim, "partner_id")]})
            if self.fails:
                raise RuntimeError("connection reset")
        return SinkResult("solr", partners=len(partners), written=len(partners))

    def erase(self, partner_ids):
        self.erased.append(list(partner_ids))
        return {"deleted": len(partner_ids), "remaining": 0}


def _erasure_setup(monkeypatch, sink_fails: bool = False):
    import enrollment.sync.run as run_module

    s = Setup()
    s.run.keys = lambda: KEYS
    s.run.current_state = lambda ids: [{"partner_id": i, "partner_version": 1} for i in ids]
    monkeypatch.setattr(run_module, "touched", lambda w, p, f: ({"EM1": "b1", "EM2": "b1"}, {}, {}))
    return s, ErasedMidWrite(s.bucket, "EM1", fails=sink_fails)


def test_a_partner_suppressed_during_a_sink_write_is_deleted_again_and_left_out(monkeypatch):
    s, sink = _erasure_setup(monkeypatch)
    p = plan("b1")
    written = s.run.write(sink, p)
    assert sink.handed == [["EM1", "EM2"], ["EM2"]], "written once more without them"
    assert sink.erased == [["EM1"]], "deleted from the sink after the write"
    assert written["result"]["partners"] == 1
    manifest = pq.read_table(io.BytesIO(s.bucket.objects[p.manifest_object]["data"]))
    assert manifest.column("partner_id").to_pylist() == ["EM2"], "the gate reads what it holds"

    # Suppressed before the write: never handed, nothing to undo.
    again = ErasedMidWrite(s.bucket, "EM1")
    s.run.write(again, p)
    assert again.handed[0] == ["EM2"] and again.erased == []


def test_a_failing_sink_write_still_deletes_who_was_suppressed_during_it(monkeypatch):
    s, sink = _erasure_setup(monkeypatch, sink_fails=True)
    with pytest.raises(RuntimeError, match="connection reset"):
        s.run.write(sink, plan("b1"))
    assert sink.erased == [["EM1"]]


def test_no_key_is_asked_for_while_nobody_is_suppressed(monkeypatch):
    s, _ = _erasure_setup(monkeypatch)

    def no_key():
        raise AssertionError("the key was asked for")

    s.run.keys = no_key
    sink = EchoSink()
    sink.write = lambda partners, enrolled: SinkResult("solr", partners=len(partners))
    assert s.run.write(sink, plan("b1"))["result"]["partners"] == 2

"""The SQL the warehouse, the cycle, the sync and the reconciliation send, read as text without a
service (a recording BigQuery stand-in): each statement names its tables, filters partitions by
constants (what BigQuery can prune on), and passes values as parameters, never inlined."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from enrollment.clients.bigquery import BigQuery, sql_timestamp
from enrollment.core.batch import Landed
from enrollment.core.errors import GateError
from enrollment.core.partners import FOLLOWS, PARTNER_COLUMNS, PARTNER_SCHEMA
from enrollment.core.windows import Window
from enrollment.sync.plan import plan_all, touched_in_warehouse
from enrollment.sync.tables import ensure_tables as ensure_sync_tables
from enrollment.warehouse.gates import MANDATORY, events_gate_sql
from enrollment.warehouse.ledger import Ledger
from enrollment.warehouse.statements import merge_partners_sql, quarantine_insert_sql
from enrollment.warehouse.tables import LEDGER_SCHEMA, ensure_ledger
from tests.unit.fakes import FakeBigQuery, FakeBucket, FakeStorage

WINDOW = Window(datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC))
WINDOW_SQL = "TIMESTAMP '2026-11-19' AND {col} < TIMESTAMP '2026-11-21'"
LEDGER_COLUMNS = [c for c, _ in LEDGER_SCHEMA]


def one_line(sql: str) -> str:
    return " ".join(sql.split())


def warehouse(answer=None, tables=None) -> tuple[BigQuery, FakeBigQuery]:
    client = FakeBigQuery(
        answer=answer or (lambda sql, params: []),
        tables={"p.o.ledger": LEDGER_COLUMNS} if tables is None else tables,
    )
    w = BigQuery(
        client=client, storage=FakeStorage(FakeBucket()), project="p", dataset="d", ops_dataset="o"
    )
    return w, client


def landed(batch_id: str = "emea-1", **kw) -> Landed:
    return Landed(
        **{
            "batch_id": batch_id,
            "region": "EMEA",
            "offsets": 30,
            "valid": 25,
            "quarantined": 3,
            "duplicates": 1,
            "valid_uri": f"gs://landing/landing/EMEA/{batch_id}/valid.parquet",
            "quarantine_uri": f"gs://landing/landing/EMEA/{batch_id}/quarantine.parquet",
            "seconds": 1.5,
            "skipped": 1,
        }
        | kw
    )


# -- the warehouse cycle ---------------------------------------------------------------------------
def test_the_quarantine_insert_is_guarded_by_batch_partition_and_offset_in_its_days():
    w, _ = warehouse()
    sql = one_line(quarantine_insert_sql(w, "`p.d._cycle_q`", ["batch_id", "reasons"], WINDOW))
    assert sql.startswith("INSERT INTO `p.d.quarantine` (batch_id, reasons) SELECT S.batch_id,")
    assert "FROM `p.d._cycle_q` S WHERE NOT EXISTS (SELECT 1 FROM `p.d.quarantine` T" in sql
    assert "T.kafka_timestamp >= " + WINDOW_SQL.format(col="T.kafka_timestamp") in sql
    for key in ("batch_id", "kafka_partition", "kafka_offset"):
        assert f"T.{key} = S.{key}" in sql
    assert "@" not in sql, "constants only: BigQuery prunes on them"


def test_the_events_gate_reads_the_cycles_days_for_the_staged_ids_and_checks_mandatory_columns():
    w, _ = warehouse()
    sql = one_line(events_gate_sql(w, "`p.d._cycle_e`", "`p.d._cycle_held_x`", WINDOW))
    assert "FROM `p.d.events` T WHERE T.kafka_timestamp >= " in sql
    assert WINDOW_SQL.format(col="T.kafka_timestamp") in sql
    assert "T.event_id IN (SELECT event_id FROM `p.d._cycle_e`)" in sql
    assert "SELECT event_id, outside AS n FROM `p.d._cycle_held_x` WHERE outside > 0" in sql, (
        "the rest of the window counted from what the cycle found before writing"
    )
    assert "COUNTIF(" + " OR ".join(f"S.{c} IS NULL" for c in MANDATORY) + ") AS incomplete" in sql
    for column in ("valid", "held", "repeated", "incomplete", "written"):
        assert f"AS {column}" in sql
    assert sql.endswith("GROUP BY S.batch_id") and "@" not in sql


def test_the_partners_merge_guards_every_field_by_its_version_and_followers_by_their_leader():
    w, _ = warehouse()
    sql = one_line(merge_partners_sql(w, "`p.d._cycle_partners_x`"))
    assert sql.startswith(
        "MERGE `p.d.partners` T USING (SELECT * FROM `p.d._cycle_partners_x`) S "
        "ON T.partner_id = S.partner_id"
    )
    for column in PARTNER_COLUMNS:
        lead = FOLLOWS.get(column, column)
        assert (
            f"{column} = CASE WHEN S.{lead}_version > COALESCE(T.{lead}_version, -1) "
            f"THEN S.{column} ELSE T.{column} END"
        ) in sql, column
        assert f"{column}_version = NULLIF(GREATEST(COALESCE(S.{column}_version, -1)" in sql
    assert "partner_version = GREATEST(S.partner_version, T.partner_version)" in sql
    inserted = re.search(r"INSERT \(([^)]*)\)", sql).group(1).split(", ")
    assert inserted == [c for c, _ in PARTNER_SCHEMA], "every column, in the schema's order"


def test_already_warehoused_batches_are_read_from_the_window_with_the_ids_as_a_parameter():
    w, client = warehouse(answer=lambda sql, params: [{"batch_id": "b2"}, {"batch_id": "b1"}])
    assert Ledger(w).warehoused(["b1", "b2", "b3"], WINDOW) == ["b1", "b2"]
    [q] = client.queries
    assert "FROM `p.o.ledger` WHERE recorded_at >= " + WINDOW_SQL.format(col="recorded_at") in (
        q.flat
    )
    assert "stage = 'warehouse' AND ok AND batch_id IN UNNEST(@ids)" in q.flat
    assert q.params == {"ids": ["b1", "b2", "b3"]} and "b3" not in q.sql


# -- the ledger -----------------------------------------------------------------------------------
def test_a_ledger_row_is_merged_on_batch_and_stage_with_every_value_a_parameter():
    w, client = warehouse()
    Ledger(w).record(landed(), "land", 25, 1.5, detail="it's 'quoted'")
    [q] = client.queries
    assert q.flat.startswith("MERGE `p.o.ledger` T USING (SELECT @batch_id AS batch_id,")
    assert "ON T.batch_id = S.batch_id AND T.stage = S.stage" in q.flat
    assert q.params["detail"] == "it's 'quoted'" and "quoted" not in q.sql
    assert (q.params["offsets_in"], q.params["valid"], q.params["skipped"]) == (30, 25, 1)
    assert "emea-1" not in q.sql


def test_a_later_stage_copies_the_batch_numbers_and_replaces_only_when_asked():
    w, client = warehouse()
    Ledger(w).record_stage(
        "emea-1", "sync_solr", 7, 2.0, ok=False, detail="set aside", replace=False
    )
    [q] = client.queries
    assert "FROM `p.o.ledger` L JOIN (SELECT @b0 AS batch_id" in q.flat
    assert "ON L.batch_id = O.batch_id WHERE L.stage = @like) S" in q.flat
    assert (
        "WHEN MATCHED AND S.replace_row AND (T.rows_merged != S.rows_merged OR T.ok != S.ok"
        in q.flat
    )
    assert q.params == {
        "b0": "emea-1",
        "stage": "sync_solr",
        "like": "warehouse",
        "rows0": 7,
        "seconds0": 2.0,
        "ok0": False,
        "detail0": "set aside",
        "replace0": False,
    }


def test_later_stages_of_many_batches_are_one_merge_within_their_days():
    from datetime import UTC, datetime

    from enrollment.core.windows import Window
    from enrollment.warehouse.ledger import StageRow

    w, client = warehouse()
    window = Window.around(
        datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC), 0
    )
    Ledger(w).record_stages(
        "sync_solr", [StageRow("emea-1", 7, 2.0), StageRow("apac-1", 3, 2.0, replace=False)], window
    )
    [q] = client.queries
    assert "SELECT @b0 AS batch_id" in q.flat and "UNION ALL SELECT @b1 AS batch_id" in q.flat
    assert (
        "L.recorded_at >= TIMESTAMP '2026-11-20' AND L.recorded_at < TIMESTAMP '2026-11-22'"
        in q.flat
    )
    assert "ON T.recorded_at >= TIMESTAMP '2026-11-20'" in q.flat
    assert (q.params["b1"], q.params["rows1"], q.params["replace1"]) == ("apac-1", 3, False)
    Ledger(w).record_stages("sync_solr", [], window)
    assert len(client.queries) == 1, "nothing to record: no statement"


def test_a_cycle_records_land_warehouse_set_aside_and_anomaly_rows_in_one_merge():
    w, client = warehouse()
    requeued = landed(
        "emea-2",
        requeued=True,
        anomalies=[{"kind": "gap", "partition": 0, "start": 5, "end": 9, "detail": "p0"}],
    )
    info = {b: {"written": 20, "detail": f"{b} ok"} for b in ("emea-1", "emea-2")}
    Ledger(w).record_cycle([landed("emea-1"), requeued], info, WINDOW, seconds=4.0)
    [q] = client.queries
    assert q.flat.startswith("MERGE `p.o.ledger` T USING (SELECT @batch_id0 AS batch_id")
    assert (
        "ON T.recorded_at >= "
        + WINDOW_SQL.format(col="T.recorded_at")
        + " AND T.batch_id = S.batch_id AND T.stage = S.stage"
    ) in q.flat, "the ledger's partitions of the window only"
    rows = sorted(
        (q.params[f"batch_id{n}"], q.params[f"stage{n}"], q.params[f"rows_merged{n}"])
        for n in range(q.flat.count(" UNION ALL ") + 1)
    )
    assert rows == [
        ("emea-1", "land", 25),
        ("emea-1", "warehouse", 20),
        ("emea-2", "gap", 0),
        ("emea-2", "land", 25),
        ("emea-2", "set_aside", 0),
        ("emea-2", "warehouse", 20),
    ]
    assert "emea-" not in q.sql, "batch ids are parameters"
    Ledger(w).record_cycle([], {}, WINDOW, seconds=0.0)
    assert len(client.queries) == 1, "nothing to record: no statement"


def test_the_ledger_gets_the_columns_added_since_it_was_created():
    w, client = warehouse(tables={"p.o.ledger": LEDGER_COLUMNS[:-2]})
    ensure_ledger(w)
    assert [q.flat for q in client.queries] == [
        "ALTER TABLE `p.o.ledger` ADD COLUMN IF NOT EXISTS skipped INT64",
        "ALTER TABLE `p.o.ledger` ADD COLUMN IF NOT EXISTS recovered INT64",
    ]
    ensure_ledger(w)
    assert len(client.queries) == 2, "once per process"
    fresh, created = warehouse(tables={})
    ensure_ledger(fresh)
    [q] = created.queries
    assert q.flat.startswith("CREATE TABLE IF NOT EXISTS `p.o.ledger` (batch_id STRING,")
    assert q.flat.endswith("PARTITION BY DATE(recorded_at) CLUSTER BY region, batch_id")


def test_the_balance_names_the_stage_that_does_not_add_up():
    row = {
        "stage": "land",
        "offsets_in": 30,
        "valid": 25,
        "quarantined": 3,
        "duplicates": 1,
        "skipped": 1,
        "recovered": 0,
        "ok": True,
        "detail": "",
    }
    w, client = warehouse(answer=lambda sql, params: [row])
    assert Ledger(w).balance("emea-1") == {"land": row}
    assert client.queries[-1].params == {"b": "emea-1"}
    short, _ = warehouse(answer=lambda sql, params: [row | {"valid": 24, "stage": "warehouse"}])
    with pytest.raises(GateError, match=r"batch emea-1, stage warehouse: offsets 30 != valid 24"):
        Ledger(short).balance("emea-1")
    gap, _ = warehouse(answer=lambda sql, params: [row | {"ok": False, "detail": "p0 deleted"}])
    with pytest.raises(GateError, match=r"ok=False; p0 deleted"):
        Ledger(gap).balance("emea-1")
    empty, _ = warehouse()
    with pytest.raises(GateError, match="ledger: no row for batch emea-9"):
        Ledger(empty).balance("emea-9")


@pytest.mark.parametrize("key", [(), ("sink", "region")])
def test_a_few_rows_are_written_with_one_statement_and_their_values_as_parameters(key):
    w, client = warehouse()
    schema = [("sink", "STRING"), ("region", "STRING"), ("partition", "INT64")]
    rows = [{"sink": "solr", "region": "EMEA", "partition": 1}, {"sink": "mc", "region": "APAC"}]
    assert w.insert_rows("marks", schema, rows, partition="x", cluster="sink", key=key) == 2
    ddl, write = client.queries
    assert ddl.flat == (
        "CREATE TABLE IF NOT EXISTS `p.o.marks` (`sink` STRING, `region` STRING, "
        "`partition` INT64) PARTITION BY DATE(x) CLUSTER BY sink"
    )
    assert write.params == {
        "c0_0": "solr",
        "c0_1": "EMEA",
        "c0_2": 1,
        "c1_0": "mc",
        "c1_1": "APAC",
        "c1_2": None,
    }
    assert "solr" not in write.sql and "APAC" not in write.sql
    if key:
        assert write.flat.startswith("MERGE `p.o.marks` T USING (SELECT @c0_0 AS `sink`")
        assert "ON T.`sink` = S.`sink` AND T.`region` = S.`region`" in write.flat
        assert "UPDATE SET `partition` = S.`partition`" in write.flat
    else:
        assert write.flat.startswith(
            "INSERT INTO `p.o.marks` (`sink`, `region`, `partition`) SELECT @c0_0 AS `sink`"
        )
    assert w.insert_rows("marks", schema, []) == 0 and len(client.queries) == 3, "the DDL only"


def test_a_timestamp_literal_is_utc_with_microseconds():
    from datetime import timedelta, timezone

    at = datetime(2026, 11, 20, 14, 30, 5, 123, tzinfo=timezone(timedelta(hours=2)))
    assert sql_timestamp(at) == "TIMESTAMP '2026-11-20 12:30:05.000123+00:00'"


# -- the sync plan ---------------------------------------------------------------------------------
def test_a_plan_is_an_anti_join_over_the_ledger_lookback_with_stage_and_regions_as_parameters():
    t = datetime(2026, 11, 20, 10, tzinfo=UTC)
    rows = [
        {"region": "EMEA", "batch_id": f"emea-{i}", "recorded_at": t.replace(minute=i)}
        for i in range(5)
    ] + [{"region": "APAC", "batch_id": "apac-0", "recorded_at": t}]
    w, client = warehouse(
        answer=lambda sql, params: rows if "LEFT JOIN" in sql else [],
        tables={"p.o.ledger": LEDGER_COLUMNS, "p.o.sink_watermarks": [], "p.d.sink_quarantine": []},
    )
    plans = plan_all(
        w, "landing", "solr", ["EMEA", "APAC", "LATAM"], max_batches=3, lookback_days=7
    )
    [q] = client.matching("LEFT JOIN")
    since = re.search(r"recorded_at >= TIMESTAMP '(\d{4}-\d\d-\d\d)'", q.flat).group(1)
    assert (datetime.now(UTC).date() - date.fromisoformat(since)).days == 7, "a constant lookback"
    assert q.params == {"stage": "sync_solr", "regions": ["EMEA", "APAC", "LATAM"]}
    assert "S.batch_id IS NULL" in q.flat and "L.stage = 'warehouse' AND L.ok" in q.flat
    assert [b["batch_id"] for b in plans["EMEA"].batches] == ["emea-0", "emea-1", "emea-2"]
    assert plans["EMEA"].batches[0]["warehoused_at"] == t.isoformat()
    assert [b["batch_id"] for b in plans["APAC"].batches] == ["apac-0"]
    assert plans["LATAM"].batches == [] and plans["LATAM"].bucket == "landing"
    assert plans["EMEA"].manifest_object == f"sinks/solr/EMEA/{plans['EMEA'].key}.parquet"


def test_without_a_ledger_every_plan_is_empty_and_nothing_is_read():
    w, client = warehouse(tables={"p.o.sink_watermarks": [], "p.d.sink_quarantine": []})
    plans = plan_all(w, "landing", "solr", ["EMEA"])
    assert plans["EMEA"].batches == [] and client.queries == []


def test_the_sync_tables_are_created_only_when_missing():
    w, client = warehouse(tables={"p.o.sink_watermarks": []})
    ensure_sync_tables(w)
    [q] = client.queries
    assert q.flat.startswith("CREATE TABLE IF NOT EXISTS `p.d.sink_quarantine` (sink STRING,")
    assert q.flat.endswith("PARTITION BY DATE(recorded_at) CLUSTER BY sink, region")


def test_a_resync_reads_a_batchs_partners_from_a_bounded_range_of_events():
    w, client = warehouse(
        answer=lambda sql, params: [
            {"partner_id": "EM1", "enrolled": 1},
            {"partner_id": "EM2", "enrolled": 0},
        ]
    )
    pairs = touched_in_warehouse(
        w, {"batch_id": "emea-1", "warehoused_at": "2026-11-20T10:00:00+00:00"}, days_before=3
    )
    assert pairs == [("EM1", True), ("EM2", False)]
    [q] = client.queries
    assert "FROM `p.d.events` WHERE kafka_timestamp BETWEEN TIMESTAMP_SUB(@at, INTERVAL 3 DAY)" in (
        q.flat
    )
    assert q.params["b"] == "emea-1" and q.params["at"] == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert q.params["kinds"] == ["partner.enrolled", "partner.updated", "partner.terminated"]

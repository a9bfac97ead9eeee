"""Pure logic of the warehouse cycle: the MERGE source has one row per partner whatever the
batches hold (BigQuery refuses duplicate keys; the emulator does not), the window is a constant
aligned on days, the statements name their tables, and the settings refuse what they do not know."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment.clients.bigquery import BigQuery
from enrollment.config import LagRules, WarehouseSettings, parse_config
from enrollment.core.partners import PARTNER_COLUMNS, PARTNER_SCHEMA, fold_partners, partner_changes
from enrollment.core.windows import Window
from enrollment.ingest.shape import flatten, landed_schemas
from enrollment.ingest.validation import validate_batch
from enrollment.ops.lag import LagRow, alerts
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import _count_writes
from enrollment.warehouse.statements import events_insert_sql, held_sql


def landed(seed: int, n: int, batch_id: str, redeliver: list | None = None) -> pa.Table:
    """A landed valid table as the land step makes it, from simulated messages (optionally with
    another batch's messages delivered again)."""
    messages = Simulator(seed=seed, faults=FaultRates.mix(0.05), initial_partners=20).take(n) + (
        redeliver or []
    )
    values = [m.value for m in messages]
    kafka = pa.table(
        {
            "kafka_partition": pa.array([0] * len(values), pa.int32()),
            "kafka_offset": pa.array(range(len(values)), pa.int64()),
            "kafka_timestamp": pa.array(
                [1_764_400_000_000 + i for i in range(len(values))], pa.timestamp("ms", tz="UTC")
            ),
            "kafka_key": pa.array([m.key for m in messages], pa.binary()),
            "value": pa.array(values, pa.binary()),
        }
    )
    return flatten(validate_batch(values), kafka, batch_id).drop_columns(["event_json"]), messages


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4))
def test_the_partners_merge_source_has_one_row_per_partner(seed, sizes):
    tables, previous = [], []
    for i, n in enumerate(sizes):
        table, messages = landed(seed + i, n, f"b{i}", redeliver=previous[: n // 3])
        tables.append(table)
        previous = messages
    cycle = pa.concat_tables(tables)
    changes = partner_changes(cycle)
    ids = changes.column("partner_id").to_pylist()
    assert len(ids) == len(set(ids)), "a MERGE source with duplicate keys fails on BigQuery"
    assert changes.column_names == [c for c, _ in PARTNER_SCHEMA]
    partner_rows = cycle.filter(
        pa.compute.is_in(
            cycle.column("event_type"),
            pa.array(["partner.enrolled", "partner.updated", "partner.terminated"]),
        )
    )
    assert set(ids) == set(partner_rows.column("partner_id").to_pylist())


def test_the_window_is_whole_days_before_the_first_arrival_to_the_end_of_the_last():
    w = Window.around(
        datetime(2026, 11, 29, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 11, 30, 13, 0, tzinfo=UTC),
        1,
    )
    assert (w.lo, w.hi, w.days) == (
        datetime(2026, 11, 28, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
        3,
    )
    assert (
        w.sql("T.kafka_timestamp")
        == "T.kafka_timestamp >= TIMESTAMP '2026-11-28' AND T.kafka_timestamp < TIMESTAMP "
        "'2026-12-01'"
    )


def test_the_window_is_read_once_by_constants_only_and_the_insert_reads_what_it_found():
    w = BigQuery(client=None, storage=None, project="p", dataset="d", ops_dataset="o")
    day = datetime(2026, 11, 29, 10, tzinfo=UTC)
    sql = held_sql(
        w,
        "`p.d._cycle_events_x`",
        "`p.d._cycle_held_x`",
        Window.around(day, day, 1),
        Window.around(day, day, 0),
    )
    assert sql.startswith("CREATE TABLE `p.d._cycle_held_x` AS SELECT T.event_id")
    where = sql.split("WHERE", 1)[1]
    assert (
        "T.kafka_timestamp >= TIMESTAMP '2026-11-28' AND T.kafka_timestamp < TIMESTAMP '2026-11-30'"
        in where
    ), "a constant partition filter"
    assert (
        "COUNTIF(NOT (T.kafka_timestamp >= TIMESTAMP '2026-11-29' AND T.kafka_timestamp < "
        "TIMESTAMP '2026-11-30')) AS outside" in sql
    ), "what lies outside the cycle's own day, where it cannot write"
    assert "@" not in sql and "SELECT MIN" not in sql.upper(), (
        "no parameter or subquery in the partition filter: BigQuery would not prune"
    )
    insert = events_insert_sql(
        w, "`p.d._cycle_events_x`", ["event_id", "kafka_timestamp"], "`p.d._cycle_held_x`"
    )
    exists = insert.split("WHERE NOT EXISTS", 1)[1]
    assert "FROM `p.d._cycle_held_x` H WHERE H.event_id = S.event_id" in exists
    assert "`p.d.events`" not in exists, "the window is not read twice"


def test_write_statements_are_counted_per_table():
    script = (
        "INSERT INTO `p.d.events` (a) SELECT 1;\nMERGE `p.d.partners` T USING x S ON TRUE "
        "WHEN MATCHED THEN DELETE;\nINSERT INTO `p.d.quarantine` (a) SELECT 1"
    )
    assert _count_writes(
        [script, "SELECT 1", "MERGE `p.o.ledger` T USING y S ON TRUE WHEN MATCHED THEN DELETE"]
    ) == {"events": 1, "partners": 1, "quarantine": 1, "ledger": 1}


def test_warehouse_settings_have_defaults_and_refuse_unknown_keys():
    base = {
        "project": "p",
        "consumer_group": "g",
        "landing_bucket": "b",
        "datasets": {"warehouse": "w", "ops": "o"},
        "solr_core": "c",
        "marketing_cloud": {"data_extension": "d"},
        "regions": [{"code": "AMER", "topic": "a", "partitions": 1, "countries": ["US"]}],
    }
    assert parse_config(base).warehouse == WarehouseSettings()
    assert (
        parse_config(base | {"warehouse": {"dedup_window_days": 0}}).warehouse.dedup_window_days
        == 0
    )
    with pytest.raises(ValueError, match=r"warehouse: unknown key\(s\) \['max_rows'\]"):
        parse_config(base | {"warehouse": {"max_rows": 5}})
    with pytest.raises(ValueError, match="max_cycle_rows"):
        parse_config(base | {"warehouse": {"max_cycle_rows": 0}})


def test_a_landed_batch_waiting_too_long_for_the_warehouse_alerts():
    rules = LagRules(max_age_s=300)
    assert alerts([LagRow("warehouse", "EMEA", None, None, 2, 120.0)], {}, rules) == []
    [alert] = alerts([LagRow("warehouse", "EMEA", None, None, 3, 420.0)], {}, rules)
    assert "EMEA" in alert and "420 s" in alert and "3 waiting" in alert


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 200), min_size=2, max_size=4))
def test_folding_the_batches_partner_changes_equals_folding_their_events(seed, sizes):
    """The cycle folds each batch's partner changes (computed at land) instead of reading every
    event: the result must be what the events of all batches together give, field by field."""
    tables, previous = [], []
    for i, n in enumerate(sizes):
        table, messages = landed(seed + i, n, f"b{i}", redeliver=previous[: n // 2])
        tables.append(table)
        previous = messages
    by_events = partner_changes(pa.concat_tables(tables)).sort_by("partner_id")
    folded = fold_partners([partner_changes(t) for t in tables]).sort_by("partner_id")
    assert folded.column("partner_id").to_pylist() == by_events.column("partner_id").to_pylist()
    for column in ["partner_version", *PARTNER_COLUMNS, *(f"{c}_version" for c in PARTNER_COLUMNS)]:
        assert folded.column(column).to_pylist() == by_events.column(column).to_pylist(), column


def test_every_landed_batch_has_the_same_schema():
    table, _ = landed(5, 400, "b")
    valid_schema, _ = landed_schemas()
    assert table.schema.equals(valid_schema), "the staging table's schema is fixed by the contracts"

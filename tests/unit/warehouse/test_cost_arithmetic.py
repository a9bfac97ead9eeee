"""The cost estimate's arithmetic beyond tests/unit/warehouse/test_cost.py: BigQuery's minimum
bill per table, which reads follow the event rate and which the partner count, and the prices
applied."""

from __future__ import annotations

import pytest

from enrollment.warehouse.cost import (
    GIB,
    MIN_BYTES_PER_TABLE,
    PRICE_PER_TIB,
    STORAGE_WRITE_PER_GIB,
    TIB,
    Statement,
    cycle_statements,
    estimate,
)


def test_a_statement_is_billed_at_least_the_minimum_per_table():
    assert Statement("t", "w", 0, 100, "").bytes == MIN_BYTES_PER_TABLE
    assert Statement("t", "w", 1_000_000, 100, "").bytes == 100_000_000


def test_history_reads_follow_the_rate_and_state_reads_follow_the_partners():
    slow = {(s.table, s.what): s for s in cycle_statements(1_000, 1440, 1, 5_000_000)}
    fast = {(s.table, s.what): s for s in cycle_statements(4_000, 1440, 1, 5_000_000)}
    bigger = {(s.table, s.what): s for s in cycle_statements(1_000, 1440, 1, 20_000_000)}
    for key, s in slow.items():
        if key[0] == "partners":
            assert fast[key].rows_read == s.rows_read and bigger[key].rows_read == 4 * s.rows_read
        elif key[0] in ("events", "quarantine", "staging"):
            assert fast[key].rows_read == pytest.approx(4 * s.rows_read), key
            assert bigger[key].rows_read == s.rows_read, key
    ledger = slow[("ledger", "MERGE + done-check")]
    assert ledger.rows_read == 4 * 1440 * 5 * 1.5, "regions x batches a day x rows x window"


def test_the_bill_is_the_bytes_per_cycle_times_the_cycles_at_the_list_price():
    e = estimate(events_per_min=100_000, cycles_per_day=720, partners=1_000_000)
    assert e["bytes_per_cycle"] == sum(s.bytes for s in e["statements"])
    assert e["tib_per_day"] == pytest.approx(e["bytes_per_cycle"] * 720 / TIB)
    assert e["query_usd_per_day"] == pytest.approx(e["tib_per_day"] * PRICE_PER_TIB)
    assert e["load_jobs_usd_per_day"] == 0.0
    assert e["storage_write_usd_per_day_if_used"] == pytest.approx(
        100_000 * 1440 * 1_300 / GIB * STORAGE_WRITE_PER_GIB
    )
    assert estimate(history_days=60)["old_design_usd_per_day"] == pytest.approx(
        2 * estimate(history_days=30)["old_design_usd_per_day"]
    ), "the replaced design grew with history"

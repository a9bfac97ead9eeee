"""The cost on paper: the cycle's reads do not grow with history; the old design's do."""

from enrollment.warehouse.cost import GIB, estimate, markdown


def test_a_cycle_reads_the_same_whatever_the_history():
    short, long = estimate(history_days=2), estimate(history_days=365)
    assert short["bytes_per_cycle"] == long["bytes_per_cycle"], (
        "history beyond the window is never read"
    )
    assert long["old_design_usd_per_day"] > 100 * short["old_design_usd_per_day"] / 2


def test_the_arithmetic_of_the_events_window():
    e = estimate(events_per_min=400_000, cycles_per_day=1440, dedup_window_days=1)
    held = e["statements"][0]
    assert held.rows_read == 400_000 * 1440 * 1.5, (
        "1 day before + half of the current day on average"
    )
    assert held.bytes == held.rows_read * (38 + 8)
    window = [s for s in e["statements"] if s.rows_read >= held.rows_read and s.table == "events"]
    assert window == [held], "the window is read once a cycle; the gate reads the cycle's day"
    assert e["query_usd_per_day"] <= 1_050, "at or below the bill before the cycle went faster"
    assert e["query_usd_per_day"] < e["old_design_usd_per_day"] / 10
    assert estimate(dedup_window_days=0)["bytes_per_cycle"] < e["bytes_per_cycle"] * 0.75
    assert estimate(cycles_per_day=720)["query_usd_per_day"] < e["query_usd_per_day"]


def test_the_table_names_every_written_table_and_the_total():
    text = markdown(estimate())
    for word in ("events", "partners", "quarantine", "ledger", "TiB/day", "Storage Write"):
        assert word in text
    assert f"{estimate()['bytes_per_cycle'] / GIB:,.1f} GiB" in text

"""The operator page's pure logic: status words, masking of what it shows, chart buckets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from enrollment.clients.bigquery import sql_timestamp
from enrollment.view.masking import mask_partner_id, mask_partner_ids, masked_example, scrub
from enrollment.view.reader import balance, classify, minute_series, parse_seen, window_bounds
from enrollment_airflow.operator_page import charts, runs

NOW = datetime(2026, 11, 30, 12, 30, 40, tzinfo=UTC)


def test_broken_wins_over_late_and_late_over_ok():
    assert classify() == {"status": "ok", "why": []}
    assert classify(late=["oldest pending 400 s"])["status"] == "late"
    both = classify(["stage warehouse: not ok"], ["oldest pending 400 s"])
    assert both["status"] == "broken" and both["why"] == [
        "stage warehouse: not ok",
        "oldest pending 400 s",
    ]


@pytest.mark.parametrize(
    ("dag_id", "failed", "expected"),
    [
        ("warehouse", ["freshness"], "late"),  # the gate measured lateness: the data is in
        ("warehouse", ["cycle"], "broken"),
        ("warehouse", ["cycle", "freshness"], "broken"),
        ("warehouse", [], "broken"),  # a run failed with no failed task (killed): not a measurement
        ("lag_monitor", ["measure"], "late"),
        ("canary", ["trace"], "late"),
        ("ingest_amer", ["land"], "broken"),
        ("sync_solr", ["sync"], "broken"),
    ],
)
def test_a_failed_gate_that_measures_lateness_is_late_a_failed_stage_is_broken(
    dag_id, failed, expected
):
    assert runs.failure_status(dag_id, failed) == expected


def test_run_links_point_at_the_airflow_3_ui_route_escaped():
    assert (
        runs.run_url("ingest_amer", "manual__2026-11-30T05:39:24+00:00")
        == "/dags/ingest_amer/runs/manual__2026-11-30T05%3A39%3A24%2B00%3A00"
    )


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ({"batches": [{"batch_id": "a"}, {"batch_id": "b"}], "landed": 2}, ["a", "b"]),
        ({"batch_id": "old", "offsets": 3}, ["old"]),  # a run returned one batch before trains
        ({"batches": [], "ended": "drained"}, []),
        ({"batches": [{"offsets": 1}, "x"]}, []),
        (None, []),
        ("garbage", []),
    ],
)
def test_batch_links_read_trains_cycles_and_single_batch_runs(value, ids):
    assert [b["batch_id"] for b in runs._batches(value)] == ids


def test_ledger_balance_counts_recovered_and_reads_missing_columns_as_zero():
    assert balance(
        {
            "offsets_in": 10,
            "valid": 6,
            "quarantined": 2,
            "duplicates": 1,
            "skipped": None,
            "recovered": 1,
        }
    )["balanced"]
    assert balance({"offsets_in": 10, "valid": 6, "quarantined": 3, "duplicates": 1})[
        "balanced"
    ]  # an old row: no skipped, no recovered
    off = balance(
        {
            "offsets_in": 10,
            "valid": 6,
            "quarantined": 2,
            "duplicates": 1,
            "skipped": 0,
            "recovered": 0,
        }
    )
    assert not off["balanced"] and off["recovered"] == 0


RAW = {
    "event_id": "b875d21a-0d38-4d6d-affe-6aaf110897c4",
    "event_type": "partner.enrolled",
    "partner_id": "AM7K2P9QXW4Z",
    "occurred_at": "2026-11-30T04:06:23.039Z",
    "payload": {
        "first_name": "Ashley",
        "last_name": "Davis",
        "email": "ashley.davis77@example.org",
        "phone": "+15551234567",
        "date_of_birth": "1987-04-12",
        "tax_id": "219-09-9999",
        "sponsor_id": "AMQ8R3T6Y1U2",
        "address": {
            "line1": "79861 Teresa Corner",
            "city": "Knighttown",
            "postal_code": "18298",
            "country": "US",
        },
    },
}
SECRETS = [
    "ashley.davis77",
    "example.org",
    "5551234567",
    "1987-04-12",
    "219-09-9999",
    "AM7K2P9QXW4Z",
    "AMQ8R3T6Y1U2",
    "Ashley",
    "Davis",
    "Teresa",
    "Knighttown",
    "18298",
]


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(RAW).encode(),
        json.dumps(RAW, indent=2).encode(),
        json.dumps(RAW).encode()[:-40],  # cut short (the page shows the first bytes)
        b"\x00\xff" + json.dumps(RAW).encode(),
    ],
)  # not UTF-8, control bytes
def test_an_example_shows_no_personal_value_even_from_a_row_stored_before_masking(raw):
    shown = masked_example(raw)
    for secret in SECRETS:
        assert secret not in shown, secret
    assert "\x00" not in shown
    assert "b875d21a-0d38-4d6d-affe-6aaf110897c4" in shown and "partner.enrolled" in shown, (
        "what says why stays readable"
    )


def test_an_example_keeps_the_masked_shape_of_what_was_refused():
    shown = json.loads(masked_example(json.dumps(RAW).encode()))
    assert shown["payload"]["email"] == "xxxxxx.xxxxx##@xxxxxxx.xxx"
    assert shown["partner_id"] == "AM••••••••••"
    # The whole address is masked, its keys too (the
    # quarantine lexer's rule inside a captured value).
    assert all(set(k + v) <= set("x# _") for k, v in shown["payload"]["address"].items())


def test_partner_ids_are_masked_keeping_the_region_prefix():
    assert mask_partner_id("EM1234567890") == "EM••••••••••"
    assert mask_partner_id(None) is None
    assert (
        mask_partner_ids("partners EM1234567890, LA0000000001 refused")
        == "partners EM••••••••••, LA•••••••••• refused"
    )


def test_free_texts_are_scrubbed_and_cut():
    text = scrub(
        "solr refused AM7K2P9QXW4Z (ana.lima@example.com, tax 529.982.247-25): term too long "
        + "x" * 500
    )
    assert "AM7K2P9QXW4Z" not in text and "ana.lima" not in text and "529.982.247-25" not in text
    assert len(text) == 300 and text.endswith("…")
    assert scrub(None) is None


def test_events_per_minute_are_a_dense_series_ending_now():
    rows = [
        {"minute": NOW.replace(second=0, microsecond=0) - timedelta(minutes=2), "events": 7},
        {
            "minute": (NOW - timedelta(minutes=2)).replace(tzinfo=None, second=0, microsecond=0),
            "events": 3,
        },  # naive: UTC
        {"minute": NOW - timedelta(minutes=90), "events": 1000},
    ]  # outside the hour: not shown
    series = minute_series(rows, NOW, 60)
    assert (
        len(series) == 60
        and series[-1]["minute"] == "2026-11-30T12:30:00+00:00"
        and series[0]["minute"] == "2026-11-30T11:31:00+00:00"
    )
    assert series[-3]["events"] == 10 and sum(p["events"] for p in series) == 10


def test_windows_are_bounded_and_literal():
    since, until = window_bounds(24, NOW)
    assert until - since == timedelta(hours=24, seconds=1) and since.microsecond == 0
    since, until = window_bounds(10_000, NOW)
    assert until - since == timedelta(days=31, seconds=1)
    assert sql_timestamp(NOW) == "TIMESTAMP '2026-11-30 12:30:40.000000+00:00'"


def test_canary_seen_parses_and_ignores_garbage():
    assert parse_seen("bigquery:1.2s,firestore:3s,solr:?") == {"bigquery": 1.2, "firestore": 3.0}
    assert parse_seen(None) == {}


def test_bars_scale_to_the_largest_and_the_rest_is_one_bar():
    assert charts.bar_lengths([0, 5, 10], 100) == [0.0, 50.0, 100.0]
    assert charts.bar_lengths([0, 0], 100) == [0.0, 0.0]
    assert charts.top({"a": 1, "b": 5, "c": 3, "d": 2}, 2) == [
        ("b", 5),
        ("c", 3),
        ("2 other reasons", 3),
    ]


def test_charts_escape_labels():
    svg = charts.hbars([("<script>alert(1)</script>", 3)])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    spark = charts.sparkline(minute_series([{"minute": NOW, "events": 4}], NOW, 5))
    assert spark.count("<rect") == 5 and "4 in the last 5 minutes" in spark


def test_a_failed_check_counts_while_recent_and_is_stale_once_the_checks_stopped():
    from datetime import datetime, timedelta

    from enrollment.view.reader import BROKEN, HEALTH_STALE_S, OK, STALE, check_status

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert check_status("solr", False, now - timedelta(minutes=4), now)["status"] == BROKEN
    assert check_status("solr", True, now - timedelta(minutes=4), now)["status"] == OK
    old = check_status("solr", False, now - timedelta(seconds=HEALTH_STALE_S + 60), now)
    assert old["status"] == STALE and "min ago" in old["why"][0]
    assert (
        check_status("solr", False, (now - timedelta(minutes=1)).replace(tzinfo=None), now)[
            "status"
        ]
        == BROKEN
    )  # naive: UTC

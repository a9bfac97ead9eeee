"""The promise over the window (``enrollment.view.freshness``): buckets, the query's shape and the
shaping of its rows into one dense series per region and path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from enrollment.config import load_config
from enrollment.view.freshness import (
    BIGQUERY,
    bucket_seconds,
    buckets_of,
    freshness_over_window,
    freshness_series,
    freshness_sql,
)
from enrollment.view.reader import window_bounds

NOW = datetime(2026, 11, 30, 12, 30, 40, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hours", "minutes", "points"),
    [(1, 1, 61), (6, 10, 37), (24, 30, 49), (168, 180, 57), (744, 1440, 32)],
)
def test_the_page_windows_get_30_to_60_odd_points(hours, minutes, points):
    since, until = window_bounds(hours, NOW)
    bucket_s = bucket_seconds((until - since).total_seconds() // 60 * 60)
    start, n = buckets_of(since, until, bucket_s)
    assert bucket_s == minutes * 60 and n == points
    # Aligned on the UTC clock: the points stay put between refreshes.
    assert start <= since and int(start.timestamp()) % bucket_s == 0
    assert start + timedelta(seconds=n * bucket_s) >= until


def test_the_query_filters_on_constant_timestamps_and_reads_each_sink_from_its_ledger_rows():
    since, until = window_bounds(1, NOW)
    start, _ = buckets_of(since, until, 60)
    sql = freshness_sql("`p.ops.metrics`", "`p.ops.ledger`", since, until, start, 60)
    # The window, and the sync plans' lookback before it for what a sink synced in the window.
    assert "measured_at >= TIMESTAMP '2026-11-23 11:30:40.000000+00:00'" in sql
    assert "S.recorded_at >= TIMESTAMP '2026-11-30 11:30:40.000000+00:00'" in sql
    assert "W.recorded_at >= TIMESTAMP '2026-11-23 11:30:40.000000+00:00'" in sql
    assert "S.stage IN UNNEST(@stages) AND S.ok" in sql and "W.stage = 'warehouse'" in sql
    assert "NOT STARTS_WITH(batch_id, 'recovery-')" in sql
    assert "APPROX_QUANTILES(age_s, 100)[OFFSET(50)]" in sql
    assert "APPROX_QUANTILES(age_s, 100)[OFFSET(95)]" in sql
    assert "@" not in sql.replace("@regions", "").replace("@stages", "")


def test_rows_become_a_dense_series_per_region_and_path_with_gaps_not_zeros():
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    rows = [
        {
            "region": "AMER",
            "path": BIGQUERY,
            "bucket": 1,
            "batches": 3,
            "p50_s": 12.04,
            "p95_s": 40,
        },
        {
            "region": "AMER",
            "path": "sync_solr",
            "bucket": 0,
            "batches": 2,
            "p50_s": 70,
            "p95_s": 99,
        },
        {"region": "AMER", "path": "sync_gone", "bucket": 0, "batches": 1, "p50_s": 1, "p95_s": 1},
        {"region": "EMEA", "path": BIGQUERY, "bucket": 7, "batches": 1, "p50_s": 5, "p95_s": 5},
        {"region": "XX", "path": BIGQUERY, "bucket": 0, "batches": 1, "p50_s": 5, "p95_s": 5},
    ]
    series = freshness_series(rows, start, 60, 3, ["AMER", "EMEA"], [BIGQUERY, "solr"])
    assert set(series) == {"AMER", "EMEA"} and set(series["AMER"]) == {BIGQUERY, "solr"}
    bq = series["AMER"][BIGQUERY]
    assert [p["at"] for p in bq] == [
        "2026-11-30T12:00:00+00:00",
        "2026-11-30T12:01:00+00:00",
        "2026-11-30T12:02:00+00:00",
    ]
    assert bq[0] == {"at": bq[0]["at"], "p50_s": None, "p95_s": None, "batches": 0}
    assert bq[1] | {"at": None} == {"at": None, "p50_s": 12.0, "p95_s": 40.0, "batches": 3}
    assert series["AMER"]["solr"][0]["p95_s"] == 99.0  # the ledger stage names the sink
    # A bucket outside the window, an unknown region or sink: left out.
    assert all(p["p95_s"] is None for p in series["EMEA"][BIGQUERY])


def test_no_row_is_an_empty_series_of_every_bucket():
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    series = freshness_series([], start, 600, 4, ["AMER"], [BIGQUERY])
    assert len(series["AMER"][BIGQUERY]) == 4
    assert all(p["p50_s"] is None and p["batches"] == 0 for p in series["AMER"][BIGQUERY])


class FakeWarehouse:
    project = "p"

    def table(self, name: str, ops: bool = False) -> str:
        return f"`p.{'ops' if ops else 'wh'}.{name}`"


class FakeReader:
    """What ``freshness_over_window`` asks of a ``Reader``: tables and one query."""

    def __init__(self, rows, have=("metrics", "ledger")):
        self.w, self.rows, self.have, self.queries = FakeWarehouse(), rows, set(have), []

    def exists(self, name: str, ops: bool = True) -> bool:
        return name in self.have

    def source(self, name: str, ops: bool = True) -> str:
        return f"ops.{name}"

    def run(self, sql, params=None):
        self.queries.append((sql, {p.name: p.values for p in params or []}))
        return self.rows


def test_every_region_gets_bigquery_then_each_sink_with_its_goal_from_the_configuration():
    config = load_config()
    codes = [r.code for r in config.regions]
    since, until = window_bounds(1, NOW)
    start, _ = buckets_of(since, until, 60)
    last = int((NOW - start).total_seconds()) // 60
    reader = FakeReader(
        [
            {"region": codes[0], "path": "sync_firestore", "bucket": last, "batches": 2}
            | {"p50_s": 80.0, "p95_s": 130.0}
        ]
    )
    out = freshness_over_window(reader, config, codes, 1, NOW)
    assert out["error"] is None and out["bucket_s"] == 60 and out["source"] == "ops.metrics"
    assert out["goals"] == {BIGQUERY: config.freshness_sla_s, "sinks": config.canary.within_s}
    charts = out["regions"][codes[0]]
    assert [c["path"] for c in charts] == [BIGQUERY, *config.sinks]
    assert charts[0]["label"] == "queryable in BigQuery" and charts[0]["goal_s"] == 60.0
    firestore = next(c for c in charts if c["path"] == "firestore")
    assert firestore["label"] == "visible in firestore" and firestore["goal_s"] == 120.0
    assert firestore["points"][last]["p95_s"] == 130.0
    assert len(firestore["points"]) == 61
    sql, params = reader.queries[0]
    assert params == {
        "regions": codes,
        "stages": [f"sync_{s}" for s in config.sinks],
    }
    assert sql.rstrip().endswith(f"LIMIT {len(codes) * (1 + len(config.sinks)) * 61}")


def test_a_fresh_stack_reads_as_empty_and_a_failed_query_as_an_error():
    config = load_config()
    codes = [r.code for r in config.regions]
    empty = FakeReader([], have=())
    out = freshness_over_window(empty, config, codes, 6, NOW)
    assert not empty.queries and out["error"] is None
    assert all(p["p95_s"] is None for c in out["regions"][codes[0]] for p in c["points"])

    class Down(FakeReader):
        def run(self, sql, params=None):
            raise ConnectionError("bigquery down")

    out = freshness_over_window(Down([]), config, codes, 6, NOW)
    assert out["regions"] == {} and "ConnectionError" in out["error"]
    assert out["bucket_s"] == 600  # the caption still says what a point is

"""The page's freshness charts (``enrollment.view.freshness``) against the rows they are read
from: a small pipeline runs in-process on a configuration of its own, one batch is marked synced
to a sink, and every point is compared with the metrics and ledger rows read with SQL of its
own."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import pytest

from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.view.overview import overview
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import ingest_and_warehouse, pipeline_warehouse

pytestmark = [pytest.mark.integration]


def test_the_charts_read_each_batch_age_from_metrics_and_the_ledger(stack, isolated_pipeline):
    config = isolated_pipeline
    messages = Simulator(
        seed=2424, faults=FaultRates.mix(0.0), initial_partners=20, config=config
    ).take(300)
    ingest_and_warehouse(stack, config, messages)
    warehouse = pipeline_warehouse(stack, config)
    client = warehouse.client
    o = f"`{stack.project}.{config.ops_dataset}`"

    def rows(sql: str) -> list[dict]:
        return [dict(r) for r in client.query(sql.format(o=o)).result()]

    ages = {
        r["batch_id"]: r
        for r in rows(
            """SELECT region, batch_id, value AS age_s, measured_at FROM {o}.metrics
            WHERE source = 'ingest' AND name = 'freshness_p95_s'"""
        )
    }
    assert ages, "the warehouse cycle recorded no freshness"
    synced = sorted(ages)[0]
    Ledger(warehouse).record_stage(synced, "sync_solr", 1, 0.5)
    stamps = {
        r["stage"]: r["recorded_at"]
        for r in rows(
            "SELECT stage, recorded_at FROM {o}.ledger "
            f"WHERE batch_id = '{synced}' AND stage IN ('warehouse', 'sync_solr')"
        )
    }
    in_solr = ages[synced]["age_s"] + (stamps["sync_solr"] - stamps["warehouse"]).total_seconds()

    view = overview(warehouse, stack.kafka, config, window_hours=1)
    assert view["regions"]["sources"]["freshness_over_window"]["error"] is None
    window = view["regions"]["freshness_over_window"]
    assert window["bucket_s"] == 60
    assert window["goals"] == {"bigquery": config.freshness_sla_s, "sinks": config.canary.within_s}

    def bucket_of(at: datetime) -> str:
        epoch = int(at.timestamp())
        return datetime.fromtimestamp(epoch - epoch % 60, at.tzinfo).isoformat()

    expected: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in ages.values():
        expected[(r["region"], bucket_of(r["measured_at"]))].append(r["age_s"])
    for region in view["regions"]["regions"]:
        charts = {c["path"]: c for c in region["freshness_over_window"]}
        assert list(charts) == ["bigquery", *config.sinks]
        assert charts["bigquery"]["goal_s"] == config.freshness_sla_s
        assert all(charts[s]["goal_s"] == config.canary.within_s for s in config.sinks)
        shown = {p["at"]: p for p in charts["bigquery"]["points"] if p["batches"]}
        mine = {at: v for (code, at), v in expected.items() if code == region["code"]}
        assert set(shown) == set(mine), region["code"]
        for at, values in mine.items():
            p = shown[at]
            assert p["batches"] == len(values)
            assert min(values) - 0.1 <= p["p50_s"] <= p["p95_s"] <= max(values) + 0.1
        # Only the batch marked synced reached a sink, and only Solr.
        sink_points = [p for s in config.sinks for p in charts[s]["points"] if p["batches"]]
        if region["code"] == ages[synced]["region"]:
            assert len(sink_points) == 1 and sink_points[0] in charts["solr"]["points"]
            assert sink_points[0]["p95_s"] == pytest.approx(in_solr, abs=0.2)
            assert sink_points[0]["p95_s"] >= ages[synced]["age_s"]
        else:
            assert sink_points == []

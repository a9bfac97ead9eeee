"""The load test's pure parts: durations and fault specs as the command line takes them, and
late told apart from lost."""

from __future__ import annotations

import argparse

import pytest

from bench.loadtest import Fault, seconds


@pytest.mark.parametrize(
    ("text", "expected"), [("90", 90), ("90s", 90), ("3m", 180), ("1.5m", 90), ("1h", 3600)]
)
def test_durations(text, expected):
    assert seconds(text) == expected


@pytest.mark.parametrize(
    ("text", "kind", "at", "length"),
    [
        ("solr-down@3m:2m", "solr-down", 180, 120),
        ("broker-restart@5m", "broker-restart", 300, 0),
        ("broker-restart@5m:20s", "broker-restart", 300, 20),
        ("worker-kill@40s", "worker-kill", 40, 0),
    ],
)
def test_fault_specs(text, kind, at, length):
    fault = Fault.parse(text)
    assert (fault.kind, fault.at_s, fault.for_s) == (kind, at, length)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("solr-down@3m", "for how long"),
        ("kafka-down@1m:1m", "may go down"),
        ("meteor@1m", "known faults"),
        ("solr-down", "NAME@START"),
        ("solr-down@soon:1m", "not a duration"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(text, says):
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        Fault.parse(text)


def test_late_is_not_lost():
    from bench.loadtest import classify

    key = ("AMER", 0)
    offsets = {key: list(range(0, 12)), ("EMEA", 1): [0, 1]}
    ranges = {key: [(0, 4, "done"), (4, 6, "landed-only")]}
    # 0-3 balanced; 4-5 claimed, not warehoused (late); 6-7 committed past with no batch (lost);
    # 8-11 at or past the committed offset 8 (late, not claimed). EMEA: committed offset unknown.
    counts = classify(offsets, ranges, {"done"}, {key: 8})
    assert counts == {"accounted": 4, "late_claimed": 2, "late_unclaimed": 4 + 2, "lost": 2}
    assert classify(offsets, ranges, {"done", "landed-only"}, {key: 12})["lost"] == 6 + 0, (
        "past the commit, uncovered: lost"
    )


def test_sink_latency_outside_faults_and_the_catch_up_after_the_last_one():
    from datetime import UTC, datetime

    from bench.loadtest.verdicts import caught_up_after, fault_windows, outside_faults

    started = datetime.fromtimestamp(1_000, UTC)
    solr = Fault.parse("solr-down@60s:30s")
    solr.began_s, solr.ended_s = 60.0, 90.0
    never = Fault.parse("solr-down@500s:30s")  # the load ended before its time: no window
    windows = fault_windows(started, [solr, never])
    assert windows == [(1_060.0, 1_090.0)]
    # (produced at, latency): before, during and after the fault.
    points = [(1_010.0, 20.0), (1_050.0, 70.0), (1_070.0, 45.0), (1_100.0, 15.0)]
    assert outside_faults(points, windows) == [20.0, 70.0, 15.0]
    assert caught_up_after(points, windows) == 30.0, "the last event before the end seen at 1,120"
    assert caught_up_after(points, []) is None
    assert caught_up_after([(1_010.0, 20.0)], windows) == 0.0, "nothing was waiting"
    assert fault_windows(None, [solr]) == []


def _run(rate: int, tasks: float, scheduler: float, busy: float = 80.0) -> dict:
    return {
        "rate": f"{rate}/min",
        "produced_events_per_min": rate,
        "cpu": {
            "cpu_s_per_min": {
                "tasks: sinks": tasks * 0.6,
                "tasks: ingest land": tasks * 0.4,
                "airflow scheduler": scheduler,
                "bigquery emulator": 30.0,  # a service: never sized with the pipeline
            },
            "machine_busy_cpu_s_per_min": busy,
            "machine_capacity_cpu_s_per_min": 120.0,
        },
    }


def test_sizing_fits_a_fixed_cost_and_a_cost_per_event_from_two_unsaturated_runs():
    from bench.loadtest.sizing import markdown, sizing

    # tasks: 10 CPU-s a minute fixed + 0.5 per 1,000 events; the scheduler: 6 fixed + 0.1 per 1,000
    table = sizing(_run(10_000, 15.0, 7.0), _run(20_000, 20.0, 8.0), rate=400_000)
    assert table["fit"]["tasks"]["fixed_cpu_s_per_min"] == pytest.approx(10.0)
    assert table["fit"]["tasks"]["cpu_s_per_1m"] == pytest.approx(500.0)
    assert table["cores"]["tasks"] == pytest.approx((10 + 200) / 60)
    assert table["cores"]["airflow scheduler"] == pytest.approx((6 + 40) / 60)
    assert "bigquery emulator" not in table["cores"]
    assert table["celery_workers"] == 3, "3.5 cores of tasks on 2-vCPU workers at 70 %"
    assert "| tasks | 10.0 | 500 | 3.50 |" in markdown(table)


def test_sizing_refuses_a_saturated_run_and_equal_rates():
    from bench.loadtest.sizing import sizing

    with pytest.raises(ValueError, match="saturated, not a source for sizing"):
        sizing(_run(10_000, 15.0, 7.0), _run(30_000, 25.0, 9.0, busy=110.0))
    with pytest.raises(ValueError, match="same rate"):
        sizing(_run(10_000, 15.0, 7.0), _run(10_000, 16.0, 7.0))

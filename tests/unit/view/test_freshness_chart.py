"""The freshness chart (``charts.freshness_chart``): p50 and p95 per bucket against the goal."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from enrollment_airflow.operator_page import charts


def point(at: str, p50: float | None, p95: float | None, batches: int = 1) -> dict:
    return {"at": at, "p50_s": p50, "p95_s": p95, "batches": batches}


def goal_y(svg: str) -> float:
    found = re.search(r'<line x1="0" y1="([\d.]+)" x2="[\d.]+" y2="\1" class="goal"', svg)
    assert found, svg
    return float(found.group(1))


def test_no_bucket_draws_nothing():
    assert charts.freshness_chart([], 60, "queryable in BigQuery") == ""


def test_buckets_without_a_batch_show_the_goal_and_say_so():
    svg = charts.freshness_chart([point("2026-11-30T12:00:00+00:00", None, None, 0)] * 3, 60, "x")
    assert "no batch in this window" in svg and "goal 60 s" in svg
    assert "<path" not in svg and "<circle" not in svg


def test_one_point_is_two_dots_with_one_title():
    svg = charts.freshness_chart([point("2026-11-30T12:07:00+00:00", 12, 41, 3)], 60, "x")
    assert svg.count("<circle") == 2 and svg.count('class="p95"') == 2
    assert "<title>11-30 12:07 UTC: p50 12 s, p95 41 s (3 batches)</title>" in svg
    assert "no batch" not in svg


def test_the_goal_line_is_dashed_labelled_and_where_its_value_is():
    height, pad = 72, 12.0
    plot = height - pad - 1
    # All well within the goal: the axis tops at 1.25 × the goal, the line at 80 % of it.
    low = charts.freshness_chart([point("t", 10, 20)], 60, "x", height=height)
    assert goal_y(low) == round(pad + plot * (1 - 60 / 75), 1)
    assert 'stroke-dasharray="4 3"' in low and ">goal 60 s</text>" in low
    # A p95 of 240 s: the axis tops there, the goal a quarter of the way up.
    high = charts.freshness_chart([point("t", 90, 240)], 60, "x", height=height)
    assert goal_y(high) == round(pad + plot * (1 - 60 / 240), 1)
    assert goal_y(high) > goal_y(low)  # lower on the page: the values reach far above it
    assert ">goal 2 min</text>" in charts.freshness_chart([point("t", 1, 2)], 120, "x")


def test_a_bucket_without_a_batch_breaks_the_lines():
    pts = [point("a", 10, 20), point("b", None, None, 0), point("c", 11, 22), point("d", 12, 25)]
    svg = charts.freshness_chart(pts, 60, "x")
    p95 = re.search(r'<path class="p95" d="([^"]+)"', svg).group(1)
    assert p95.count("M") == 2 and p95.count("L") == 1
    assert svg.count("<title>") == 1 + 3  # the chart's, and one per bucket with a batch


def test_labels_are_escaped():
    svg = charts.freshness_chart([point("<b>", 1, 2)], 60, "visible in <script>alert(1)</script>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<b>" not in svg


def test_the_region_section_shows_a_chart_per_path_with_its_caption():
    templates = (
        Path(charts.__file__).parent / "templates"
    )  # the macro the overview and the region page share
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
    page = env.from_string(
        '{% from "macros.html" import freshness_over_window with context %}'
        "{{ freshness_over_window(regions, data, 'p', charts) }}"
    )
    chart = {"points": [point("2026-11-30T12:00:00+00:00", 30, 50)], "goal_s": 60.0}
    html = page.render(
        charts=charts,
        regions=[
            {
                "code": "AMER",
                "freshness_over_window": [
                    chart | {"path": "bigquery", "label": "queryable in BigQuery"},
                    chart | {"path": "solr", "label": "visible in solr", "goal_s": 120.0},
                ],
            }
        ],
        data={
            "freshness_over_window": {"bucket_s": 600, "goals": {"bigquery": 60, "sinks": 120}},
            "sources": {
                "freshness_over_window": {"source": "ops.metrics", "error": None},
                "batches": {"source": "ops.ledger", "error": None},
            },
        },
    )
    assert html.count('<svg class="fresh"') == 2 and 'data-path="solr"' in html
    assert "per bucket of 10 min" in html and "goal 2 min" in html
    assert "60 s to BigQuery" in html and "2 min to every sink" in html
    # The regions table owns tr[data-region]: one row per region there (the browser test finds it).
    assert 'data-freshness-region="AMER"' in html and "data-region=" not in html

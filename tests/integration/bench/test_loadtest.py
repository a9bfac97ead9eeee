"""The gridlock test, short, on the running stack and scheduler: a steady load with Solr stopped
for a while and 1 % hostile messages ends with every record accounted for by the ledger, and a
report with its plots."""

from __future__ import annotations

import json

import pytest

from enrollment.ingest.backlog import total_pending

pytestmark = [pytest.mark.integration]


def test_a_short_load_with_solr_down_ends_with_zero_unexplained_records(
    stack, pipeline_config, tmp_path, capsys
):
    from bench import loadtest

    out = tmp_path / "report"
    code = loadtest.main(
        [
            "--rate",
            "30000/min",
            "--duration",
            "40s",
            "--fault",
            "solr-down@10s:20s",
            "--sample-every",
            "10",
            "--hostile",
            "1%",
            "--drain",
            "10m",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, {
        k: summary[k]
        for k in (
            "records_in",
            "records_accounted",
            "unexplained_records",
            "samples_never_visible_everywhere",
        )
    }
    assert summary["records_in"] >= 19_000 and summary["records_accounted"] == summary["records_in"]
    assert (
        summary["unexplained_records"] == 0
        and summary["samples"] > 0
        and summary["samples_never_visible_everywhere"] == 0
    )
    assert summary["drained"] and summary["records_late"] == 0 and summary["records_lost"] == 0
    cpu = summary["cpu"]["cpu_s_per_min"]
    assert (
        cpu.get("bigquery emulator", 0) > 0
        and cpu.get("tasks: ingest land", 0) > 0
        and cpu.get("tasks: warehouse cycle", 0) > 0
    ), cpu
    assert summary["cost"]["cycles_in_run"] >= 1
    assert summary["lag_points"] > 0 and summary["sink_backlog_points"] > 0, "the lag plots"
    assert summary["pipeline_cpu_s_per_1m"] > 0 and summary["cpu"]["cpu_s"]["pipeline"] > 0
    assert (
        summary["quarantined"] > 0
        and summary["valid"] + summary["quarantined"] == summary["records_in"]
    )
    hostile = summary["hostile"]
    assert hostile["sent"] > 50 and hostile["quarantined_as_expected"] == hostile["sent"], hostile
    assert "hostile messages sent" in (out / "report.md").read_text()
    [fault] = summary["faults"]
    assert (
        fault["kind"] == "solr-down"
        and fault["began_s"] >= 10
        and fault["ended_s"] >= fault["began_s"] + 20
    )
    assert total_pending(stack.kafka, pipeline_config.consumer_group, pipeline_config.regions) == 0
    report = (out / "report.md").read_text()
    assert "**0**" in report.split("## Verdict of the ledger")[1]
    assert (
        "## Where the CPU went" in report
        and "TiB/day" in report.split("## The warehouse on real BigQuery, on paper")[1]
    )
    for plot in ("lag.png", "throughput.png", "stages.png", "latency.png", "metrics.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.md")

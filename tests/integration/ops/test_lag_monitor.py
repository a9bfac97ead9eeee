"""The lag monitor on the real stack: it records what is pending per region and partition, and
alerts — failing its task and calling the configured callback — when a consumer is stalled and
its backlog keeps growing."""

from __future__ import annotations

import pytest

from enrollment.clients.services import bigquery_client
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import current_raw_config, produce, use_config

pytestmark = [pytest.mark.integration]

ALERTS: list[dict] = []


def record_alert(payload: dict) -> None:
    ALERTS.append(payload)


def test_a_stalled_consumer_raises_an_alert(
    stack, airflow_db, dagbag, isolated_pipeline, tmp_path, monkeypatch
):
    from airflow.utils.state import DagRunState

    raw = current_raw_config()
    raw["lag"] = {"grow_minutes": 2, "max_age_s": 3600, "max_sink_batches": 30}
    raw["alerts"] = {"on_failure": f"{__name__}:record_alert"}
    config = use_config(raw, tmp_path / "lag.yaml", monkeypatch)
    region = config.region("AMER")
    sim = Simulator(seed=77, config=config)
    dag = dagbag.dags["lag_monitor"]

    produced = 0
    for step in range(3):  # nobody consumes: the backlog grows at every measurement
        batch = [m for m in sim.take(600) if m.topic == region.topic]
        produce(stack.kafka, batch)
        produced += len(batch)
        run = dag.test()
        if step < 2:
            assert run.state == DagRunState.SUCCESS, (
                f"no alert before {config.lag.grow_minutes} growing measurements"
            )
    assert run.state == DagRunState.FAILED
    # One alert for the failed run, of kind late (data waiting), naming the task and the growth.
    assert len(ALERTS) == 1, ALERTS
    alert = ALERTS[-1]
    assert (alert["kind"], alert["dag_id"], alert["task_ids"]) == (
        "late",
        "lag_monitor",
        ["measure"],
    )
    assert "AMER: pending records grew at each of the last 2 measurements" in alert["reason"]

    rows = list(
        bigquery_client(stack.project)
        .query(
            "SELECT measured_at, SUM(pending) AS pending, MAX(oldest_age_s) AS age FROM "
            f"`{stack.project}.{config.ops_dataset}.lag` "
            "WHERE kind = 'kafka' AND region = 'AMER' GROUP BY measured_at ORDER BY measured_at"
        )
        .result()
    )
    assert [r["pending"] for r in rows][-1] == produced and len(rows) == 3
    assert all(r["age"] is not None and r["age"] >= 0 for r in rows)
    sinks = list(
        bigquery_client(stack.project)
        .query(
            f"SELECT DISTINCT sink FROM `{stack.project}.{config.ops_dataset}.lag` WHERE kind = "
            "'sink'"
        )
        .result()
    )
    assert {r["sink"] for r in sinks} == set(config.sinks)

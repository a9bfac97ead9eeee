"""The alert of a failed run on the running Airflow: the DAG's failure callback runs in the DAG
processor (not in the test's process, as under ``dag.test()``), finds the failed task and its
note through the Task SDK, and logs the one alert line, kind and reason included."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from stack.airflow_client import AirflowClient

pytestmark = [pytest.mark.integration]


def test_a_failed_run_on_the_scheduler_alerts_once_from_the_dag_processor(stack):
    client = AirflowClient(stack)
    client.wait_for_dag("requeue_quarantine")
    # A request the DAG refuses (since after until): its plan task fails, the run fails.
    minute, second = random.randrange(60), random.randrange(60)
    since = f"2026-12-01T00:{minute:02d}:{second:02d}Z"
    run = client.trigger(
        "requeue_quarantine", {"region": "AMER", "since": since, "until": "2026-11-01T00:00:00Z"}
    )
    try:
        assert client.wait_for_run("requeue_quarantine", run, timeout_s=300) == "failed"
    finally:
        client.http.patch("/dags/requeue_quarantine", json={"is_paused": True})
    logs = Path(stack.state) / "airflow" / "logs" / "dag_processor"
    wanted = f"since 2026-12-01T00:{minute:02d}:{second:02d}+00:00 is not before until"
    deadline, lines = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        lines = [
            line
            for path in logs.rglob("requeue_quarantine.py.log")
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if "ALERT requeue_quarantine." in line and wanted in line
        ]
        if lines:
            break
        time.sleep(2)
    assert len(lines) == 1, lines
    assert "ALERT requeue_quarantine.plan broken: plan: AirflowFailException" in lines[0]

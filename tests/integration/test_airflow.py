"""Airflow itself: the running API server is healthy and sees the project's DAGs and
connections; the smoke DAG runs every service round trip in-process through ``dag.test()``."""

import httpx
import pytest

pytestmark = [pytest.mark.integration]


def test_running_airflow_is_healthy_and_lists_the_project_dags(stack, dagbag):
    base = stack.url("AIRFLOW_PORT")
    health = httpx.get(f"{base}/api/v2/monitor/health", timeout=10).json()
    assert {k: v["status"] for k, v in health.items()} == {"metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}

    token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": stack.credentials["airflow_admin_password"]}, timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    # The DAG processor parses on its own clock: poll until it has seen every DAG file.
    import time

    deadline = time.monotonic() + 90
    while True:
        listed = {d["dag_id"] for d in httpx.get(f"{base}/api/v2/dags", headers=headers, params={"limit": 100}, timeout=10).json()["dags"]}
        if set(dagbag.dag_ids) <= listed or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(dagbag.dag_ids) <= listed
    errors = httpx.get(f"{base}/api/v2/importErrors", headers=headers, timeout=10).json()
    assert errors["total_entries"] == 0, errors


def test_smoke_dag_runs_through_dag_test(stack, dagbag, airflow_db):
    from airflow.utils.state import DagRunState, TaskInstanceState

    dag = dagbag.dags["stack_smoke"]
    run = dag.test()
    states = {ti.map_index: ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.SUCCESS, states
    assert len(states) == 6 and set(states.values()) == {TaskInstanceState.SUCCESS}

"""Airflow itself: the running API server is healthy and sees the project's DAGs and
connections; the smoke DAG runs every service round trip in-process through ``dag.test()``."""

import httpx
import pytest

pytestmark = [pytest.mark.integration]


def test_running_airflow_is_healthy_and_lists_the_project_dags(stack, dagbag):
    from stack.airflow_client import AirflowClient

    health = httpx.get(f"{stack.url('AIRFLOW_PORT')}/api/v2/monitor/health", timeout=10).json()
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    client = AirflowClient(stack)
    for dag_id in dagbag.dag_ids:
        client.wait_for_dag(dag_id, timeout_s=90)
    assert set(dagbag.dag_ids) <= client.dag_ids()
    assert client.import_errors() == []


def test_the_running_airflow_has_the_warehouse_writers_pool_with_one_slot(stack):
    from enrollment.config import WAREHOUSE_POOL
    from stack.airflow_client import AirflowClient

    pool = AirflowClient(stack).http.get(f"/pools/{WAREHOUSE_POOL}")
    assert pool.status_code == 200, pool.text
    assert pool.json()["slots"] == 1, "one writer of the warehouse tables at a time"


def test_the_running_scheduler_runs_the_smoke_dag_with_connections_from_the_environment(stack):
    from stack.airflow_client import AirflowClient

    client = AirflowClient(stack)
    client.wait_for_dag("stack_smoke", timeout_s=90)
    run_id = client.trigger("stack_smoke")
    assert client.wait_for_run("stack_smoke", run_id, timeout_s=300) == "success", (
        client.task_states("stack_smoke", run_id)
    )
    states = client.task_states("stack_smoke", run_id)
    assert sorted(t["rendered_map_index"] for t in states) == sorted(
        ["kafka", "gcs", "bigquery", "firestore", "solr", "marketing-cloud"]
    )
    assert {t["state"] for t in states} == {"success"}


def test_smoke_dag_runs_through_dag_test(stack, dagbag, airflow_db):
    from airflow.utils.state import DagRunState, TaskInstanceState

    dag = dagbag.dags["stack_smoke"]
    run = dag.test()
    states = {ti.map_index: ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.SUCCESS, states
    assert len(states) == 6 and set(states.values()) == {TaskInstanceState.SUCCESS}

"""Environment health on the real stack: the scheduled DAG records every service and goes red
naming the one that is down; the quick check the ingest and sync tasks run fails within seconds."""

from __future__ import annotations

import dataclasses
import time

import pytest

from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import Endpoints, bigquery_client
from enrollment.ops.health import ServiceDown, require
from stack import cli as stack_cli

pytestmark = [pytest.mark.integration]


def test_a_task_fails_fast_naming_the_service_that_is_down(stack, pipeline_config):
    endpoints = Endpoints.from_env()
    require(
        ["kafka", "gcs", "bigquery", "firestore", "solr", "marketing-cloud"],
        endpoints,
        pipeline_config,
    )
    elsewhere = dataclasses.replace(
        endpoints, kafka=KafkaSettings.plaintext("127.0.0.1:1"), solr_url="http://127.0.0.1:1/solr"
    )
    t0 = time.monotonic()
    with pytest.raises(
        ServiceDown, match=r"kafka at 127\.0\.0\.1:1 .*solr at http://127\.0\.0\.1:1/solr"
    ) as raised:
        require(["kafka", "gcs", "solr"], elsewhere, pipeline_config, timeout_s=2)
    assert "gcs" not in str(raised.value), "only what is down is named"
    assert time.monotonic() - t0 < 15, "fails within seconds, not after the clients' long retries"


def test_health_dag_records_every_service_and_names_the_one_down(
    stack, airflow_db, dagbag, pipeline_config
):
    from airflow.utils.state import DagRunState

    dag = dagbag.dags["environment_health"]
    assert dag.test().state == DagRunState.SUCCESS
    assert stack_cli.down(["solr"], quiet=True)
    try:
        run = dag.test()
    finally:
        stack_cli.up(["solr"], quiet=True)
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.FAILED
    failed = [
        i
        for (task_id, i), state in states.items()
        if task_id == "check_service" and state == "failed"
    ]
    assert failed == [4], states  # the fifth service: solr
    rows = list(
        bigquery_client(stack.project)
        .query(
            "SELECT service, ok, detail FROM "
            f"`{stack.project}.{pipeline_config.ops_dataset}.health` WHERE run_id = '{run.run_id}'"
        )
        .result()
    )
    assert {r["service"]: r["ok"] for r in rows} == {
        "kafka": True,
        "gcs": True,
        "bigquery": True,
        "firestore": True,
        "solr": False,
        "marketing-cloud": True,
    }
    assert "Connect" in next(r["detail"] for r in rows if r["service"] == "solr")

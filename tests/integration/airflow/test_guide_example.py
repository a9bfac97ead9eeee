"""docs/guide.md's worked example, run as written: a new sink is one module
(``enrollment.sinks.directory``), one config entry and this test. The entry gives it a DAG from
the factory; the DAG syncs what the ingest DAG warehoused, and its gate reads the objects back."""

from __future__ import annotations

import json
import uuid

import pytest

from enrollment.clients.services import bigquery_client, storage_client
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from tests.integration.conftest import current_raw_config, produce, use_config

pytestmark = [pytest.mark.integration]


def test_a_new_sink_is_one_module_one_config_entry_and_its_test(
    stack, airflow_db, isolated_pipeline, tmp_path, monkeypatch
):
    from airflow.utils.state import DagRunState

    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag

    # The config entry, exactly as the guide shows it.
    prefix = f"directory-{uuid.uuid4().hex[:6]}"
    raw = current_raw_config()
    raw["sinks"]["directory"] = {
        "module": "enrollment.sinks.directory",
        "needs": ["gcs"],
        "bucket": isolated_pipeline.landing_bucket,
        "prefix": prefix,
    }
    config = use_config(raw, tmp_path / "with-directory.yaml", monkeypatch)
    region = config.region("APAC")

    messages = Simulator(
        seed=31, faults=FaultRates.mix(0.02), initial_partners=40, config=config
    ).take(1500)
    produce(stack.kafka, [m for m in messages if m.topic == region.topic])
    assert ingest_dag(region).test().state == DagRunState.SUCCESS
    assert warehouse_dag().test().state == DagRunState.SUCCESS

    dag = sync_dag("directory")
    assert {t.task_id for t in dag.tasks} == {"sync"}, "write → gate → commit in one task process"
    run = dag.test()
    assert run.state == DagRunState.SUCCESS, {
        ti.task_id: ti.state for ti in run.get_task_instances()
    }

    partners = {
        r["partner_id"]: r["status"]
        for r in bigquery_client(stack.project)
        .query(
            f"SELECT partner_id, status FROM `{stack.project}.{config.warehouse_dataset}.partners` "
            "WHERE region = 'APAC'"
        )
        .result()
    }
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    listed = {
        b.name.removeprefix(prefix + "/").removesuffix(".json"): b
        for b in bucket.list_blobs(prefix=prefix + "/")
    }
    assert set(listed) == {pid for pid, status in partners.items() if status != "terminated"}, (
        "every partner but the terminated ones"
    )
    sample = json.loads(next(iter(listed.values())).download_as_text())
    assert "email" not in sample and "phone" not in sample, (
        "the directory is public: no personal contact data"
    )
    ledger = (
        bigquery_client(stack.project)
        .query(
            f"SELECT COUNT(*) AS n FROM `{stack.project}.{config.ops_dataset}.ledger` WHERE stage "
            "= 'sync_directory'"
        )
        .result()
    )
    assert next(iter(ledger))["n"] >= 1

"""The pipeline on the CeleryExecutor: the ingest, warehouse and sync DAGs complete with their
tasks spread over both workers (each task on a worker that takes its queue), and a worker killed
with SIGKILL in the middle of a land has that task retried on the other worker with nothing lost:
offsets committed to the end, every batch's ledger balanced through the warehouse."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import psutil
import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.ledger import Ledger
from stack import cli as stack_cli
from tests.celery.conftest import broken_runs, land_result, runs_since, wait_until_done, worker_of
from tests.integration.conftest import committed_offsets, produce

pytestmark = [pytest.mark.integration]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _pipeline_ledger(stack, config) -> BigQuery:
    return BigQuery(
        bigquery_client(stack.project),
        storage_client(stack.project),
        stack.project,
        config.warehouse_dataset,
        config.ops_dataset,
    )


def _assert_everything_committed(stack, config, regions) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(stack.kafka.consumer({"group.id": "celery-test-watermarks"}))
    try:
        for region in regions:
            ends = [
                consumer.get_watermark_offsets(TopicPartition(region.topic, p), timeout=10)[1]
                for p in range(region.partitions)
            ]
            assert (
                committed_offsets(
                    stack.kafka, config.consumer_group, region.topic, region.partitions
                )
                == ends
            ), region.code
    finally:
        consumer.close()


def _ingest_until_drained(
    airflow, config, regions, since: str, timeout_s: float = 600
) -> list[dict]:
    """Runs each region's ingest until its run finds
    nothing pending; returns every run's land result."""
    landed = []
    for region in regions:
        dag_id = f"ingest_{region.code.lower()}"
        airflow.trigger(dag_id)
        runs = wait_until_done(airflow, dag_id, since, timeout_s)
        assert all(r["state"] == "success" for r in runs), (
            dag_id,
            [(r["dag_run_id"], r["state"]) for r in runs],
        )
        landed += [b for r in runs for b in land_result(airflow, dag_id, r["dag_run_id"])]
    return landed


def test_ingest_warehouse_and_sinks_complete_with_tasks_on_both_workers(
    celery_stack, airflow, workers, carrier_dags, pipeline_config
):
    config = pipeline_config
    since = _now()
    messages = Simulator(seed=1515, faults=FaultRates.mix(0.02), initial_partners=200).take(6000)
    produce(celery_stack.kafka, messages)

    landed = _ingest_until_drained(airflow, config, config.regions, since)
    assert landed and sum(b["offsets"] for b in landed) >= len(messages)
    _assert_everything_committed(celery_stack, config, config.regions)

    airflow.trigger("warehouse")
    assert not broken_runs(airflow, "warehouse", wait_until_done(airflow, "warehouse", since))
    sync_dags = [f"sync_{sink}" for sink in config.sinks]
    for dag_id in sync_dags:
        airflow.trigger(dag_id)
    for dag_id in sync_dags:
        assert {r["state"] for r in wait_until_done(airflow, dag_id, since)} == {"success"}, dag_id

    ledger = _pipeline_ledger(celery_stack, config)
    for batch in landed:
        stages = Ledger(ledger).balance(batch["batch_id"])
        assert {"land", "warehouse", *(f"sync_{s}" for s in config.sinks)} <= set(stages), (
            batch["batch_id"],
            sorted(stages),
        )

    # Where each task ran: every one on a worker that takes its queue, and both workers used.
    done = [
        (dag_id, ti)
        for dag_id in [f"ingest_{r.code.lower()}" for r in config.regions]
        + ["warehouse", *sync_dags]
        for run in runs_since(airflow, dag_id, since)
        for ti in airflow.task_instances(dag_id, run["dag_run_id"])
        if ti["state"] == "success"
    ]
    ran_on = worker_of(workers, {ti["id"] for _, ti in done})
    placed: dict[str, set[str]] = {}
    for dag_id, ti in done:
        worker = ran_on.get(ti["id"])
        assert worker is not None, f"{dag_id}.{ti['task_id']} ({ti['id']}) is in no worker's log"
        assert ti["queue"] in workers[worker].worker.queues, (
            f"{dag_id}.{ti['task_id']} (queue {ti['queue']}) ran on {worker}"
        )
        assert ti["pool"] in config.pools, ti["pool"]
        placed.setdefault(worker, set()).add(f"{dag_id}.{ti['task_id']}")
    assert set(placed) == set(workers), {w: sorted(t)[:10] for w, t in placed.items()}
    assert any(t.startswith("sync_") for t in placed["general"]), (
        "the sinks run on the worker that takes the default queue"
    )


def _running_land(airflow, dag_id: str, since: str) -> dict | None:
    for run in runs_since(airflow, dag_id, since):
        for ti in airflow.task_instances(dag_id, run["dag_run_id"]):
            if ti["task_id"] == "land" and ti["state"] == "running" and ti.get("pid"):
                return ti | {"dag_run_id": run["dag_run_id"]}
    return None


def test_a_worker_killed_mid_land_has_its_task_retried_on_the_other_with_nothing_lost(
    celery_stack, airflow, workers, carrier_dags, pipeline_config
):
    config = pipeline_config
    region = config.region("AMER")
    dag_id = f"ingest_{region.code.lower()}"
    # Drain what an earlier test left, so the run below claims exactly this test's messages.
    _ingest_until_drained(airflow, config, [region], _now())

    since = _now()
    messages = [
        m
        for m in Simulator(seed=1616, faults=FaultRates.mix(0.02), initial_partners=500).take(
            240_000
        )
        if m.topic == region.topic
    ]
    produce(celery_stack.kafka, messages)
    airflow.trigger(dag_id, {"max_batch": 1_000_000})

    deadline = time.monotonic() + 300
    while (land := _running_land(airflow, dag_id, since)) is None:
        assert time.monotonic() < deadline, "no land task started within 5 minutes"
        time.sleep(0.3)
    task = psutil.Process(land["pid"])
    groups = {os.getpgid(p.pid) for p in [task, *task.parents()]}
    [killed] = [name for name, w in workers.items() if stack_cli._pgid(w) in groups]
    assert land["pid"] in stack_cli.kill_hard(workers[killed]), (
        "the land's task process died with its worker"
    )
    try:
        runs = wait_until_done(airflow, dag_id, since, timeout_s=900)
        run = next(r for r in runs if r["dag_run_id"] == land["dag_run_id"])
        assert run["state"] == "success", [
            (ti["task_id"], ti["state"]) for ti in airflow.task_instances(dag_id, run["dag_run_id"])
        ]
        [final] = [
            ti
            for ti in airflow.task_instances(dag_id, run["dag_run_id"])
            if ti["task_id"] == "land"
        ]
        assert final["try_number"] > land["try_number"], "the killed try was retried"
        ran_on = worker_of(workers, {final["id"]})
        assert ran_on.get(final["id"]) not in (None, killed), (
            f"retry of the land killed on {killed} ran on {ran_on.get(final['id'])}"
        )
        assert land["id"] not in ran_on or ran_on[land["id"]] != killed, (
            "the killed try never finished where it was killed"
        )

        # Nothing lost: every offset committed, every batch of the region since the kill balanced
        # through the warehouse.
        _assert_everything_committed(celery_stack, config, [region])
        landed = [b for r in runs for b in land_result(airflow, dag_id, r["dag_run_id"])]
        assert sum(b["offsets"] for b in landed) >= len(messages)
        airflow.trigger("warehouse")
        assert not broken_runs(airflow, "warehouse", wait_until_done(airflow, "warehouse", since))
        ledger = _pipeline_ledger(celery_stack, config)
        for batch in landed:
            assert {"land", "warehouse"} <= set(Ledger(ledger).balance(batch["batch_id"])), batch[
                "batch_id"
            ]
    finally:
        stack_cli.up([workers[killed].name], quiet=True)
